"""Burned-in text: every real ultrasound file on hand, and text drawn onto real frames.

* each of the 30 real files (shared, pydicom, pydicom-data) with decodable pixels is cleaned and
  verified, and tesseract finds none of its header's PHI strings, nor any name burned into
  another file, in its output; the undecodable one is quarantined with its reason code;
* the adversarial corpus (tests/deid_corpus.py ``text_cases``): names, IDs and dates drawn on
  real frames in margins and tissue, white, yellow and dim grey, 10-24 px: ≥ 99 % of the drawn
  boxes are blanked in the output and tesseract reads none of the strings there;
* a header anonymised upstream does not let a burned-in name through, text inside the tissue
  region of a file with regions is blanked, and a frame without text keeps its image unchanged.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from sonoshot.dicom_io.deid import DeidPolicy, QuarantineReason, deidentify_file
from sonoshot.dicom_io.deid.ocr import find_phi, ocr_frames, sample_indices
from sonoshot.dicom_io.deid.phi import collect_phi
from sonoshot.dicom_io.pixels import UndecodableError, frame_count, frame_format, iter_frames
from tests import deid_corpus as corpus
from tests.conftest import find_shared
from tests.util import require_binary
from tests.util import testdata as pydicom_file

KEY = bytes(range(32))
POLICY = DeidPolicy()  # the defaults: 4 detection frames, 8 other frames OCR'd

_SHARED = find_shared()
REAL_FILES = corpus.real_us_files(_SHARED / "data" / "dicom", pydicom_file) if _SHARED else []


def _decodable(path) -> bool:
    try:
        frame_format(pydicom.dcmread(path, stop_before_pixels=False))
    except UndecodableError:
        return False
    return True


def _burned_targets(ds: pydicom.Dataset) -> set[str]:
    return set(collect_phi(ds).ocr_targets()) | set(corpus.BURNED_ELSEWHERE)


def test_all_thirty_real_files_are_on_hand():
    assert len(REAL_FILES) == 30, [p.name for p in REAL_FILES]


@pytest.mark.slow
@pytest.mark.parametrize("path", REAL_FILES, ids=[p.name for p in REAL_FILES])
def test_real_file_is_cleaned_and_verified_or_named(path, tmp_path):
    require_binary("tesseract")
    outcome = deidentify_file(path, tmp_path, POLICY, KEY)
    if not _decodable(path):
        assert outcome.reason_code == QuarantineReason.UNSUPPORTED_TRANSFER_SYNTAX and outcome.output is None
        return
    assert outcome.ok, outcome.reason
    assert outcome.method in ("regions", "clipped regions", "device mask", "text-only")
    source, out = pydicom.dcmread(path), pydicom.dcmread(outcome.output)
    targets = _burned_targets(source)
    header = outcome.output.read_bytes()[:outcome.output.read_bytes().rfind(b"\xe0\x7f\x10\x00")].decode("latin-1")
    assert not [t for t in targets if len(t) >= 4 and t in header.lower() and t in collect_phi(source).all]
    frames = list(iter_frames(out, sample_indices(frame_count(out), 8)))  # detection and verifier frames alike
    assert find_phi(ocr_frames(frames), targets, 85) == []


@pytest.fixture(scope="module")
def text_outcomes(shared_dicom, tmp_path_factory):
    """Each corpus frame as a one-frame JPEG instance without regions (text-only), cleaned."""
    require_binary("tesseract")
    folder = tmp_path_factory.mktemp("text-corpus")
    results = []
    for number, case in enumerate(corpus.text_cases(shared_dicom, pydicom_file)):
        src = folder / f"{number}.dcm"
        corpus.text_instance(case, shared_dicom / "orthanc-Issue16.dcm", frames=1).save_as(src, enforce_file_format=True)
        results.append((case, deidentify_file(src, folder / "out", POLICY, KEY)))
    return results


def test_drawn_text_recall_is_at_least_99_percent(text_outcomes):
    boxes, missed = 0, []
    for case, outcome in text_outcomes:
        assert outcome.ok and outcome.method == "text-only", outcome.reason
        (frame,) = iter_frames(pydicom.dcmread(outcome.output))
        blanked = ~frame.any(axis=2)
        for drawn in case.drawn:
            boxes += 1
            if blanked[drawn.ink].mean() < 0.99:
                missed.append((case.base, drawn.text, drawn.place, drawn.colour, drawn.size))
    places = {d.place for case, _ in text_outcomes for d in case.drawn}
    assert boxes >= 140 and places == {"margin", "tissue"}
    assert 1 - len(missed) / boxes >= 0.99, missed


def test_no_drawn_string_is_read_in_the_outputs(text_outcomes):
    strings = {w.lower().strip(",:") for s in corpus.TEXT_STRINGS for w in s.replace("^", " ").split()}
    targets = {w for w in strings if len(w) >= 4} | {s.lower() for s in corpus.TEXT_STRINGS}
    frames = [next(iter_frames(pydicom.dcmread(o.output))) for _case, o in text_outcomes]
    for start in range(0, len(frames), 8):
        assert find_phi(ocr_frames(frames[start:start + 8]), targets, 85) == []


def test_header_anonymised_upstream_does_not_let_a_burned_name_through(shared_dicom, tmp_path):
    require_binary("tesseract")
    ds = pydicom.dcmread(shared_dicom / "orthanc-1.2.840.10008.1.2.4.50.dcm")  # ATL, no regions
    (frame,) = iter_frames(ds)
    ds.PixelData = corpus.jpeg_baseline(corpus.burn_in([frame], "KOVACS ILONA 1970-03-15", (360, 300)))
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "ANONYMOUS", "ANON", ""
    src = tmp_path / "in.dcm"
    ds.save_as(src, enforce_file_format=True)
    assert find_phi(ocr_frames(list(iter_frames(pydicom.dcmread(src)))), {"kovacs", "ilona"}, 85)  # positive control
    outcome = deidentify_file(src, tmp_path / "out", POLICY, KEY)
    assert outcome.ok, outcome.reason
    assert find_phi(ocr_frames(list(iter_frames(pydicom.dcmread(outcome.output)))), {"kovacs", "ilona"}, 85) == []


def test_text_inside_the_tissue_region_is_blanked(shared_dicom, tmp_path):
    ds = pydicom.dcmread(shared_dicom / "orthanc-Issue16.dcm")
    frames = corpus.burn_in(list(iter_frames(ds, [0, 1])), "Horvath Gabor", (150, 200))  # inside region 0
    ds.PixelData, ds.NumberOfFrames = corpus.jpeg_baseline(frames), 2
    src = tmp_path / "in.dcm"
    ds.save_as(src, enforce_file_format=True)
    outcome = deidentify_file(src, tmp_path / "out", POLICY, KEY)
    assert outcome.ok and outcome.method == "regions", outcome.reason
    inside = [b for b in outcome.report["pixels"]["text_boxes"] if b[0] <= 150 and b[2] >= 250 and b[1] <= 205]
    assert inside
    for frame in iter_frames(pydicom.dcmread(outcome.output)):
        assert not frame[203:214, 152:260].any()


def test_a_frame_without_text_keeps_its_image_unchanged(shared_dicom, tmp_path):
    """Speckle of a real linear-probe frame, alone on black, its region the image: nothing is blanked inside."""
    ds = pydicom.dcmread(shared_dicom / "dcm4che-YBR_422.dcm")  # Esaote, one region
    (frame,) = iter_frames(ds)
    x0, y0, x1, y1 = 200, 80, 780, 380
    speckle = np.zeros_like(frame)
    speckle[y0:y1 + 1, x0:x1 + 1] = frame[y0:y1 + 1, x0:x1 + 1]
    ds.PixelData = speckle.tobytes()
    ds.PhotometricInterpretation = "RGB"
    region = ds.SequenceOfUltrasoundRegions[0]
    region.RegionLocationMinX0, region.RegionLocationMinY0 = x0, y0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = x1, y1
    src = tmp_path / "in.dcm"
    ds.save_as(src, enforce_file_format=True)
    outcome = deidentify_file(src, tmp_path / "out", POLICY, KEY)
    assert outcome.ok and outcome.method == "regions", outcome.reason
    assert outcome.text_boxes == 0
    (after,) = iter_frames(pydicom.dcmread(outcome.output))
    assert np.array_equal(after, speckle)
