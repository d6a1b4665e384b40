"""The adversarial corpus (tests/deid_corpus.py) through deidentify_file, checked against its answer key."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest

from sonoshot.dicom_io.deid import DeidPolicy, deidentify_file, patient_pseudonym
from sonoshot.dicom_io.deid.keys import date_offset_days
from sonoshot.dicom_io.deid.ocr import find_phi, ocr_text
from sonoshot.dicom_io.pixels import iter_frames
from tests import deid_corpus as corpus
from tests.util import require_binary

KEY = bytes(range(32))
POLICY = DeidPolicy(ocr_max_frames=corpus.FRAMES)


def _get(ds: pydicom.Dataset, path: str) -> object:
    node: object = ds
    for part in path.split("."):
        match = re.fullmatch(r"(\w+)(?:\[(\d+)\])?", part)
        keyword, index = match.group(1), match.group(2)
        if keyword not in node:  # type: ignore[operator]
            return None
        node = node[keyword]  # type: ignore[index]
        node = node.value[int(index)] if index is not None else node
    return node


@pytest.fixture(scope="module")
def case(shared_dicom, tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    source = corpus.planted(shared_dicom / "orthanc-Issue16.dcm")
    src = folder / "in.dcm"
    source.save_as(src, enforce_file_format=True)
    outcome = deidentify_file(src, folder / "out", POLICY, KEY)
    assert outcome.ok, outcome.reason
    return pydicom.dcmread(src), pydicom.dcmread(outcome.output), outcome


@pytest.mark.parametrize("path", sorted(corpus.ANSWERS))
def test_answer_key(case, path):
    before, after, _ = case
    expected = corpus.ANSWERS[path]
    old, new = _get(before, path), _get(after, path)
    assert old is not None, f"corpus lacks {path}"
    days = date_offset_days(KEY, corpus.PATIENT_ID)
    if expected == "removed":
        assert new is None
    elif expected == "emptied":
        assert new is not None and new.value in ("", None, [])
    elif expected == "pseudonym":
        assert str(new.value) == patient_pseudonym(KEY, corpus.PATIENT_ID)
    elif expected == "keyed":
        assert str(new.value).startswith("2.25.") and new.value != old.value
    elif expected == "kept":
        assert new.value == old.value
    elif expected == "cleaned":
        assert new.value and not any(p in str(new.value).lower() for p in corpus.PHI)
    elif expected == "shifted":
        olds = old.value if old.VM > 1 else [old.value]
        news = new.value if new.VM > 1 else [new.value]
        for a, b in zip(olds, news, strict=True):
            assert len(a) == len(b) and a[8:] == b[8:]  # precision, time and UTC offset kept
            if len(a) >= 8:
                shift = date(int(b[:4]), int(b[4:6]), int(b[6:8])) - date(int(a[:4]), int(a[4:6]), int(a[6:8]))
                assert shift.days == days
            else:
                assert b != a


def test_overlays_curves_private_and_signatures_removed(case):
    _, after, _ = case
    assert not [e.tag for e in after if e.tag.is_private or e.tag.group & 0xFF00 in (0x5000, 0x6000)]
    assert 0xFFFAFFFA not in after


def test_no_phi_string_at_any_depth_or_in_preamble_or_report(case):
    _, _, outcome = case
    raw = outcome.output.read_bytes()
    assert raw[:128] == b"\0" * 128
    header = raw[: raw.rfind(b"\xe0\x7f\x10\x00")].decode("latin-1").lower()  # up to Pixel Data
    report = json.dumps(outcome.report).lower()
    for phi in corpus.PHI:
        assert phi not in header
        assert phi not in report


def test_file_meta_carries_the_keyed_uid(case):
    _, after, _ = case
    assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
    assert after.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless


def test_provenance(case):
    _, after, outcome = case
    assert after.PatientIdentityRemoved == "YES"
    assert after.BurnedInAnnotation == "NO"
    assert after.LongitudinalTemporalInformationModified == "MODIFIED"
    codes = {item.CodeValue for item in after.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113101", "113105", "113107"}
    assert after.LossyImageCompression == "01"
    assert after.PhotometricInterpretation == "RGB"
    assert outcome.report["verifier"]["failures"] == []


def test_pixels_kept_inside_regions_but_text_black_outside(case):
    before, after, outcome = case
    assert outcome.method == "regions"
    text = np.zeros((before.Rows, before.Columns), bool)
    for x0, y0, x1, y1 in outcome.report["pixels"]["text_boxes"]:
        text[y0:y1 + 1, x0:x1 + 1] = True
    region = np.zeros_like(text)
    region[4:354, 42:439] = True
    assert (region & ~text).sum() > 0.9 * region.sum()  # the scanner's marks in the sector, not the sector
    for old, new in zip(iter_frames(before), iter_frames(after), strict=True):
        assert np.array_equal(new[region & ~text], old[region & ~text]) and not new[text].any()
        assert not new[407:].any() and not new[:, 439:].any()


def test_burned_name_found_in_input_and_not_in_output(case):
    before, after, _ = case
    targets = {"kovacs", "ilona"}
    (frame_in,) = iter_frames(before, [corpus.FRAMES - 1])
    (frame_out,) = iter_frames(after, [corpus.FRAMES - 1])
    assert find_phi(ocr_text(frame_in), targets, 85) == ["ilona", "kovacs"]  # positive control
    assert find_phi(ocr_text(frame_out), targets, 85) == []


def _dciodvfy_errors(path: Path) -> set[str]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return {line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")}


@pytest.mark.parametrize("name", ["orthanc-Issue16.dcm", "orthanc-jp2k91YBR-ICT.dcm", "dcm4che-YBR_422.dcm"])
def test_output_has_no_dciodvfy_error_the_input_lacks(shared_dicom, tmp_path, name):
    require_binary("dciodvfy")
    outcome = deidentify_file(shared_dicom / name, tmp_path, DeidPolicy(ocr=False), KEY)
    assert outcome.ok, outcome.reason
    assert _dciodvfy_errors(outcome.output) <= _dciodvfy_errors(shared_dicom / name)


def test_same_patient_same_pseudonym_and_offset_other_key_differs(shared_dicom, tmp_path):
    a = corpus.planted(shared_dicom / "orthanc-Issue16.dcm")
    a.SOPInstanceUID = "1.2.3.99"
    a.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    fast = DeidPolicy(ocr=False)
    first = deidentify_file(tmp_path / "a.dcm", tmp_path / "o1", fast, KEY)
    again = deidentify_file(tmp_path / "a.dcm", tmp_path / "o2", fast, KEY)
    other = deidentify_file(tmp_path / "a.dcm", tmp_path / "o3", fast, bytes(32))
    one, two, three = (pydicom.dcmread(o.output) for o in (first, again, other))
    assert one.SOPInstanceUID == two.SOPInstanceUID != three.SOPInstanceUID
    assert (one.PatientID, one.StudyDate) == (two.PatientID, two.StudyDate)
    assert one.PatientID != three.PatientID
    assert first.output.read_bytes() == again.output.read_bytes()
