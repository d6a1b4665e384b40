"""Anomaly-map geometry: per-view grids back onto the original pixels (un-flip, un-zoom, undo
letterbox and resize, place the crop in the instance's grid), and the real detector's map of a
synthetic lesion in a cropped, letterboxed DICOM frame landing on the lesion's pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

from sonoshot.config import DetectorConfig
from sonoshot.model import FrameMap, create_backbone, fit_detector
from sonoshot.model.backbones import prepare_image
from sonoshot.model.head import N_VIEWS, augment_views, view_geometry
from sonoshot.model.inputs import InputImage, dataset_frames
from sonoshot.model.maps import place, unview

SIZE = 320


def _bright_frame(h: int, w: int, centre: tuple[int, int], radius: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    blob = np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * radius ** 2))
    return (40 + 180 * blob).astype(np.uint8)


def _view_grids(frame: np.ndarray, cells: int) -> np.ndarray:
    """What a perfect backbone would report per view: the brightness of each cell."""
    views = augment_views(prepare_image(frame, SIZE, mask=False)[None])
    return np.stack([F.adaptive_avg_pool2d(v[0, :1], cells)[0].numpy() for v in views])


@pytest.mark.parametrize("shape", [(120, 200), (200, 120), (160, 160)])
def test_every_view_maps_back_onto_the_frame_pixels(shape: tuple[int, int]) -> None:
    h, w = shape
    centre = (int(h * 0.3), int(w * 0.7))  # off-centre: a missed un-flip would mirror it
    frame = _bright_frame(h, w, centre, radius=min(h, w) // 8)
    grids = _view_grids(frame, 40)
    geometry = view_geometry(SIZE)
    for v in range(N_VIEWS):
        one = unview(grids[v:v + 1], geometry[v:v + 1], shape)
        assert one.shape == shape and one.dtype == np.float32
        peak = np.unravel_index(one.argmax(), shape)
        assert abs(peak[0] - centre[0]) <= 3 and abs(peak[1] - centre[1]) <= 3, (v, peak)
    both = unview(grids, geometry, shape)
    reference = frame.astype(np.float32) / 255
    assert np.corrcoef(both.ravel(), reference.ravel())[0, 1] > 0.9


def test_zoomed_views_hold_their_edge_at_the_border() -> None:
    geometry = view_geometry(SIZE)
    ramp = np.tile(np.linspace(0, 1, 10), (10, 1))  # rises to the right in each view
    grids = np.stack([ramp, ramp[:, ::-1], ramp, ramp[:, ::-1]])  # flipped views flipped back
    out = unview(grids, geometry, (100, 100))
    assert out[50, 50] == pytest.approx(0.5, abs=0.02)
    assert out[50, 0] == pytest.approx(0.0) and out[50, 99] == pytest.approx(1.0)
    steps = np.diff(out[50])
    assert (steps >= -1e-6).all() and steps.max() < 0.03  # monotone, no seam at the zoom edge
    with pytest.raises(ValueError, match="V = 4 views"):
        unview(grids[:3], geometry, (100, 100))


def test_place_puts_the_crop_at_its_origin() -> None:
    crop = np.arange(6, dtype=np.float32).reshape(2, 3) - 1
    out = place(crop, (5, 7), (4, 2))
    assert out.shape == (5, 7) and out.dtype == np.float32
    np.testing.assert_array_equal(out[2:4, 4:7], crop)
    assert (out[:2] == -1).all() and (out[:, :4] == -1).all()
    with pytest.raises(ValueError, match="does not fit"):
        place(crop, (3, 6), (4, 2))


def test_frame_map_validates() -> None:
    with pytest.raises(TypeError, match='"anomaly"'):
        FrameMap(0, 0.5, [[0.0]], 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2-D float32"):
        FrameMap(0, 0.5, np.zeros((2, 2)), 1.0)
    with pytest.raises(ValueError, match='"frame"'):
        FrameMap(-1, 0.5, np.zeros((2, 2), np.float32), 1.0)
    fm = FrameMap(0, 0.5, np.array([[0, 2]], np.float32), 1.0)
    assert fm.mask.tolist() == [[False, True]]


ROWS, COLUMNS = 300, 400
REGION = (60, 40, 339, 239)  # x0, y0, x1, y1: a 280 x 200 tissue region, letterboxed to a square
LESION = (182, 242, 30)  # row, column, radius in the instance's pixels (a cell centre)


def _tissue(seed: int, lesion: bool) -> Dataset:
    """An uncompressed monochrome ultrasound instance with one 2D tissue region; outside the
    region, a bright bar the crop must ignore."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(70, 18, (ROWS, COLUMNS)), 0, 255).astype(np.uint8)
    pixels[:, :20] = 230  # outside the region
    if lesion:
        yy, xx = np.mgrid[:ROWS, :COLUMNS]
        disc = (yy - LESION[0]) ** 2 + (xx - LESION[1]) ** 2 <= LESION[2] ** 2
        pixels[disc] = np.clip(rng.normal(200, 10, disc.sum()), 0, 255).astype(np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "US"
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    region = Dataset()
    (region.RegionLocationMinX0, region.RegionLocationMinY0, region.RegionLocationMaxX1,
     region.RegionLocationMaxY1) = REGION
    region.RegionSpatialFormat, region.RegionDataType = 1, 1
    ds.SequenceOfUltrasoundRegions = [region]
    ds.PixelData = pixels.tobytes()
    return ds


@pytest.fixture(scope="module")
def lesion_detector():
    config = DetectorConfig(backbone="efficientnet-lite0", mask_annotations=False)
    normal = [dataset_frames(_tissue(seed, False), 1) for seed in range(4)]
    return fit_detector(create_backbone(config), normal, [], config, seed=0)


def test_map_of_a_cropped_letterboxed_frame_lands_on_the_lesion(lesion_detector) -> None:
    ds = _tissue(10, True)
    image = dataset_frames(ds, 1)
    assert image.origin == REGION[:2] and image.grid_shape == (ROWS, COLUMNS)
    (scored,) = lesion_detector.score_dataset(ds)
    (frame_map,) = scored.maps
    anomaly = frame_map.anomaly
    assert frame_map.frame == 0 and frame_map.score == pytest.approx(scored.score)
    assert anomaly.shape == (ROWS, COLUMNS) and anomaly.dtype == np.float32
    row, column = np.unravel_index(anomaly.argmax(), anomaly.shape)
    assert (row - LESION[0]) ** 2 + (column - LESION[1]) ** 2 <= LESION[2] ** 2, (row, column)
    x0, y0, x1, y1 = REGION
    inside = anomaly[y0:y1 + 1, x0:x1 + 1]
    outside = np.ones(anomaly.shape, bool)
    outside[y0:y1 + 1, x0:x1 + 1] = False
    assert (anomaly[outside] == inside.min()).all()  # the bright bar outside is never scored
    mirrored = anomaly[LESION[0], x0 + x1 - LESION[1]]  # where an un-flipped view would put it
    assert mirrored < anomaly[LESION[0], LESION[1]] - 1.0
    assert frame_map.mask[LESION[0], LESION[1]] and not frame_map.mask[y0 + 5, x0 + 5]
    assert lesion_detector.score_image(image).maps[0].anomaly.tobytes() == anomaly.tobytes()


def test_normal_frame_map_stays_below_threshold(lesion_detector) -> None:
    (scored,) = lesion_detector.score_dataset(_tissue(11, False))
    assert scored.maps[0].mask.mean() < 0.02
    one = InputImage("x.png", "", (0,), (np.full((50, 80), 70, np.uint8),))
    assert lesion_detector.score_image(one).maps[0].anomaly.shape == (50, 80)
