"""documents.py
============

What every document sonoshot writes back into a study shares: the scored report
(:mod:`~sonoshot.dicom_io.report`), the "not analysed" report
(:mod:`~sonoshot.dicom_io.not_analysed`) and the key image (:mod:`~sonoshot.dicom_io.keyimage`).

* name-based 2.25 UIDs (PS3.5 B.2) under a fixed namespace, so a document built twice from the
  same result is the same instance and a PACS files no duplicate;
* argument checks in highdicom's style (``TypeError``/``ValueError`` naming the argument);
* the private coding scheme ``99SONOSHOT`` (PS3.16 8.2) and the codes shared by the SRs;
* the original's header without pixels (the SR's patient and study come from it), the device
  observer context (TID 1002/1004), the algorithm identification (TID 4019), the Qualitative
  Evaluations container of TID 1500, and the Comprehensive SR envelope itself;
* helpers to read content items back.

Pure functions: no file, network or database access.
"""

from __future__ import annotations

import math
import re
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.uid import ComprehensiveSRStorage

from sonoshot import __version__

MANUFACTURER = "sonoshot"
DISCLAIMER = (
    "Research use only, not for diagnostic use: output of an automated anomaly detection "
    "algorithm, not verified by a physician."
)

# Private coding scheme for concepts without a standard code (PS3.16 8.2: designators starting
# with "99" are private), declared in the Coding Scheme Identification Sequence (PS3.3 C.12.1).
PRIVATE_SCHEME = "99SONOSHOT"
NOT_EVALUATED = hd.sr.CodedConcept("not-evaluated", PRIVATE_SCHEME, "Instance not evaluated")
PROCEDURE = codes.SCT.Ultrasonography  # (310169008, SCT, "Ultrasonography")
COMMENT = codes.DCM.Comment  # (121106, DCM, "Comment")
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
UID_NAMESPACE = uuid.UUID("5f1c8a3e-2b7d-4c59-9a61-0d3e8f6b2c47")  # sonoshot's name-based UIDs, fixed forever

# highdicom warns about a person name without a caret ("PLA") with the name in the message, and
# Python prints warnings to stderr, which is the daemon's log: the name would leak there. The
# name is copied as received; the warning is never shown.
warnings.filterwarnings("ignore", message=r"The string .* is unlikely to represent the intended person name",
                        category=UserWarning, module=r"highdicom\.")

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # PS3.5 9.1, leniently: real devices write leading zeros
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_str(name: str, value: Any, max_len: int | None = None) -> None:
    """Raise unless ``value`` is a non-blank str of at most ``max_len`` characters."""
    if not isinstance(value, str):
        raise TypeError(f'Argument "{name}" must be a str, got {type(value).__name__}.')
    if not value.strip():
        raise ValueError(f'Argument "{name}" must not be empty.')
    if max_len is not None and len(value) > max_len:
        raise ValueError(f'Argument "{name}" must have at most {max_len} characters, got {len(value)}.')


def check_uid(name: str, value: Any) -> None:
    """Raise unless ``value`` is a UID (digits and dots, at most 64 characters)."""
    check_str(name, value, 64)
    if not _UID.match(value):
        raise ValueError(f'Argument "{name}" is not a UID: {value!r}.')


def check_sha256(name: str, value: Any) -> None:
    """Raise unless ``value`` is 64 lowercase hex digits."""
    check_str(name, value)
    if not _SHA256.match(value):
        raise ValueError(f'Argument "{name}" must be 64 lowercase hex digits.')


def check_unit_interval(name: str, value: Any) -> float:
    """``value`` as a float, raising unless it is a finite number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'Argument "{name}" must be a number, got {type(value).__name__}.')
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f'Argument "{name}" must be in [0, 1], got {value}.')
    return float(value)


def tuple_of(name: str, value: Any, cls: type) -> tuple[Any, ...]:
    """``value`` as a tuple, raising unless it is a sequence (not a str) of ``cls``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f'Argument "{name}" must be a sequence of {cls.__name__}.')
    for item in value:
        if not isinstance(item, cls):
            raise TypeError(f'Items of argument "{name}" must be {cls.__name__}, got {type(item).__name__}.')
    return tuple(value)


def name_uid(*parts: str) -> str:
    """A name-based (SHA-1, version 5) UUID as a 2.25 UID (PS3.5 B.2, ISO/IEC 9834-8)."""
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, chr(0).join(parts)).int}"


