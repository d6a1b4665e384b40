"""Tests for sonoshot.dicom_io.pixels: the one decode path, on real ultrasound files."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.pixels import convert_color_space, pixel_array

from sonoshot.dicom_io.pixels import (
    RegionError,
    UltrasoundRegion,
    UndecodableError,
    UnsupportedTransferSyntaxError,
    frame_count,
    frame_format,
    iter_frames,
    region_geometry,
    ultrasound_regions,
)
from tests.util import testdata as pydicom_file

# name -> (frames, rows, columns); every decodable shared file yields RGB uint8
SHARED = {
    "dcm4che-US-PAL-8-10x-echo": (10, 430, 600),  # RLE, PALETTE COLOR
    "dcm4che-YBR_422.dcm": (1, 555, 800),  # native YBR_FULL_422
    "dcm4che-jpeg-ls-Palette.dcm": (10, 430, 600),  # JPEG-LS, PALETTE COLOR
    "orthanc-1.2.840.10008.1.2.4.50.dcm": (1, 480, 640),  # JPEG Baseline YBR_FULL_422
    "orthanc-Issue16.dcm": (34, 430, 480),
    "orthanc-PrivateTags.dcm": (1, 480, 640),  # native RGB
    "orthanc-jp2k91YBR-ICT.dcm": (1, 965, 1660),  # JPEG 2000 YBR_ICT
}


@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_files_decode_to_rgb(shared_dicom, name):
    ds = pydicom.dcmread(shared_dicom / name)
    frames, rows, columns = SHARED[name]
    assert frame_count(ds) == frames
    fmt = frame_format(ds)
    assert (fmt.photometric_interpretation, fmt.bits_allocated) == ("RGB", 8)
    last = frames - 1
    decoded = list(iter_frames(ds, [last, 0]))
    assert [f.shape for f in decoded] == [(rows, columns, 3)] * 2
    assert all(f.dtype == np.uint8 and f.flags.writeable for f in decoded)
    assert decoded[0].max() > 0


def test_ybr_full_422_native_matches_pydicom_conversion(shared_dicom):
    ds = pydicom.dcmread(shared_dicom / "dcm4che-YBR_422.dcm")
    (frame,) = iter_frames(ds)
    raw = pixel_array(ds, raw=True)  # 4:2:2 upsampled, still YBR_FULL
    expected = convert_color_space(raw, "YBR_FULL", "RGB")
    assert np.array_equal(frame, expected)


def test_palette_is_applied_and_reduced_to_8_bits_exactly(shared_dicom):
    ds = pydicom.dcmread(shared_dicom / "dcm4che-US-PAL-8-10x-echo")
    (frame,) = iter_frames(ds, [3])
    indices = ds.pixel_array[3]
    red = np.frombuffer(ds.RedPaletteColorLookupTableData, "<u2")
    first = ds.RedPaletteColorLookupTableDescriptor[1]
    assert np.array_equal(frame[..., 0].astype(int) * 256, red[indices.astype(int) - first])


def test_planar_configuration_1_is_interleaved():
    ds = pydicom.dcmread(pydicom_file("SC_rgb_rle_2frame.dcm"))
    reference = ds.pixel_array  # pydicom's own interleaved result
    ds.decompress(generate_instance_uid=False)
    ds.PixelData = np.ascontiguousarray(reference.transpose(0, 3, 1, 2)).tobytes()
    ds.PlanarConfiguration = 1
    frames = list(iter_frames(ds))
    assert np.array_equal(np.stack(frames), reference)


def test_repeated_indices_and_order_are_honoured():
    ds = pydicom.dcmread(pydicom_file("examples_ybr_color.dcm"))
    a, b, c = iter_frames(ds, [5, 0, 5])
    assert np.array_equal(a, c) and not np.array_equal(a, b)


def test_monochrome_is_not_inverted():
    ds = pydicom.dcmread(pydicom_file("MR_small_RLE.dcm"))
    (frame,) = iter_frames(ds)
    assert frame_format(ds).photometric_interpretation == "MONOCHROME2"
    assert np.array_equal(frame, ds.pixel_array)


def test_jpeg_xl_is_undecodable_with_its_name(shared_dicom):
    ds = pydicom.dcmread(shared_dicom / "dcm4che-will-jxl.dcm")
    with pytest.raises(UnsupportedTransferSyntaxError, match=r"1\.2\.840\.10008\.1\.2\.4\.111 \(JPEG XL"):
        next(iter_frames(ds))


def test_out_of_range_index_is_rejected():
    ds = pydicom.dcmread(pydicom_file("examples_ybr_color.dcm"))
    with pytest.raises(UndecodableError, match="outside 0..29"):
        list(iter_frames(ds, [30]))


def test_missing_pixel_data_is_undecodable():
    ds = pydicom.dcmread(pydicom_file("examples_ybr_color.dcm"))
    del ds.PixelData
    with pytest.raises(UndecodableError, match="no pixel data"):
        frame_format(ds)


def test_regions_are_read_and_validated(shared_dicom):
    ds = pydicom.dcmread(shared_dicom / "orthanc-Issue16.dcm", stop_before_pixels=True)
    regions = ultrasound_regions(ds)
    assert [r.bounds for r in regions] == [(42, 4, 438, 353), (40, 374, 257, 406)]
    assert regions[0].spatial_format == 1


def test_region_one_pixel_past_the_image_is_clipped_and_reported():
    ds = pydicom.dcmread(pydicom_file("OBXXXX1A_rle_2frame.dcm"), stop_before_pixels=True)  # Philips CX50
    geometry = region_geometry(ds)
    assert ds.SequenceOfUltrasoundRegions[0].RegionLocationMaxX1 == ds.Columns == 800
    assert [r.bounds for r in geometry.regions] == [(120, 60, 799, 518), (176, 522, 743, 576)]
    assert geometry.clipped == (0,) and geometry.problem == ""


@pytest.mark.parametrize("name", ["examples_ybr_color.dcm", "examples_palette.dcm"])
def test_regions_of_other_pixels_are_not_trusted(name):
    ds = pydicom.dcmread(pydicom_file(name), stop_before_pixels=True)  # 640×480 regions, 320×240 pixels
    geometry = region_geometry(ds)
    assert geometry.regions == () and "do not describe these pixels" in geometry.problem
    assert ultrasound_regions(ds) == []


def test_overshoot_limit_is_two_pixels(shared_dicom):
    ds = pydicom.dcmread(shared_dicom / "orthanc-Issue16.dcm", stop_before_pixels=True)  # 480 columns
    ds.SequenceOfUltrasoundRegions[0].RegionLocationMaxX1 = 481
    assert region_geometry(ds).clipped == (0,)
    ds.SequenceOfUltrasoundRegions[0].RegionLocationMaxX1 = 482
    assert region_geometry(ds).regions == ()


def test_region_missing_a_coordinate_is_not_trusted(shared_dicom):
    ds = pydicom.dcmread(shared_dicom / "orthanc-Issue16.dcm", stop_before_pixels=True)
    del ds.SequenceOfUltrasoundRegions[1].RegionLocationMaxY1
    geometry = region_geometry(ds)
    assert geometry.regions == () and geometry.problem == "ultrasound region 1 lacks RegionLocationMaxY1"


@pytest.mark.parametrize("bounds", [(-1, 0, 5, 5), (6, 0, 5, 5), (0, 6, 5, 5)])
def test_region_constructor_validates(bounds):
    with pytest.raises(RegionError):
        UltrasoundRegion(*bounds)


def test_no_regions_gives_empty_list(shared_dicom):
    ds = pydicom.dcmread(shared_dicom / "orthanc-PrivateTags.dcm", stop_before_pixels=True)
    assert ultrasound_regions(ds) == []
