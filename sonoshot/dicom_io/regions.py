"""regions.py
==========

Where a frame is anomalous: the connected areas of an anomaly map above its threshold, as
closed polygons in the instance's pixel coordinates, for the SR's TID 1410 planar regions and
the key image's contour.

OpenCV does the image processing: ``connectedComponentsWithStats`` (8-connected) finds the
areas, ``findContours`` traces the outer boundary of each (holes are inside the region), and
``approxPolyDP`` (Douglas-Peucker) drops vertices that lie within ``tolerance_px`` of the
simplified outline, so an SR carries tens of points per region rather than hundreds.

Coordinates follow PS3.3 C.18.6.1.1 (SCOORD, pixel units): (column, row), with (0, 0) the
top-left corner of the top-left pixel, so a pixel's centre is at (c + 0.5, r + 0.5); the polygon
runs through the centres of the boundary pixels. Deterministic, no state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np


@dataclass(frozen=True)
class Region:
    """One above-threshold area of an anomaly map.

    Attributes
    ----------
    points : numpy.ndarray
        ``(N, 2)`` float32 (column, row) vertices, N >= 4, closed (the last equals the first).
    area_px : int
        Pixels in the area.
    peak : float
        The map's maximum inside the area.
    """

    points: np.ndarray
    area_px: int
    peak: float


def _check(anomaly: Any, threshold: Any, max_regions: Any, min_area_px: Any, tolerance_px: Any) -> np.ndarray:
    if not isinstance(anomaly, np.ndarray):
        raise TypeError(f'Argument "anomaly" must be a numpy.ndarray, got {type(anomaly).__name__}.')
    if anomaly.ndim != 2 or min(anomaly.shape) < 1:
        raise ValueError(f'Argument "anomaly" must be a 2-D (Rows, Columns) map, got shape {anomaly.shape}.')
    values = anomaly.astype(np.float32, copy=False)
    if not np.isfinite(values).all():
        raise ValueError('Argument "anomaly" must hold finite values.')
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)):
        raise TypeError(f'Argument "threshold" must be a number, got {type(threshold).__name__}.')
    if not math.isfinite(threshold):
        raise ValueError(f'Argument "threshold" must be finite, got {threshold}.')
    for name, value, low in (("max_regions", max_regions, 1), ("min_area_px", min_area_px, 1)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f'Argument "{name}" must be an int, got {type(value).__name__}.')
        if value < low:
            raise ValueError(f'Argument "{name}" must be >= {low}, got {value}.')
    if isinstance(tolerance_px, bool) or not isinstance(tolerance_px, (int, float)) or not tolerance_px >= 0:
        raise ValueError(f'Argument "tolerance_px" must be a number >= 0, got {tolerance_px!r}.')
    return values


def _outline(component: np.ndarray, tolerance_px: float) -> np.ndarray | None:
    """The simplified outer boundary of a binary mask, as (column, row) pixel indices."""
    contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    contour = max(contours, key=len)
    simplified = cv2.approxPolyDP(contour, tolerance_px, closed=True) if tolerance_px > 0 else contour
    if len(simplified) < 3:
        simplified = cv2.approxPolyDP(contour, 0.0, closed=True)
    if len(simplified) < 3:  # a line of pixels: no area to outline
        return None
    return simplified[:, 0, :]


def anomaly_regions(anomaly: np.ndarray, threshold: float, max_regions: int = 3, min_area_px: int = 16,
                    tolerance_px: float = 1.0) -> tuple[Region, ...]:
    """The largest connected areas of ``anomaly`` above ``threshold``, largest first.

    Parameters
    ----------
    anomaly : numpy.ndarray
        ``(Rows, Columns)`` map in the instance's pixel grid.
    threshold : float
        Pixels strictly above it are anomalous.
    max_regions : int
        At most this many areas (the largest).
    min_area_px : int
        Areas smaller than this many pixels are left out (speckle).
    tolerance_px : float
        Douglas-Peucker tolerance of the outline, in pixels; 0 keeps every boundary pixel.

    Returns
    -------
    tuple[Region, ...]
        Empty when no area of ``min_area_px`` pixels or more is above the threshold.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If ``anomaly`` is not a finite 2-D map, ``threshold`` is not finite, or a count or the
        tolerance is out of range.
    """
    values = _check(anomaly, threshold, max_regions, min_area_px, tolerance_px)
    mask = (values > threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = [int(i) + 1 for i in np.argsort(-areas, kind="stable") if areas[i] >= min_area_px]
    regions = []
    for label in order[:max_regions]:
        x, y, w, h = (int(v) for v in stats[label, :4])
        inside = labels[y:y + h, x:x + w] == label
        padded = np.pad(inside.astype(np.uint8), 1)  # a border so areas touching the edge close
        outline = _outline(padded, float(tolerance_px))
        if outline is None:
            continue
        points = (outline - 1 + np.array([x, y])).astype(np.float32) + 0.5
        points = np.vstack([points, points[:1]])
        regions.append(Region(points=points, area_px=int(stats[label, cv2.CC_STAT_AREA]),
                              peak=float(values[y:y + h, x:x + w][inside].max())))
    return tuple(regions)
