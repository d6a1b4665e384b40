"""The key image: rendering (overlay, outline, legible burned-in text) and the Secondary Capture."""

from __future__ import annotations

import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage

from sonoshot.dicom_io.deid.ocr import ocr_text
from sonoshot.dicom_io.keyimage import (
    NOT_FOR_DIAGNOSTIC_USE,
    OUTLINE_RGB,
    build_key_image,
    key_image_series_instance_uid,
    key_image_sop_instance_uid,
    render_key_image,
)
from sonoshot.dicom_io.pixels import iter_frames
from sonoshot.dicom_io.regions import anomaly_regions
from tests.util import require_binary

CAPTION = ["Anomaly score 0.873 (threshold 0.520): abnormal", "Frame 12 of 34"]


@pytest.fixture(scope="module")
def cine(shared_dicom: Path) -> pydicom.Dataset:
    return pydicom.dcmread(shared_dicom / "orthanc-Issue16.dcm")  # 34 frames, 480 x 430, JPEG


@pytest.fixture(scope="module")
def frame(cine) -> np.ndarray:
    (decoded,) = iter_frames(cine, [11])
    return decoded


def _blob(shape, x=250, y=200, sigma=40.0) -> np.ndarray:
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    return np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def test_render_overlays_the_map_outlines_regions_and_burns_in_text(frame):
    anomaly = _blob(frame.shape[:2])
    (region,) = anomaly_regions(anomaly, 0.5)
    pixels = render_key_image(frame, anomaly, [region.points], CAPTION)
    assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
    assert pixels.shape[1] == 2 * frame.shape[1]  # 480 columns enlarged to 960
    image = render_key_image(frame, anomaly, [], [])  # no outline, no caption
    band = image.shape[0] - 2 * frame.shape[0]
    body = image[band:]
    enlarged = np.repeat(np.repeat(frame, 2, axis=0), 2, axis=1).astype(int)
    # The map's peak is tinted, a far corner of the map is (almost) not.
    assert np.abs(body[400, 500].astype(int) - enlarged[400, 500]).sum() > 60
    assert np.abs(body[10, 900].astype(int) - enlarged[10, 900]).sum() < 12
    outlined = (pixels == OUTLINE_RGB).all(axis=2)
    rows, cols = np.nonzero(outlined)
    assert outlined.sum() > 200 and abs(cols.mean() - 500) < 10  # a ring around the blob's centre x=250.5 * 2


def test_burned_in_text_is_legible(frame):
    require_binary("tesseract")
    anomaly = _blob(frame.shape[:2])
    text = ocr_text(render_key_image(frame, anomaly, [], CAPTION + ["demo detector: breast, public data"]))
    assert NOT_FOR_DIAGNOSTIC_USE in text
    assert "0.873" in text and "demo detector" in text


def test_monochrome_and_wide_frames():
    mono = (np.arange(200 * 300, dtype=np.uint16).reshape(200, 300) % 4096)
    pixels = render_key_image(mono, np.zeros((200, 300), np.float32), [], CAPTION, min_width=640)
    assert pixels.shape[1] == 900  # factor 3
    wide = render_key_image(np.zeros((100, 1000), np.uint8), np.zeros((100, 1000)), [], CAPTION)
    assert wide.shape[1] == 1000


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(frame=[[0]]), TypeError, "frame"),
    (dict(frame=np.zeros((4, 4, 2), np.uint8)), ValueError, "frame"),
    (dict(anomaly=np.zeros((3, 3))), ValueError, "anomaly"),
    (dict(anomaly=np.full((4, 4), np.inf)), ValueError, "anomaly"),
    (dict(alpha=0), ValueError, "alpha"),
    (dict(caption=["score é"]), ValueError, "caption"),
])
def test_render_validation(kwargs, error, name):
    args = dict(frame=np.zeros((4, 4), np.uint8), anomaly=np.zeros((4, 4)), outlines=[], caption=[]) | kwargs
    with pytest.raises(error, match=f'"{name}"'):
        render_key_image(**args)


def test_secondary_capture_in_the_original_study(cine, frame, tmp_path):
    require_binary("dciodvfy")
    pixels = render_key_image(frame, _blob(frame.shape[:2]), [], CAPTION)
    uid = key_image_sop_instance_uid("2.25.1234")
    series = key_image_series_instance_uid(str(cine.StudyInstanceUID), "0" * 64)
    assert uid == key_image_sop_instance_uid("2.25.1234") != key_image_sop_instance_uid("2.25.1235")
    sc = build_key_image(cine, pixels, uid, series, 2, 12, "sonoshot-fewshot")
    path = tmp_path / "key.dcm"
    sc.save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == SecondaryCaptureImageStorage and ds.SOPInstanceUID == uid
    assert (ds.StudyInstanceUID, ds.PatientID, ds.PatientName) == (cine.StudyInstanceUID, cine.PatientID,
                                                                   cine.PatientName)
    assert ds.SeriesInstanceUID == series != cine.SeriesInstanceUID and ds.SeriesNumber == 9903
    assert (ds.Modality, ds.BurnedInAnnotation, ds.ConversionType) == ("OT", "YES", "WSD")
    assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.get("NumberOfFrames", 1)) == ("RGB", 3, 1)
    assert ds.InstanceNumber == 2 and ds.LossyImageCompression == "01"  # derived from JPEG Baseline
    source = ds.SourceImageSequence[0]
    assert (source.ReferencedSOPInstanceUID, source.ReferencedFrameNumber) == (cine.SOPInstanceUID, 12)
    assert np.array_equal(ds.pixel_array, pixels)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    report = out.stdout + out.stderr
    assert "SCImage" in report
    assert [line for line in report.splitlines() if line.startswith("Error")] == [], report


def test_build_validation(cine):
    pixels = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match='"pixels"'):
        build_key_image(cine, pixels[:, :, 0], "1.2.3", "1.2.4", 1, 1, "a")
    with pytest.raises(ValueError, match='"source_frame"'):
        build_key_image(cine, pixels, "1.2.3", "1.2.4", 1, 35, "a")
    with pytest.raises(ValueError, match='"sop_instance_uid"'):
        build_key_image(cine, pixels, "1.x", "1.2.4", 1, 1, "a")
    sc = build_key_image(cine, pixels, "1.2.3", "1.2.4", 1, None, "a")
    buffer = BytesIO()
    sc.save_as(buffer, enforce_file_format=True)
    assert "ReferencedFrameNumber" not in pydicom.dcmread(BytesIO(buffer.getvalue())).SourceImageSequence[0]
