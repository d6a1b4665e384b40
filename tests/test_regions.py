"""Anomalous regions from anomaly maps: components, outlines, coordinates, validation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sonoshot.dicom_io.regions import anomaly_regions


def _map(shape=(240, 320)) -> np.ndarray:
    """A smooth background, a disc (radius 30) around (x=100, y=120), a 12 x 12 square at
    x 250-261, y 40-51, a 2 x 2 speckle and a one-pixel-wide line (no area to outline)."""
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    anomaly = 0.2 * np.exp(-((cols - 160) ** 2 + (rows - 120) ** 2) / 2e4)
    anomaly[(cols - 100) ** 2 + (rows - 120) ** 2 <= 30 ** 2] = 0.9
    anomaly[40:52, 250:262] = 0.7
    anomaly[200:202, 20:22] = 0.95
    anomaly[10, 10:40] = 0.95
    return anomaly.astype(np.float32)


def _inside(points: np.ndarray, x: float, y: float) -> bool:
    return cv2.pointPolygonTest(points.reshape(-1, 1, 2), (x, y), False) >= 0


def test_largest_areas_first_as_closed_polygons():
    disc, square = anomaly_regions(_map(), threshold=0.5)
    assert disc.area_px == pytest.approx(np.pi * 30 ** 2, rel=0.02)
    assert square.area_px == 144
    assert disc.peak == pytest.approx(0.9) and square.peak == pytest.approx(0.7)
    for region in (disc, square):
        assert region.points.dtype == np.float32 and region.points.shape[1] == 2
        assert np.array_equal(region.points[0], region.points[-1]) and len(region.points) >= 4
    assert _inside(disc.points, 100.5, 120.5) and not _inside(disc.points, 255.5, 45.5)
    # Pixel centres at +0.5 (PS3.3 C.18.6.1.1): the square's outline runs through its corner pixels.
    assert square.points[:, 0].min() == 250.5 and square.points[:, 0].max() == 261.5
    assert square.points[:, 1].min() == 40.5 and square.points[:, 1].max() == 51.5
    assert len(square.points) == 5  # Douglas-Peucker leaves the four corners


def test_max_regions_and_speckle():
    (disc,) = anomaly_regions(_map(), threshold=0.5, max_regions=1)
    assert disc.area_px > 2000
    assert [r.area_px for r in anomaly_regions(_map(), 0.5, max_regions=9, min_area_px=1)][2:] == [4]  # not the line
    assert anomaly_regions(_map(), threshold=0.99) == ()


def test_simplification_keeps_the_outline_close():
    exact, = anomaly_regions(_map(), 0.5, max_regions=1, tolerance_px=0)
    simple, = anomaly_regions(_map(), 0.5, max_regions=1, tolerance_px=1.0)
    assert len(simple.points) < len(exact.points) / 3
    for x, y in exact.points:
        distance = abs(cv2.pointPolygonTest(simple.points.reshape(-1, 1, 2), (float(x), float(y)), True))
        assert distance <= 1.0 + 1e-4


def test_area_touching_the_border_is_closed_inside_the_image():
    anomaly = np.zeros((50, 60), np.float32)
    anomaly[:20, 40:] = 1.0
    (region,) = anomaly_regions(anomaly, 0.5)
    assert region.area_px == 20 * 20
    assert region.points[:, 0].min() == 40.5 and region.points[:, 0].max() == 59.5
    assert region.points[:, 1].min() == 0.5 and region.points[:, 1].max() == 19.5


def test_deterministic():
    a, b = anomaly_regions(_map(), 0.5), anomaly_regions(_map(), 0.5)
    assert all(np.array_equal(x.points, y.points) for x, y in zip(a, b))


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(anomaly=[[0.0]]), TypeError, "anomaly"),
    (dict(anomaly=np.zeros(5)), ValueError, "anomaly"),
    (dict(anomaly=np.full((4, 4), np.nan)), ValueError, "anomaly"),
    (dict(threshold="0.5"), TypeError, "threshold"),
    (dict(threshold=float("inf")), ValueError, "threshold"),
    (dict(max_regions=0), ValueError, "max_regions"),
    (dict(min_area_px=2.0), TypeError, "min_area_px"),
    (dict(tolerance_px=-1), ValueError, "tolerance_px"),
])
def test_validation(kwargs, error, name):
    args = dict(anomaly=np.zeros((4, 4), np.float32), threshold=0.5) | kwargs
    with pytest.raises(error, match=f'"{name}"'):
        anomaly_regions(**args)
