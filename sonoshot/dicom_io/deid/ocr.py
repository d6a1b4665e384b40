"""ocr.py
======

Read burned-in text with tesseract (the Debian ``tesseract-ocr`` program) and look for PHI
strings in it with a fuzzy match. Missing tesseract is an error, never a pass.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from rapidfuzz import fuzz

TESSERACT = "tesseract"
TIMEOUT_S = 60


class OcrUnavailableError(RuntimeError):
    """tesseract is not installed or failed to run."""


def ocr_text(frame: np.ndarray) -> str:
    """The text tesseract reads in one frame (sparse text mode, ``--psm 11``).

    Raises
    ------
    OcrUnavailableError
        If tesseract is missing, times out or exits with an error.
    """
    if shutil.which(TESSERACT) is None:
        raise OcrUnavailableError("tesseract is not installed: OCR verification fails closed")
    if frame.dtype != np.uint8:
        frame = (frame >> (8 * frame.dtype.itemsize - 8)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(frame).convert("L").save(buffer, format="PNG")
    try:
        result = subprocess.run(
            [TESSERACT, "stdin", "stdout", "--psm", "11"],
            input=buffer.getvalue(), capture_output=True, timeout=TIMEOUT_S, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OcrUnavailableError(f"tesseract failed to run: {type(exc).__name__}") from exc
    if result.returncode:
        raise OcrUnavailableError(f"tesseract exited with status {result.returncode}")
    return result.stdout.decode("utf-8", errors="replace")


#: What :func:`self_test` draws: a name, an ID and a birth date as they appear burned in.
CONTROL_TEXT = "CONTROL, Ocr 19700101"


def self_test(min_score: float) -> None:
    """The positive control: OCR must read a name, ID and date drawn onto a black frame.

    Run at start-up, so a broken tesseract (missing language data, a bad build) stops the
    daemon instead of letting the verifier pass frames it cannot read.

    Raises
    ------
    OcrUnavailableError
        If tesseract is missing, fails, or does not find the control text.
    """
    image = Image.new("L", (480, 120), 0)
    ImageDraw.Draw(image).text((10, 40), CONTROL_TEXT, fill=255, font=ImageFont.load_default(size=28))
    text = ocr_text(np.asarray(image))
    if not find_phi(text, [CONTROL_TEXT.lower()], min_score):
        raise OcrUnavailableError("tesseract did not read the control text: OCR verification cannot be trusted")


def find_phi(text: str, targets: Iterable[str], min_score: float) -> list[str]:
    """The targets found in ``text`` by rapidfuzz ``partial_ratio`` ≥ ``min_score`` (lower-cased)."""
    haystack = " ".join(text.lower().split())
    return sorted(t for t in targets if fuzz.partial_ratio(t, haystack, score_cutoff=min_score))


def sample_indices(count: int, at_most: int) -> list[int]:
    """All frames of a short clip, else ``at_most`` frames spread evenly from first to last."""
    if count <= at_most:
        return list(range(count))
    return sorted({round(i * (count - 1) / (at_most - 1)) for i in range(at_most)}) if at_most > 1 else [0]
