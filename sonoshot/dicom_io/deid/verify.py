"""verify.py
=========

The independent verifier: it reads the *written* output back from disk and checks it against
the original instance, without using the de-identification code it checks.

* header: no PHI string of the original (see :mod:`.phi`) in any element at any depth, file
  meta included; every UID is well known or a ``2.25`` UID that the original did not hold; the
  preamble is zero;
* pixels: on every frame, each blanked pixel equals the fill value and each kept pixel equals
  the decoded input pixel. The source is decoded once: the cleaner hands each frame, as
  decoded, to a :class:`PixelWitness`, which blanks its own copy by the keep area and keeps a
  digest of it, and every frame decoded back from the written file must match its digest;
* OCR: tesseract on a sample of the output frames (other frames than text detection used,
  where the clip has them) finds none of the PHI strings. The witness hands the sampled frames
  on as soon as the cleaner has them, so tesseract reads while the rest is written, and the
  frames it read must match, digest for digest, the frames decoded back from disk;
* text (text-only method): the text detector on the same frames finds no box at or above
  :data:`.textdetect.VERIFY_SCORE` whose text is not a scanner readout (:mod:`.readouts`).

Failures are named by check and tag only, never by value, so they can be logged and reported.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from ..pixels import frame_count, frame_format, iter_frames
from .ocr import OcrUnavailableError, find_phi, ocr_frames, ocr_words
from .phi import PhiStrings, searchable
from .readouts import classify
from .textdetect import VERIFY_SCORE, TextDetector, grow

_BINARY_SCAN_LIMIT = 65536  # binary values up to this size are searched as text too
_UID = re.compile(r"^[0-9.]+$")
# Numbers carry no identifying text: a PHI search there only finds coincidences (an ID "7").
_NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "IS", "DS", "AT", "OF", "OD", "OL", "OV"})


@dataclass
class Verdict:
    """The verifier's result: ``failures`` name check and tag, never a value."""

    failures: list[str] = field(default_factory=list)
    checks: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures


def _elements(ds: Dataset, path: str = "") -> Iterator[tuple[str, object, str, str]]:
    """``(where, value, VR, keyword)`` of every non-sequence element but Pixel Data."""
    for elem in ds:
        where = f"{path}{elem.tag}"
        if elem.VR == "SQ":
            for number, item in enumerate(elem.value or []):
                yield from _elements(item, f"{where}[{number}].")
        elif elem.tag != 0x7FE00010:
            yield where, elem.value, elem.VR, elem.keyword


def _strings(value: object, vr: str) -> Iterator[str]:
    if isinstance(value, bytes):
        if len(value) <= _BINARY_SCAN_LIMIT:
            yield value.decode("latin-1").lower()
            yield value.decode("utf-8", errors="ignore").lower()
        return
    values = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    for v in values:  # type: ignore[union-attr]
        if v is not None:
            yield str(v).lower()


def _contains(text: str, token: str) -> bool:
    if not searchable(token):
        return text.strip() == token
    if token.isalpha() and len(token) >= 4:
        return token in text
    return re.search(rf"(?<![0-9a-z]){re.escape(token)}(?![0-9a-z])", text) is not None


def original_uids(ds: Dataset) -> set[str]:
    """Every UI value held by the original, at any depth and in its file meta."""
    found = set()
    for dataset in (ds.file_meta, ds):
        for _where, value, vr, _keyword in _elements(dataset):
            if vr == "UI":
                found.update(s.strip("\x00 ") for s in _strings(value, vr))
    return found


def check_header(path: Path, phi: PhiStrings, uids: set[str], verdict: Verdict) -> Dataset:
    """Header checks on the file at ``path``; returns the dataset read."""
    with open(path, "rb") as f:
        if f.read(128) != b"\0" * 128:
            verdict.failures.append("header: preamble is not zeroed")
    out = pydicom.dcmread(path)
    tokens = sorted(phi.all)
    for dataset in (out.file_meta, out):
        for where, value, vr, keyword in _elements(dataset):
            if vr in _NUMERIC_VRS:
                continue
            for text in _strings(value, vr):
                if vr == "UI":
                    text = text.strip("\x00 ")
                    if keyword.endswith("ClassUID"):
                        continue
                    if text in uids and not _well_known(text):
                        verdict.failures.append(f"header: original UID kept in {where}")
                    elif not (_well_known(text) or text.startswith("2.25.")) or not _UID.match(text):
                        verdict.failures.append(f"header: UID in {where} is neither keyed nor well known")
                elif any(_contains(text, t) for t in tokens):
                    verdict.failures.append(f"header: PHI string found in {where}")
    verdict.checks["header"] = "pass" if not verdict.failures else "fail"
    return out


def _well_known(uid: str) -> bool:
    return pydicom.uid.UID(uid).name != uid


