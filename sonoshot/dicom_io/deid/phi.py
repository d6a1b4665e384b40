"""phi.py
======

The identifying strings of an instance, read from its *original* header: every person-name
component (at any depth), patient and request identifiers, the birth date in common written
formats, institution and address. The descriptor cleaner removes them from free text, and the
verifier searches the output's header and OCR text for them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

MIN_TOKEN = 3  # shorter strings only count when they are a whole value...


def searchable(token: str) -> bool:
    """Whether ``token`` is searched for inside text: 3+ characters, or 2+ outside ASCII.

    Korean, Chinese and Japanese names are often two characters per component.
    """
    return len(token) >= MIN_TOKEN or (len(token) >= 2 and not token.isascii())

_ID_KEYWORDS = frozenset({
    "PatientID", "OtherPatientIDs", "IssuerOfPatientID", "AccessionNumber", "AdmissionID",
    "MedicalRecordLocator", "RequestedProcedureID", "PerformedProcedureStepID",
    "ScheduledProcedureStepID", "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberImagingServiceRequest", "PatientTelephoneNumbers",
    "ReferringPhysicianTelephoneNumbers", "PersonTelephoneNumbers", "MilitaryRank",
})
_PLACE_KEYWORDS = frozenset({
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "PatientAddress",
    "ReferringPhysicianAddress", "PersonAddress", "RegionOfResidence", "CountryOfResidence",
    "PatientMotherBirthName", "PatientBirthName",
})


@dataclass(frozen=True)
class PhiStrings:
    """Identifying strings, lower-cased; ``names`` are also the OCR targets."""

    names: frozenset[str]  # person-name values and their components
    identifiers: frozenset[str]  # IDs, accession numbers, birth dates, places

    @property
    def all(self) -> frozenset[str]:
        return self.names | self.identifiers

    def ocr_targets(self) -> frozenset[str]:
        """Strings long enough to be found reliably in OCR text (4 characters or more)."""
        return frozenset(s for s in self.all if len(s.replace(" ", "")) >= 4)


def _values(value: object) -> Iterator[object]:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        yield from value  # type: ignore[union-attr]
    elif value is not None:
        yield value


def _name_strings(name: PersonName) -> Iterator[str]:
    text = str(name)
    yield text
    yield text.replace("^", " ").strip()
    for group in text.split("="):
        yield group
        parts = [p for p in group.split("^") if p]
        yield from parts
        if len(parts) >= 2:
            yield f"{parts[0]}, {parts[1]}"
            yield f"{parts[1]} {parts[0]}"
    for word in re.split(r"[\s^=,]+", text):
        yield word


def _date_strings(value: str) -> Iterator[str]:
    value = value.strip()
    if len(value) != 8 or not value.isdigit():
        return
    y, m, d = value[:4], value[4:6], value[6:]
    yield value
    for sep in "-/.":
        yield f"{y}{sep}{m}{sep}{d}"
        yield f"{d}{sep}{m}{sep}{y}"
        yield f"{m}{sep}{d}{sep}{y}"


def collect_phi(ds: Dataset) -> PhiStrings:
    """Collect identifying strings from ``ds`` and every nested sequence item."""
    names: set[str] = set()
    ids: set[str] = set()

    def walk(dataset: Dataset) -> None:
        for elem in dataset:
            if elem.VR == "SQ":
                for item in elem.value or []:
                    walk(item)
                continue
            keyword = elem.keyword
            for value in _values(elem.value):
                if elem.VR == "PN" and value:
                    names.update(_name_strings(PersonName(value)))
                elif keyword == "PatientBirthDate":
                    ids.update(_date_strings(str(value)))
                elif keyword in _ID_KEYWORDS or keyword in _PLACE_KEYWORDS:
                    ids.add(str(value))

    walk(ds)
    return PhiStrings(names=_normalise(names), identifiers=_normalise(ids))


def _normalise(strings: set[str]) -> frozenset[str]:
    return frozenset(s.strip().lower() for s in strings if s and s.strip())
