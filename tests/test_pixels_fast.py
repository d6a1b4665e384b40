"""iter_frames_fast: the detector's decode, the same picture as iter_frames on real ultrasound
files (JPEG Baseline through libjpeg-turbo; everything else through iter_frames itself)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from sonoshot.dicom_io.pixels import UndecodableError, iter_frames, iter_frames_fast
from tests import util

JPEG_FILES = ("orthanc-Issue16.dcm", "orthanc-Issue164.dcm", "orthanc-1.2.840.10008.1.2.4.50.dcm")
PYDICOM_JPEG = ("examples_ybr_color.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_jpeg_no_color_transform.dcm")


def _dataset(shared_dicom: Path, name: str) -> pydicom.Dataset:
    path = shared_dicom / name if (shared_dicom / name).exists() else util.testdata(name)
    return pydicom.dcmread(path)


@pytest.mark.parametrize("name", JPEG_FILES + PYDICOM_JPEG)
def test_jpeg_baseline_is_the_same_picture(shared_dicom: Path, name: str) -> None:
    ds = _dataset(shared_dicom, name)
    count = int(ds.get("NumberOfFrames") or 1)
    indices = sorted({0, count // 2, count - 1})
    exact, fast = list(iter_frames(ds, indices)), list(iter_frames_fast(ds, indices))
    assert len(fast) == len(indices)
    for a, b in zip(exact, fast):
        assert b.shape == a.shape and b.dtype == a.dtype and b.flags.writeable
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
        assert diff.mean() < 0.2 and diff.max() <= 16  # chroma upsampling at colour edges


@pytest.mark.parametrize("name", ("dcm4che-US-PAL-8-10x-echo", "dcm4che-jpeg-ls-Palette.dcm",
                                  "orthanc-jp2k91YBR-ICT.dcm", "dcm4che-YBR_422.dcm"))
def test_other_syntaxes_decode_as_iter_frames(shared_dicom: Path, name: str) -> None:
    ds = pydicom.dcmread(shared_dicom / name)
    for a, b in zip(iter_frames(ds, [0]), iter_frames_fast(ds, [0]), strict=True):
        assert np.array_equal(a, b)


def test_corrupt_jpeg_and_bad_index_are_named(shared_dicom: Path) -> None:
    ds = pydicom.dcmread(shared_dicom / "orthanc-1.2.840.10008.1.2.4.50.dcm")
    with pytest.raises(UndecodableError, match=r"frame indices \[1\] are outside 0\.\.0"):
        list(iter_frames_fast(ds, [1]))
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xdb" + bytes(64)])
    with pytest.raises(UndecodableError, match="JPEG Baseline.*could not be decoded"):
        list(iter_frames_fast(ds, [0]))