@dataclass(frozen=True)
class PredecessorRef:
    """A report that the new one supersedes (same study), for the Predecessor Documents Sequence.

    Raises
    ------
    TypeError, ValueError
        If a UID is malformed or ``instance_number`` is not a positive int.
    """

    sop_instance_uid: str
    series_instance_uid: str
    instance_number: int = 1
    sop_class_uid: str = ComprehensiveSRStorage

    def __post_init__(self) -> None:
        check_uid("sop_instance_uid", self.sop_instance_uid)
        check_uid("series_instance_uid", self.series_instance_uid)
        check_uid("sop_class_uid", self.sop_class_uid)
        if isinstance(self.instance_number, bool) or not isinstance(self.instance_number, int):
            raise TypeError('Argument "instance_number" must be an int.')
        if self.instance_number < 1:
            raise ValueError(f'Argument "instance_number" must be >= 1, got {self.instance_number}.')

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> PredecessorRef:
        """The reference to an earlier report, e.g. one returned by a ``build_*`` function."""
        return cls(
            sop_instance_uid=str(dataset.SOPInstanceUID),
            series_instance_uid=str(dataset.SeriesInstanceUID),
            instance_number=int(dataset.InstanceNumber),
            sop_class_uid=str(dataset.SOPClassUID),
        )


def header_of(original: Dataset) -> Dataset:
    """The original's attributes without pixel data; absent Type 2 patient/study attributes
    become empty (PS3.3 C.7.1.1, C.7.2.1), as highdicom copies them unconditionally."""
    header = Dataset()
    for elem in original:
        if elem.keyword not in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            header.add(elem)
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName"):
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def originals_by_uid(originals: Any, study_instance_uid: str) -> dict[str, Dataset]:
    """The originals keyed by SOP Instance UID, after checking they are datasets of the study.

    Raises
    ------
    TypeError
        If ``originals`` is not a sequence of pydicom Dataset.
    ValueError
        If an original belongs to another study.
    """
    if isinstance(originals, Dataset) or not isinstance(originals, Sequence):
        raise TypeError('Argument "originals" must be a sequence of pydicom Dataset.')
    by_uid: dict[str, Dataset] = {}
    for ds in originals:
        if not isinstance(ds, Dataset):
            raise TypeError('Items of argument "originals" must be pydicom Dataset.')
        if ds.get("StudyInstanceUID") != study_instance_uid:
            raise ValueError(
                f'Argument "originals": instance {ds.get("SOPInstanceUID")} has (0020,000D) '
                f"Study Instance UID {ds.get('StudyInstanceUID')}, not {study_instance_uid}."
            )
        by_uid[str(ds.SOPInstanceUID)] = ds
    return by_uid


def evidence_of(by_uid: dict[str, Dataset], sop_instance_uid: str, sop_class_uid: str,
                series_instance_uid: str) -> Dataset:
    """The original of a referenced instance, checked against what the result says about it.

    Raises
    ------
    ValueError
        If it is missing from the originals or its SOP Class or series differ.
    """
    ds = by_uid.get(sop_instance_uid)
    if ds is None:
        raise ValueError(f'Argument "originals" lacks referenced instance {sop_instance_uid}.')
    if ds.SOPClassUID != sop_class_uid or ds.SeriesInstanceUID != series_instance_uid:
        raise ValueError(
            f'Argument "result": SOP Class or Series Instance UID of {sop_instance_uid} '
            "differs from the original instance."
        )
    return ds


def algorithm(name: str, version: str, parameters: Sequence[str]) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification, manufacturer sonoshot."""
    return hd.sr.AlgorithmIdentification(name=name, version=version, parameters=list(parameters) or None,
                                         manufacturer=MANUFACTURER)


def observation_context(name: str, version: str, *uid_parts: str) -> hd.sr.ObservationContext:
    """TID 1001 with a device observer (TID 1004) naming the algorithm; its UID is named from
    ``name``, ``version`` and ``uid_parts``."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=name_uid("device", name, version, *uid_parts),
        name=name,
        manufacturer_name=MANUFACTURER,
        model_name=version,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device, observer_identifying_attributes=device
        )
    )


def add_qualitative_evaluations(report: hd.sr.MeasurementReport, comments: Sequence[str],
                                not_evaluated: Sequence[tuple[str, str]]) -> None:
    """Append TID 1500's Qualitative Evaluations container: the disclaimer, ``comments`` and
    one (not-evaluated, 99SONOSHOT) TEXT ``"<SOP Instance UID>: <reason>"`` per pair."""
    evaluations = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS")
    evaluations.ContentSequence = hd.sr.ContentSequence(
        [hd.sr.TextContentItem(name=COMMENT, value=text, relationship_type="CONTAINS")
         for text in (DISCLAIMER, *comments)]
        + [hd.sr.TextContentItem(name=NOT_EVALUATED, value=f"{uid}: {reason}", relationship_type="CONTAINS")
           for uid, reason in not_evaluated]
    )
    report[0].ContentSequence.append(evaluations)


