"""deid
====

De-identification of ultrasound instances: DICOM PS3.15 Annex E (edition in :data:`EDITION`)
on the header, Clean Pixel Data on every frame, and an independent verifier on the written
output. Anything that fails a check is quarantined with a reason; nothing passes unchanged.

>>> key = load_key("var/deid.key")
>>> outcome = deidentify_file(Path("in.dcm"), Path("out"), DeidPolicy.from_config(cfg), key)
>>> outcome.ok, outcome.output, outcome.reason
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence

from sonoshot import __version__

from ..pixels import UndecodableError
from .header import deidentify_header
from .keys import DeidKeyError, keyed_uid, load_key, patient_pseudonym
from .phi import collect_phi
from .pixels_clean import PixelCleaningError, keep_area, write_clean_pixels
from .policy import DeidPolicy
from .profile import EDITION
from .verify import Verdict, check_header, check_ocr, check_pixels, original_uids

__all__ = [
    "EDITION",
    "DeidKeyError",
    "DeidOutcome",
    "DeidPolicy",
    "deidentify_file",
    "keyed_uid",
    "load_key",
    "patient_pseudonym",
]

# PS3.16 CID 7050 De-identification Method
_CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "pixels": ("113101", "Clean Pixel Data Option"),
    "descriptors": ("113105", "Clean Descriptors Option"),
    "dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "patient": ("113108", "Retain Patient Characteristics Option"),
    "device": ("113109", "Retain Device Identity Option"),
}


@dataclass
class DeidOutcome:
    """The result for one input file; ``report`` is JSON-able and holds no PHI."""

    ok: bool
    output: Path | None = None
    reason: str | None = None  # why it was quarantined
    sop_instance_uid: str | None = None  # keyed SOP Instance UID of the output
    report: dict[str, object] = field(default_factory=dict)


def _quarantine(report: dict[str, object], reason: str, uid: str | None) -> DeidOutcome:
    report.update(ok=False, quarantine_reason=reason)
    return DeidOutcome(ok=False, reason=reason, sop_instance_uid=uid, report=report)


def _provenance(out: Dataset, policy: DeidPolicy, pixels_cleaned: bool) -> list[str]:
    done = ["basic"]
    done += ["pixels"] if pixels_cleaned else []
    done += ["descriptors"] if policy.clean_descriptors else []
    done += ["dates"] if policy.retain_modified_dates else []
    done += ["patient"] if policy.retain_patient_characteristics else []
    done += ["device"] if policy.retain_device_identity else []
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = [f"sonoshot {__version__}", f"PS3.15 {EDITION} Annex E"]
    items = []
    for name in done:
        item = Dataset()
        item.CodeValue, item.CodeMeaning = _CODES[name]
        item.CodingSchemeDesignator = "DCM"
        items.append(item)
    out.DeidentificationMethodCodeSequence = Sequence(items)
    out.LongitudinalTemporalInformationModified = "MODIFIED" if policy.retain_modified_dates else "REMOVED"
    if pixels_cleaned:
        out.BurnedInAnnotation = "NO"
    return done


def deidentify_file(src: Path, out_dir: Path, policy: DeidPolicy, key: bytes) -> DeidOutcome:
    """De-identify one instance into ``out_dir`` as ``<keyed SOP Instance UID>.dcm``.

    The output is written under a temporary name, verified from disk, and only then renamed
    into place, so a file in ``out_dir`` always passed the verifier and carries the Clean Pixel
    Data code and Burned In Annotation NO only then. A failure of any step quarantines: nothing
    is left in ``out_dir`` and ``reason`` says why (without PHI).

    Raises
    ------
    DeidKeyError
        If ``key`` is shorter than 32 bytes.
    OSError
        If ``out_dir`` cannot be written.
    """
    report: dict[str, object] = {"sonoshot": __version__, "profile": f"PS3.15 {EDITION} Annex E"}
    try:
        source = pydicom.dcmread(src)
        out = pydicom.dcmread(src)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        return _quarantine(report, f"unreadable: {type(exc).__name__}", None)
    if "SOPInstanceUID" not in source or "SOPClassUID" not in source:
        return _quarantine(report, "(0008,0016) SOP Class UID or (0008,0018) SOP Instance UID missing", None)
    phi = collect_phi(source)
    report["actions"] = dict(deidentify_header(out, policy, key, phi))
    uid = str(out.SOPInstanceUID)
    report["sop_instance_uid"] = uid
    try:
        area = keep_area(source, policy.clean_pixel_data, policy.pixel_masks)
        report["pixels"] = write_clean_pixels(source, out, area)
    except (PixelCleaningError, UndecodableError) as exc:
        return _quarantine(report, f"pixels: {exc}", uid)
    report["methods"] = _provenance(out, policy, policy.clean_pixel_data)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{uid}.dcm"
    partial = out_dir / f".{uid}.partial"
    try:
        out.save_as(partial, enforce_file_format=True)
        del out
        verdict = Verdict()
        written = check_header(partial, phi, original_uids(source), verdict)
        check_pixels(source, written, area.boxes, verdict)
        if policy.ocr:
            check_ocr(written, phi, policy.ocr_max_frames, policy.ocr_min_score, verdict)
    except Exception:
        partial.unlink(missing_ok=True)
        raise
    report["verifier"] = verdict.checks | {"failures": verdict.failures}
    if not verdict.ok:
        partial.unlink()
        return _quarantine(report, "verifier: " + "; ".join(verdict.failures), uid)
    os.replace(partial, final)
    report["ok"] = True
    return DeidOutcome(ok=True, output=final, sop_instance_uid=uid, report=report)
