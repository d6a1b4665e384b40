"""ocr.py
======

Read burned-in text with tesseract (the Debian ``tesseract-ocr`` program) and look for PHI
strings in it with a fuzzy match. Missing tesseract is an error, never a pass.

tesseract runs with ``OMP_THREAD_LIMIT=1`` (its OpenMP threads only spin against each other on
small images: twice as slow here), and the verifier reads all its sampled frames in one run
over a grid of the frames (:func:`ocr_frames`): one process start instead of one per frame.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import subprocess
from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from rapidfuzz import fuzz

TESSERACT = "tesseract"
TIMEOUT_S = 60
TILE_GAP = 32  # black pixels between frames in the grid, so no word runs from one into the next


class OcrUnavailableError(RuntimeError):
    """tesseract is not installed or failed to run."""


def _grey8(frame: np.ndarray) -> np.ndarray:
    if frame.dtype != np.uint8:
        frame = (frame >> (8 * frame.dtype.itemsize - 8)).astype(np.uint8)
    return np.asarray(Image.fromarray(frame).convert("L"))


def _tesseract(image: np.ndarray, psm: int, output: str = "") -> str:
    if shutil.which(TESSERACT) is None:
        raise OcrUnavailableError("tesseract is not installed: OCR verification fails closed")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    try:
        result = subprocess.run(
            [TESSERACT, "stdin", "stdout", "--psm", str(psm), *([output] if output else [])],
            input=buffer.getvalue(), capture_output=True,
            timeout=TIMEOUT_S, check=False, env={**os.environ, "OMP_THREAD_LIMIT": "1"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OcrUnavailableError(f"tesseract failed to run: {type(exc).__name__}") from exc
    if result.returncode:
        raise OcrUnavailableError(f"tesseract exited with status {result.returncode}")
    return result.stdout.decode("utf-8", errors="replace")


def ocr_text(frame: np.ndarray) -> str:
    """The text tesseract reads in one frame (sparse text mode, ``--psm 11``).

    Raises
    ------
    OcrUnavailableError
        If tesseract is missing, times out or exits with an error.
    """
    return _tesseract(_grey8(frame), 11)


def ocr_words(crop: np.ndarray) -> list[tuple[str, float]]:
    """The words tesseract reads in a crop holding one line (``--psm 7``), with their confidence (0-100).

    Raises
    ------
    OcrUnavailableError
        If tesseract is missing, times out or exits with an error.
    """
    words = []
    for line in _tesseract(np.pad(_grey8(crop), 8), 7, "tsv").splitlines()[1:]:
        fields = line.split("\t")
        if len(fields) == 12 and fields[11].strip():
            words.append((fields[11].strip(), float(fields[10])))
    return words


def tile(frames: list[np.ndarray]) -> np.ndarray:
    """The frames as one greyscale grid (``ceil(sqrt(n))`` columns), :data:`TILE_GAP` apart."""
    greys = [_grey8(f) for f in frames]
    rows, columns = max(g.shape[0] for g in greys), max(g.shape[1] for g in greys)
    across = math.ceil(math.sqrt(len(greys)))
    down = math.ceil(len(greys) / across)
    grid = np.zeros((down * (rows + TILE_GAP), across * (columns + TILE_GAP)), dtype=np.uint8)
    for number, grey in enumerate(greys):
        r, c = divmod(number, across)
        y, x = r * (rows + TILE_GAP), c * (columns + TILE_GAP)
        grid[y:y + grey.shape[0], x:x + grey.shape[1]] = grey
    return grid


def ocr_frames(frames: list[np.ndarray]) -> str:
    """The text tesseract reads in all ``frames`` at once, laid out by :func:`tile` (``--psm 11``).

    Raises
    ------
    OcrUnavailableError
        If tesseract is missing, times out or exits with an error.
    """
    return _tesseract(tile(frames), 11) if frames else ""


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
    """The targets found in ``text`` by rapidfuzz ``partial_ratio`` ≥ ``min_score`` (lower-cased).

    Text shorter than a target is compared whole (``ratio``): ``partial_ratio`` would find the
    two letters "we" inside "westway".
    """
    haystack = " ".join(text.lower().split())
    return sorted(t for t in targets
                  if (fuzz.partial_ratio if len(haystack) >= len(t) else fuzz.ratio)(t, haystack, score_cutoff=min_score))


def sample_indices(count: int, at_most: int) -> list[int]:
    """All frames of a short clip, else ``at_most`` frames spread evenly from first to last."""
    if count <= at_most:
        return list(range(count))
    return sorted({round(i * (count - 1) / (at_most - 1)) for i in range(at_most)}) if at_most > 1 else [0]


def verify_indices(count: int, detected: list[int], at_most: int) -> list[int]:
    """Up to ``at_most`` frames spread evenly over those text detection did not use (all frames'
    sample when detection used every frame), so the verifier reads frames the cleaner never saw."""
    others = [i for i in range(count) if i not in set(detected)]
    if not others:
        return sample_indices(count, at_most)
    return [others[i] for i in sample_indices(len(others), at_most)]