def comprehensive_sr(
    evidence: Sequence[Dataset],
    content: hd.sr.MeasurementReport,
    study_instance_uid: str,
    series: tuple[str, int, str],
    sop_instance_uid: str,
    predecessor: PredecessorRef | None,
    model_name: str,
) -> hd.sr.ComprehensiveSR:
    """The validated Comprehensive SR envelope shared by sonoshot's reports.

    ``series`` is (Series Instance UID, Series Number, Series Description). Completion flag
    COMPLETE, Verification Flag UNVERIFIED, Preliminary Flag PRELIMINARY (PS3.3 C.17.2); the
    instance number is the predecessor's + 1, else 1.

    Raises
    ------
    TypeError
        If ``predecessor`` is neither a PredecessorRef nor None.
    ValueError
        If ``predecessor`` is the very document being built.
    """
    if predecessor is not None and not isinstance(predecessor, PredecessorRef):
        raise TypeError('Argument "predecessor" must be a PredecessorRef or None.')
    previous = None
    if predecessor is not None:
        if predecessor.sop_instance_uid == sop_instance_uid:
            raise ValueError('Argument "predecessor" is the report being built (same result).')
        ref = Dataset()
        ref.SOPClassUID = predecessor.sop_class_uid
        ref.SOPInstanceUID = predecessor.sop_instance_uid
        ref.SeriesInstanceUID = predecessor.series_instance_uid
        ref.StudyInstanceUID = study_instance_uid
        previous = [ref]
    series_uid, series_number, series_description = series
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=content,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=predecessor.instance_number + 1 if predecessor else 1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,  # Verification Flag UNVERIFIED (PS3.3 C.17.2)
        previous_versions=previous,
        record_evidence=False,
        series_description=series_description,
        manufacturer_model_name=model_name,
        software_versions=__version__,
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=PRIVATE_SCHEME, name="sonoshot private concepts",
                responsible_organization=MANUFACTURER,
            )
        ],
    )
    sr.SeriesDate, sr.SeriesTime = sr.ContentDate, sr.ContentTime  # PACS list a series by its date
    return sr


def parse_measurement_report(dataset: Any) -> hd.sr.ComprehensiveSR:
    """The dataset parsed by highdicom, checked to be a TID 1500 Comprehensive SR.

    Raises
    ------
    TypeError
        If ``dataset`` is not a pydicom Dataset.
    ValueError
        If it is not a Comprehensive SR holding a TID 1500 Measurement Report.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError('Argument "dataset" must be a pydicom Dataset.')
    if dataset.get("SOPClassUID") != ComprehensiveSRStorage:
        raise ValueError('Argument "dataset" is not a Comprehensive SR (0008,0016) SOP Class UID.')
    sr = hd.sr.ComprehensiveSR.from_dataset(dataset)
    if not isinstance(sr.content, hd.sr.MeasurementReport):
        raise ValueError('Argument "dataset" does not hold a TID 1500 Measurement Report.')
    return sr


def concept_of(item: Dataset) -> tuple[str, str]:
    """(Code Value, Coding Scheme Designator) of a content item's concept name."""
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def key_of(concept: hd.sr.CodedConcept | Any) -> tuple[str, str]:
    """(value, scheme designator) of a coded concept."""
    return str(concept.value), str(concept.scheme_designator)


def children(item: Dataset, concept: hd.sr.CodedConcept | Any) -> list[Dataset]:
    """The content items under ``item`` whose concept name is ``concept``."""
    return [c for c in item.get("ContentSequence", []) if concept_of(c) == key_of(concept)]


def one(item: Dataset, concept: hd.sr.CodedConcept | Any) -> Dataset:
    """The single content item under ``item`` named ``concept``.

    Raises
    ------
    ValueError
        If there is none or more than one.
    """
    found = children(item, concept)
    if len(found) != 1:
        raise ValueError(f"expected one {concept.meaning!r} content item, found {len(found)}")
    return found[0]


def num(item: Dataset, concept: hd.sr.CodedConcept) -> float:
    """The value of the single NUM item named ``concept`` under ``item``."""
    value = one(item, concept).MeasuredValueSequence[0]
    return float(value.get("FloatingPointValue", value.NumericValue))  # FD is exact, DS has 16 chars


def frame_numbers(value: Any) -> tuple[int, ...]:
    """Referenced Frame Number (IS, one or many values) as a tuple of ints."""
    if value is None or value == "":
        return ()
    return tuple(int(f) for f in value) if isinstance(value, MultiValue) else (int(value),)


def template_of(item: Dataset) -> str | None:
    """The Template Identifier of a content item's Content Template Sequence, if it has one."""
    templates = item.get("ContentTemplateSequence")
    return str(templates[0].TemplateIdentifier) if templates else None
