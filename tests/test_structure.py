"""The C-STORE handler's structural walk, on real files and on broken copies of them, and the
Part 10 header it writes in front of each dataset."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import read_preamble
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from pynetdicom.dsutils import create_file_meta, encode_file_meta

from sonoshot.dicom_io.part10 import part10_header
from sonoshot.dicom_io.structure import MAX_DEPTH, summarize, summarize_file
from tests.util import testdata

PYDICOM_FILES = ["examples_ybr_color.dcm", "US1_J2KR.dcm", "CT_small.dcm", "MR_small_bigendian.dcm",
                 "image_dfl.dcm", "SC_rgb_expb.dcm", "rtplan.dcm", "emri_small.dcm", "color3d_jpeg_baseline.dcm"]
KEYWORDS = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "PatientID",
            "Rows", "Columns", "NumberOfFrames")


def _split(path: Path) -> tuple[pydicom.Dataset, str, bytes]:
    """(the dataset as pydicom reads it, its transfer syntax, the dataset's bytes after the file meta)."""
    ds = pydicom.dcmread(path)
    with open(path, "rb") as f:
        read_preamble(f, False)
        pydicom.filereader._read_file_meta_info(f)
        return ds, ds.file_meta.TransferSyntaxUID, f.read()


def _files(shared_dicom: Path) -> list[Path]:
    return [testdata(name) for name in PYDICOM_FILES] + sorted(p for p in shared_dicom.iterdir() if p.is_file())


def test_real_files_are_whole_and_their_uids_read(shared_dicom):
    for path in _files(shared_dicom):
        ds, syntax, data = _split(path)
        for summary in (summarize(data, syntax), summarize_file(path, syntax)):
            assert summary.problem is None, (path.name, summary.problem)
            for keyword in KEYWORDS:
                assert summary.dataset.get(keyword) == ds.get(keyword), (path.name, keyword)


def _native(shared_dicom: Path) -> tuple[pydicom.Dataset, bytes]:
    ds, syntax, data = _split(shared_dicom / "dcm4che-YBR_422.dcm")
    assert syntax == ExplicitVRLittleEndian
    return ds, data


def test_a_cut_inside_any_element_is_found(shared_dicom):
    """Cut inside each top-level element's header and inside its value: every cut is found."""
    _, data = _native(shared_dicom)
    ds = pydicom.filereader.read_dataset(io.BytesIO(data), is_implicit_VR=False, is_little_endian=True)
    cuts = []
    for tag in ds.keys():
        raw = ds.get_item(tag)
        if isinstance(raw, pydicom.dataelem.RawDataElement) and 2 < raw.length < 0xFFFFFFFF:
            cuts += [raw.value_tell - 3, raw.value_tell + raw.length // 2]
    assert len(cuts) > 40
    for cut in cuts:
        assert summarize(data[:cut], ExplicitVRLittleEndian).problem is not None, cut
    assert "(7FE0,0010) value is" in summarize(data[:-100], ExplicitVRLittleEndian).problem


def test_pixel_data_of_the_wrong_size_or_frames(shared_dicom):
    ds, _ = _native(shared_dicom)
    for change, expected in [(lambda d: setattr(d, "Rows", d.Rows + 10), "the image attributes need"),
                             (lambda d: setattr(d, "NumberOfFrames", 0), "Number of Frames is 0"),
                             (lambda d: setattr(d, "NumberOfFrames", 3), "the image attributes need"),
                             (lambda d: delattr(d, "Columns"), "cannot be checked")]:
        broken = pydicom.dcmread(shared_dicom / "dcm4che-YBR_422.dcm")
        change(broken)
        buffer = io.BytesIO()
        broken.save_as(buffer, enforce_file_format=True)
        problem = summarize(buffer.getvalue()[132 + 12 + broken.file_meta.FileMetaInformationGroupLength:],
                            ExplicitVRLittleEndian).problem
        assert problem is not None and expected in problem, problem


def _element(tag: int, vr: bytes, value: bytes, undefined: bool = False) -> bytes:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in (b"OB", b"SQ", b"UN"):
        return head + b"\0\0" + struct.pack("<I", 0xFFFFFFFF if undefined else len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _item(body: bytes, undefined: bool = True) -> bytes:
    if undefined:
        return struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + body + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
SOP = _element(0x00080018, b"UI", b"1.2.3.4\0")


def test_sequences_of_undefined_length_are_walked():
    inner = _element(0x00081150, b"UI", b"1.2\0")
    nested = _element(0x00081140, b"SQ", _item(inner) + _item(inner, undefined=False) + SEQUENCE_END, undefined=True)
    data = _element(0x00080005, b"CS", b"ISO_IR 100") + nested + SOP
    summary = summarize(data, ExplicitVRLittleEndian)
    assert summary.problem is None and summary.dataset.SOPInstanceUID == "1.2.3.4"
    assert "ends inside" in summarize(data[:len(data) - len(SOP) - 8], ExplicitVRLittleEndian).problem


def test_nesting_and_unknown_vrs_are_refused():
    body = SOP
    for _ in range(MAX_DEPTH + 1):
        body = _element(0x00081140, b"SQ", _item(body) + SEQUENCE_END, undefined=True)
    assert "deeper than" in summarize(body, ExplicitVRLittleEndian).problem
    assert "unknown VR" in summarize(_element(0x00100010, b"XX", b"DOE"), ExplicitVRLittleEndian).problem
    assert "undefined length but is not a sequence" in summarize(_element(0x00100010, b"OB", b"", undefined=True),
                                                                 ExplicitVRLittleEndian).problem


def test_fragments_are_counted_and_checked():
    pixels = lambda fragments: _element(0x7FE00010, b"OB", fragments, undefined=True)  # noqa: E731
    header = SOP + _element(0x00280008, b"IS", b"1 ")
    offsets = struct.pack("<HHI", 0xFFFE, 0xE000, 0)
    whole = header + pixels(offsets + _item(b"\xff\xd8\xff\xd9", undefined=False) + SEQUENCE_END)
    assert summarize(whole, JPEGBaseline8Bit).problem is None
    assert "holds no fragment" in summarize(header + pixels(offsets + SEQUENCE_END), JPEGBaseline8Bit).problem
    broken = header + pixels(offsets + struct.pack("<HHI", 0x0010, 0x0010, 4) + b"abcd" + SEQUENCE_END)
    assert "where a fragment item belongs" in summarize(broken, JPEGBaseline8Bit).problem
    assert "native in transfer syntax" in summarize(header + _element(0x7FE00010, b"OB", b"\0" * 4),
                                                    JPEGBaseline8Bit).problem
    assert "ends inside" in summarize(whole[:-6], JPEGBaseline8Bit).problem


def test_a_deflated_dataset_is_inflated_as_it_is_walked():
    ds, syntax, data = _split(testdata("image_dfl.dcm"))
    assert summarize(data, syntax).dataset.SOPInstanceUID == ds.SOPInstanceUID
    assert summarize(data[: len(data) // 2], syntax).problem is not None
    assert "cannot be inflated" in summarize(b"\xff" * 100, syntax).problem
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    compressed = bomb.compress(SOP + _element(0x7FE00010, b"OB", b"\0" * (64 * 2**20))) + bomb.flush()
    assert len(compressed) < 2**20
    assert "cannot be checked" in summarize(compressed, syntax).problem  # walked in bounded chunks


def test_summarize_file_needs_a_part_10_file(tmp_path):
    path = tmp_path / "raw.dcm"
    path.write_bytes(SOP)
    with pytest.raises(ValueError, match="not a DICOM file"):
        summarize_file(path, ExplicitVRLittleEndian)


@pytest.mark.parametrize(("sop_class", "sop_instance", "syntax"), [
    ("1.2.840.10008.5.1.4.1.1.6.1", "1.2.3.4", ExplicitVRLittleEndian),  # odd and even UID lengths
    ("1.2.840.10008.5.1.4.1.1.3.1", "1.2.3.45", JPEGBaseline8Bit),
    ("1.2.840.10008.5.1.4.1.1.7", "2.25.1" + "0" * 58, "1.2.840.10008.1.2"),
])
def test_the_part10_header_is_what_pynetdicom_would_write(sop_class, sop_instance, syntax):
    expected = b"\0" * 128 + b"DICM" + encode_file_meta(create_file_meta(
        sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=syntax))
    assert part10_header(sop_class, sop_instance, syntax) == expected
    with pytest.raises(ValueError, match="sop_instance_uid"):
        part10_header(sop_class, "1." * 40, syntax)
