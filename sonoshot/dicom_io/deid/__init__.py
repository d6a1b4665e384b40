"""deid
====

De-identification of ultrasound instances: DICOM PS3.15 Annex E (edition in :data:`EDITION`)
on the header, Clean Pixel Data on every frame, and an independent verifier on the written
output. Anything that fails a check is quarantined with a reason; nothing passes unchanged.

>>> key = load_key("var/deid.key")
>>> outcome = deidentify_file(Path("in.dcm"), Path("out"), DeidPolicy.from_config(cfg), key)
>>> outcome.ok, outcome.output, outcome.reason, outcome.reason_code, outcome.method
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence

from sonoshot import __version__

from ..pixels import UndecodableError, UnsupportedTransferSyntaxError, frame_count, frame_format
from .header import deidentify_header
from .keys import DeidKeyError, keyed_uid, load_key, patient_pseudonym
from .ocr import sample_indices, verify_indices
from .phi import PhiStrings, collect_phi
from .pixels_clean import KeepArea, PixelCleaningError, black, find_text, keep_area, write_clean_pixels
from .policy import DeidPolicy
from .profile import EDITION
from .textdetect import TextDetectorUnavailableError, text_detector
from .verify import PixelWitness, Verdict, check_header, check_ocr, check_pixels, check_text, original_uids

__all__ = [
    "EDITION",
    "PARTIAL_SUFFIX",
    "DeidKeyError",
    "DeidOutcome",
    "DeidPolicy",
    "QuarantineReason",
    "deidentify_file",
    "planned_method",
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


class QuarantineReason(StrEnum):
    """Why an instance was quarantined: a short code, the same for every file, free of PHI."""

    UNREADABLE = "unreadable"  # not DICOM, truncated, or without SOP Class / Instance UID
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported-transfer-syntax"  # no decoder (JPEG XL, ...)
    UNDECODABLE = "undecodable"  # a decoder exists but the pixel data or its attributes are bad
    NO_KEEP_AREA = "no-keep-area"  # a matching configured mask is invalid, or nothing would be kept
    TEXT_DETECTOR_UNAVAILABLE = "text-detector-unavailable"  # the detection model cannot be loaded
    VERIFIER_FAILED = "verifier-failed"  # the written output failed a verifier check
    INTERNAL_ERROR = "internal-error"  # an unexpected exception (named by type only)


@dataclass
class DeidOutcome:
    """The result for one input file; ``report`` is JSON-able and holds no PHI."""

    ok: bool
    output: Path | None = None
    reason: str | None = None  # why it was quarantined (names checks and tags, never values)
    reason_code: QuarantineReason | None = None  # the same, as a code (None when ok)
    sop_instance_uid: str | None = None  # keyed SOP Instance UID of the output
    method: str | None = None  # keep-area method: regions, clipped regions, device mask, text-only
    text_boxes: int = 0  # burned-in text boxes blanked inside the kept area
    report: dict[str, object] = field(default_factory=dict)

    @classmethod
    def internal_error(cls, exc: BaseException, uid: str | None = None,
                       report: dict[str, object] | None = None) -> DeidOutcome:
        """The quarantine for an unexpected exception: named by its type only (its message may hold PHI)."""
        return _quarantine(dict(report or {}), QuarantineReason.INTERNAL_ERROR, f"internal error: {type(exc).__name__}",
                           uid)


def _quarantine(report: dict[str, object], code: QuarantineReason, reason: str, uid: str | None,
                area: KeepArea | None = None) -> DeidOutcome:
    report.update(ok=False, quarantine_reason=reason, reason_code=code.value)
    return DeidOutcome(ok=False, reason=reason, reason_code=code, sop_instance_uid=uid,
                       method=area.method if area else None, text_boxes=len(area.text_boxes) if area else 0,
                       report=report)


def planned_method(src: Path, policy: DeidPolicy) -> KeepArea:
    """The keep area :func:`deidentify_file` would start from, read from the header only.

    Raises
    ------
    pydicom.errors.InvalidDicomError, OSError
        If the file cannot be read.
    PixelCleaningError
        If a matching configured mask is invalid.
    sonoshot.dicom_io.pixels.UndecodableError
        If Rows or Columns is missing.
    """
    return keep_area(pydicom.dcmread(src, stop_before_pixels=True), policy.clean_pixel_data, policy.pixel_masks)


def _little_endian(out: Dataset) -> None:
    """Byte-swap the binary values left in a dataset read as big endian, and mark it little endian.

    Every other element was converted to Python values when the header was de-identified.
    """
    sizes = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}

    def walk(ds: Dataset) -> None:
        for elem in ds:
            if elem.VR == "SQ":
                for item in elem.value or []:
                    walk(item)
            elif elem.VR in sizes and isinstance(elem.value, bytes) and elem.tag != 0x7FE00010:
                size = sizes[elem.VR]
                elem.value = np.frombuffer(elem.value, dtype=f">u{size}").astype(f"<u{size}").tobytes()

    walk(out)
    out.set_original_encoding(False, True, out.original_character_set)


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


#: The OCR checks run here, beside the writing and the pixel check of the same file: tesseract
#: is another process and onnxruntime releases the GIL, so the two use both cores of a small
#: machine.
_VERIFIER_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="deid-ocr")


def _read_frames(frames: list[np.ndarray], sample: list[int], phi: PhiStrings, policy: DeidPolicy,
                 text_only: bool, verdict: Verdict) -> None:
    """The verifier's reading of the cleaned frames: tesseract for PHI, and for text-only the detector."""
    check_ocr(frames, sample, phi, policy.ocr_min_score, verdict)
    if text_only:
        check_text(frames, sample, text_detector(policy.text_threads), verdict)


