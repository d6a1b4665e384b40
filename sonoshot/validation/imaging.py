"""imaging.py
==========

The image statistics the detector is sensitive to, measured on the frames it scores: the size
of the ultrasound region (rows, columns) and its mean brightness. Used at fit time (the
bundle's reference, :mod:`sonoshot.model.detector`) and at processing time (each instance).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: ``(rows, columns, brightness)``: the first frame's size, the mean grey level 0-255.
ImageStats = tuple[int, int, float]


def frame_brightness(frame: np.ndarray) -> float:
    """Mean grey level of one frame on a 0-255 scale (RGB channels averaged, integer types
    scaled by their maximum)."""
    scale = 255.0 / np.iinfo(frame.dtype).max if np.issubdtype(frame.dtype, np.integer) else 255.0
    return float(frame.mean()) * scale


def image_stats(frames: Sequence[np.ndarray]) -> ImageStats:
    """``(rows, columns, brightness)`` of the frames of one instance: the first frame's size and
    the mean brightness over all frames.

    Raises
    ------
    ValueError
        If ``frames`` is empty.
    """
    if not frames:
        raise ValueError('Argument "frames" must not be empty.')
    rows, columns = frames[0].shape[:2]
    return int(rows), int(columns), float(np.mean([frame_brightness(f) for f in frames]))
