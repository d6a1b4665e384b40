"""readouts.py
===========

What the verifier makes of a box the text detector still finds after text-only cleaning, from
the words tesseract reads in it with a confidence of :data:`MIN_CONFIDENCE` or more
(:func:`classify`):

* ``"text"``: a word of :data:`MIN_WORD` or more letters or digits that is not a readout:
  the verifier fails;
* ``"readout"``: the allow-list. Every word is a number (with an optional decimal part, sign,
  ratio or comparison) or one of :data:`READOUT_WORDS`: acoustic output indices, gain, depth,
  frequency, frame rate and their units;
* ``"mark"``: nothing readable (no confident word of :data:`MIN_WORD` letters or digits):
  colour Doppler blobs, ECG traces, body-marker pictograms and calliper crosses, which the
  detector can score as text once the text beside them is blanked (tesseract reads shapes
  like these as short words of low confidence). Counted in the report, not a failure: both engines must find
  text for a box to be text, and the PHI search of the whole frame runs on it anyway.
"""

from __future__ import annotations

import re

#: Readout labels and units, lower-case (depth, gain, MI/TIS, frequency, frame rate, units).
READOUT_WORDS = frozenset({
    "mi", "tis", "tib", "tic", "tisb", "tisc", "gain", "gn", "g", "depth", "d", "dr", "db",
    "fr", "frq", "freq", "f", "hz", "khz", "mhz", "fps", "bpm", "prf", "wf", "map", "ao", "c", "p",
    "cm", "mm", "m", "s", "cm/s", "m/s", "mm/s", "%",
})
MIN_WORD = 3  # letters or digits in a row that make a word readable
MIN_CONFIDENCE = 60.0  # tesseract word confidence (0-100) from which a word counts as read
_NUMBER = re.compile(r"^[<>=+\-]*\d+([.,:/]\d+)*%?$")
_SPLIT = re.compile(r"[\s=:;|]+")
_ALNUM_RUN = re.compile(rf"[^\W_]{{{MIN_WORD},}}")


def classify(read: list[tuple[str, float]]) -> str:
    """``"text"``, ``"readout"`` or ``"mark"`` for the ``(word, confidence)`` tesseract read in one box."""
    text = " ".join(word for word, confidence in read if confidence >= MIN_CONFIDENCE)
    if not _ALNUM_RUN.search(text):
        return "mark"
    words = [w.strip(".,()[]") for w in _SPLIT.split(text.lower()) if w.strip(".,()[]")]
    return "readout" if all(_NUMBER.match(w) or w in READOUT_WORDS for w in words) else "text"