def _digest(frame: np.ndarray) -> bytes:
    digest = hashlib.blake2b(repr((frame.dtype.str, frame.shape)).encode(), digest_size=16)
    digest.update(np.ascontiguousarray(frame).data)
    return digest.digest()


class PixelWitness:
    """The verifier's view of the cleaner's single pass over the source frames.

    :meth:`decoded` gets each frame as decoded, before the cleaner touches it: the witness
    blanks a copy of its own where ``kept`` is False and keeps the digest of that expected
    frame. :meth:`cleaned` gets each frame as it will be written: the frames of ``sample`` are
    kept (their digests too) and, once all are in, passed to ``on_sample`` in ``sample``'s
    order, so that reading them (OCR) starts while the cleaner writes the rest.
    :func:`check_pixels` then compares the written file with both.
    """

    def __init__(self, kept: np.ndarray, fill: int, sample: Sequence[int] = (),
                 on_sample: Callable[[list[np.ndarray]], None] | None = None) -> None:
        self._blanked = ~kept
        self._fill = fill
        self.sample = [int(i) for i in dict.fromkeys(sample)]
        self._on_sample = on_sample
        self.expected: dict[int, bytes] = {}
        self.read: dict[int, bytes] = {}
        self._frames: dict[int, np.ndarray] = {}

    def decoded(self, index: int, frame: np.ndarray) -> None:
        """A source frame as decoded (not modified here)."""
        expected = frame.copy()
        expected[self._blanked] = self._fill
        self.expected[index] = _digest(expected)

    def cleaned(self, index: int, frame: np.ndarray) -> None:
        """A frame as the cleaner will write it (kept, unmodified, when it is in the sample)."""
        if index not in self.sample:
            return
        self._frames[index] = frame
        self.read[index] = _digest(frame)
        if len(self._frames) == len(self.sample) and self._on_sample is not None:
            self._on_sample([self._frames.pop(i) for i in self.sample])


def check_pixels(witness: PixelWitness, source: Dataset, out: Dataset, verdict: Verdict) -> None:
    """Every frame decoded from the written ``out`` equals the witness's expectation (black where
    blanked, the decoded input elsewhere), and the sampled frames read by the OCR equal it too."""
    fmt = frame_format(out)
    count = frame_count(source)
    if frame_count(out) != count or fmt.shape != frame_format(source).shape or len(witness.expected) != count:
        verdict.failures.append("pixels: output frame count or shape differs from the input")
        return
    bad = [index for index, after in enumerate(iter_frames(out)) if _digest(after) != witness.expected[index]]
    if bad:
        verdict.failures.append(f"pixels: {len(bad)} frame(s) differ from the expected cleaning")
    if any(witness.read.get(i) != witness.expected[i] for i in witness.sample):
        verdict.failures.append("pixels: the frames read by OCR differ from the written frames")
    verdict.checks["pixels"] = {"frames": count, "failed_frames": bad}


def check_ocr(frames: list[np.ndarray], indices: list[int], phi: PhiStrings, min_score: float,
              verdict: Verdict) -> None:
    """tesseract on the sampled output frames finds no PHI string (fails closed without tesseract)."""
    targets = phi.ocr_targets()
    try:
        hits = len(find_phi(ocr_frames(frames), targets, min_score))
    except OcrUnavailableError as exc:
        verdict.failures.append(f"ocr: {exc}")
        verdict.checks["ocr"] = "unavailable"
        return
    if hits:
        verdict.failures.append(f"ocr: {hits} PHI string match(es) in the cleaned frames")
    verdict.checks["ocr"] = {"frames": indices, "targets": len(targets), "matches": hits}


def check_text(frames: list[np.ndarray], indices: list[int], detector: TextDetector, verdict: Verdict) -> None:
    """No text box at or above the detector's threshold is left in which tesseract reads text that
    is not a scanner readout (:func:`.readouts.classify`)."""
    kinds = {"text": 0, "readout": 0, "mark": 0}
    try:
        for frame in frames:
            rows, columns = frame.shape[:2]
            for box in detector.detect(frame, VERIFY_SCORE):
                x0, y0, x1, y1 = grow(box, rows, columns, 2)
                kinds[classify(ocr_words(frame[y0:y1 + 1, x0:x1 + 1]))] += 1
    except OcrUnavailableError as exc:
        verdict.failures.append(f"text: {exc}")
        verdict.checks["text"] = "unavailable"
        return
    if kinds["text"]:
        verdict.failures.append(f"text: {kinds['text']} text box(es) left in the cleaned frames")
    verdict.checks["text"] = {"frames": indices, "boxes_left": kinds["text"], "readouts_allowed": kinds["readout"],
                              "unreadable_marks": kinds["mark"]}