#: An output being written and verified is ``.<keyed SOP Instance UID>`` with this suffix in
#: ``out_dir``; it is renamed or removed before :func:`deidentify_file` returns.
PARTIAL_SUFFIX = ".partial"


def deidentify_file(src: Path, out_dir: Path, policy: DeidPolicy, key: bytes) -> DeidOutcome:
    """De-identify one instance into ``out_dir`` as ``<keyed SOP Instance UID>.dcm``.

    The output is written under a temporary name, verified from disk, and only then renamed
    into place, so a file in ``out_dir`` always passed the verifier and carries the Clean Pixel
    Data code and Burned In Annotation NO only then. A failure of any step quarantines: nothing
    is left in ``out_dir``, ``reason`` says why and ``reason_code`` names the kind
    (:class:`QuarantineReason`), both without PHI. Big endian input is written little endian.

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
        return _quarantine(report, QuarantineReason.UNREADABLE, f"unreadable: {type(exc).__name__}", None)
    if "SOPInstanceUID" not in source or "SOPClassUID" not in source:
        return _quarantine(report, QuarantineReason.UNREADABLE,
                           "(0008,0016) SOP Class UID or (0008,0018) SOP Instance UID missing", None)
    uid = None
    try:
        phi = collect_phi(source)
        report["actions"] = dict(deidentify_header(out, policy, key, phi))
        uid = str(out.SOPInstanceUID)
        report["sop_instance_uid"] = uid
        return _clean_and_verify(source, out, phi, out_dir, policy, report)
    except (DeidKeyError, OSError):
        raise
    except Exception as exc:  # one bad file must not stop a batch: quarantined, named by type only
        return DeidOutcome.internal_error(exc, uid, report)


def _clean_and_verify(source: Dataset, out: Dataset, phi: PhiStrings, out_dir: Path, policy: DeidPolicy,
                      report: dict[str, object]) -> DeidOutcome:
    uid = str(out.SOPInstanceUID)
    area = None
    verdict = Verdict()
    reading: list[Future[None]] = []
    try:
        try:
            area = keep_area(source, policy.clean_pixel_data, policy.pixel_masks)
            detected: list[int] = []
            if policy.clean_pixel_data:
                detected = sample_indices(frame_count(source), policy.text_frames)
                area = find_text(source, area, detected, text_detector(policy.text_threads))
            fmt = frame_format(source)
            text_only = area.method == "text-only"
            sample = verify_indices(frame_count(source), detected, policy.ocr_max_frames) if policy.ocr else []
            # tesseract reads the sampled frames, cleaned first, while the rest is written and checked
            witness = PixelWitness(area.mask(fmt.rows, fmt.columns),
                                   black(fmt.photometric_interpretation, fmt.bits_stored), sample,
                                   lambda frames: reading.append(_VERIFIER_POOL.submit(
                                       _read_frames, frames, sample, phi, policy, text_only, verdict)))
            report["pixels"] = write_clean_pixels(source, out, area, witness) | {"text_detection_frames": detected}
        except BaseException:
            wait(reading)  # a reading that started before the failure ends before the quarantine
            raise
    except UnsupportedTransferSyntaxError as exc:
        return _quarantine(report, QuarantineReason.UNSUPPORTED_TRANSFER_SYNTAX, f"pixels: {exc}", uid, area)
    except UndecodableError as exc:
        return _quarantine(report, QuarantineReason.UNDECODABLE, f"pixels: {exc}", uid, area)
    except PixelCleaningError as exc:
        return _quarantine(report, QuarantineReason.NO_KEEP_AREA, f"pixels: {exc}", uid, area)
    except TextDetectorUnavailableError as exc:
        return _quarantine(report, QuarantineReason.TEXT_DETECTOR_UNAVAILABLE, f"pixels: {exc}", uid, area)
    report["methods"] = _provenance(out, policy, policy.clean_pixel_data)
    if not source.is_little_endian:
        _little_endian(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{uid}.dcm"
    partial = out_dir / f".{uid}{PARTIAL_SUFFIX}"
    try:
        out.save_as(partial, enforce_file_format=True)
        del out
        written = check_header(partial, phi, original_uids(source), verdict)
        check_pixels(witness, source, written, verdict)  # on this thread, while tesseract reads
        if policy.ocr and not reading:
            verdict.failures.append("ocr: the sampled frames were not read")
        for future in reading:
            future.result()
    except Exception:
        wait(reading)
        partial.unlink(missing_ok=True)
        raise
    report["verifier"] = verdict.checks | {"failures": verdict.failures}
    if not verdict.ok:
        partial.unlink()
        return _quarantine(report, QuarantineReason.VERIFIER_FAILED, "verifier: " + "; ".join(verdict.failures),
                           uid, area)
    os.replace(partial, final)
    report["ok"] = True
    return DeidOutcome(ok=True, output=final, sop_instance_uid=uid, method=area.method,
                       text_boxes=len(area.text_boxes), report=report)
