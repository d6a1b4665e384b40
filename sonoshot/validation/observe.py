"""observe.py
==========

What the worker records of each processed instance for drift: the PHI-free device attributes
of its original header (Manufacturer, Manufacturer's Model Name, Software Versions, the probe
from Transducer Data or the ultrasound region's Transducer Type), Body Part Examined, and the
image statistics the detector is sensitive to, measured on the frames it scored (the size of
the ultrasound region and its mean brightness).

Device strings are screened against the header's own PHI strings: a value that contains a
patient's name, ID or birth date (a misconfigured device) is stored as ``(withheld)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydicom.dataset import Dataset

from sonoshot.db.validation import Device, NewObservation
from sonoshot.dicom_io.deid.phi import collect_phi, searchable
from sonoshot.validation.imaging import ImageStats

WITHHELD = "(withheld)"
MAX_LENGTH = 64


def _first(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        values = [str(v) for v in value if str(v).strip()]  # type: ignore[union-attr]
        return "\\".join(values)
    return str(value)


def _screen(value: str, phi: frozenset[str]) -> str:
    text = " ".join(value.split())[:MAX_LENGTH]
    lowered = text.lower()
    if any(searchable(p) and p in lowered for p in phi):
        return WITHHELD
    return text


def _probe(header: Dataset) -> str:
    probe = _first(header.get("TransducerData"))
    if probe:
        return probe
    for region in header.get("SequenceOfUltrasoundRegions", []):
        if region.get("TransducerType"):
            return str(region.TransducerType)
    return ""


def device_of(header: Dataset) -> Device:
    """The device attributes of an original header, PHI-screened, at most 64 characters each."""
    phi = collect_phi(header).all
    return Device(_screen(_first(header.get("Manufacturer")), phi),
                  _screen(_first(header.get("ManufacturerModelName")), phi),
                  _screen(_first(header.get("SoftwareVersions")), phi), _screen(_probe(header), phi))


def body_part_of(header: Dataset) -> str:
    """Body Part Examined, upper case, PHI-screened (empty when absent)."""
    return _screen(_first(header.get("BodyPartExamined")).upper(), collect_phi(header).all)[:16]


def observations(headers: Mapping[str, Dataset], scored: Iterable[tuple[str, float, ImageStats]],
                 quarantined: Iterable[tuple[str, str]]) -> list[NewObservation]:
    """The observations of one study: ``scored`` as ``(sop_uid, score, image_stats)``,
    ``quarantined`` as ``(sop_uid, reason)``; ``headers`` are the original headers by SOP UID."""
    out = []
    for uid, score, (rows, columns, brightness) in scored:
        header = headers[uid]
        out.append(NewObservation(uid, device_of(header), body_part_of(header), False, None, score, rows, columns,
                                  brightness))
    for uid, reason in quarantined:
        header = headers[uid]
        out.append(NewObservation(uid, device_of(header), body_part_of(header), True, reason, None, None, None,
                                  None))
    return out
