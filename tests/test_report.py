"""The SR report: round trip, validation, deterministic UIDs, predecessors, dciodvfy."""

from __future__ import annotations

import dataclasses
import subprocess
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage

from sonoshot.dicom_io.report import (
    DISCLAIMER,
    ImageScoreRef,
    PredecessorRef,
    QuarantinedRef,
    StudyResult,
    VerdictValues,
    build_report,
    read_result,
    report_series_instance_uid,
    report_sop_instance_uid,
)
from tests.util import require_binary
from tests.util import testdata as pydicom_file

BUNDLE = "0123456789abcdef" * 4


@pytest.fixture(scope="module")
def cine(shared_dicom: Path) -> Dataset:
    """A real 34-frame JPEG ultrasound cine (Patient ID HP_EXAMPLE, no birth date)."""
    return pydicom.dcmread(shared_dicom / "orthanc-Issue16.dcm", stop_before_pixels=True)


@pytest.fixture(scope="module")
def late(cine: Dataset) -> Dataset:
    """A second instance of the same study and series, as if it arrived after the first result."""
    ds = pydicom.dcmread(BytesIO(_encode(cine)))
    ds.SOPInstanceUID = cine.SOPInstanceUID + ".2"
    return ds


def _encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _image(ds: Dataset, score: float = 0.8, frames: tuple[int, ...] = (1, 12, 23, 34)) -> ImageScoreRef:
    return ImageScoreRef(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), score, frames)


def _result(*images: ImageScoreRef, study: str, **overrides) -> StudyResult:
    fields = dict(
        study_instance_uid=study, score=max(i.score for i in images), verdict="abnormal", threshold=0.5,
        image_scores=images, quarantined=(QuarantinedRef("1.2.3.4.5", "text outside ultrasound regions"),),
        bundle_sha256=BUNDLE, backbone="efficientnet-lite0", algorithm_name="sonoshot few-shot",
        algorithm_version="0.1.0",
    )
    fields.update(overrides)
    return StudyResult(**fields)


@pytest.fixture
def result(cine: Dataset) -> StudyResult:
    return _result(_image(cine), study=str(cine.StudyInstanceUID))


def _round_trip(sr: Dataset) -> Dataset:
    return pydicom.dcmread(BytesIO(_encode(sr)))


def test_round_trip_states_the_result_in_the_original_study(cine, result):
    ds = _round_trip(build_report([cine], result))
    assert read_result(ds) == result
    assert ds.SOPClassUID == ComprehensiveSRStorage
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyDescription"):
        assert ds[keyword].value == cine[keyword].value, keyword
    assert ds.SeriesInstanceUID != cine.SeriesInstanceUID
    assert ds.Modality == "SR"
    assert (ds.VerificationFlag, ds.CompletionFlag, ds.PreliminaryFlag) == ("UNVERIFIED", "COMPLETE", "PRELIMINARY")
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == cine.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == cine.SOPInstanceUID
    assert "PredecessorDocumentsSequence" not in ds


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def test_content_codes_and_text(cine, result):
    items = list(_walk(_round_trip(build_report([cine], result)).ContentSequence))
    codes = {(i.ConceptCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodingSchemeDesignator)
             for i in items if i.ValueType == "CODE"}
    assert ("263654008", "SCT") in codes  # Abnormal
    texts = [i.TextValue for i in items if i.ValueType == "TEXT"]
    assert DISCLAIMER in texts
    assert "1.2.3.4.5: text outside ultrasound regions" in texts
    assert f"bundle_sha256={BUNDLE}" in texts and "backbone=efficientnet-lite0" in texts
    images = [i for i in items if i.ValueType == "IMAGE"]
    assert [list(i.ReferencedSOPSequence[0].ReferencedFrameNumber) for i in images] == [[1, 12, 23, 34]]


def test_normal_verdict_is_coded_normal(cine):
    result = _result(_image(cine, 0.2), study=str(cine.StudyInstanceUID), verdict=VerdictValues.NORMAL)
    items = list(_walk(build_report([cine], result).ContentSequence))
    assert any(i.ValueType == "CODE" and i.ConceptCodeSequence[0].CodeValue == "17621005" for i in items)
    assert read_result(_round_trip(build_report([cine], result))).verdict is VerdictValues.NORMAL


def test_single_frame_image_has_no_frame_numbers(shared_dicom):
    ds = pydicom.dcmread(shared_dicom / "orthanc-1.2.840.10008.1.2.4.50.dcm", stop_before_pixels=True)
    result = _result(_image(ds, 0.7, ()), study=str(ds.StudyInstanceUID), quarantined=())
    back = read_result(_round_trip(build_report([ds], result)))
    assert back == result and back.image_scores[0].frames == ()


def test_originals_are_not_modified(cine, result):
    before = _encode(cine)
    build_report([cine], result)
    assert _encode(cine) == before  # absent Type 2 attributes are filled in the SR only


def test_dciodvfy_reports_no_errors(cine, late, result, tmp_path):
    require_binary("dciodvfy")
    first = build_report([cine], result)
    update = _result(_image(cine), _image(late, 0.3, (2,)), study=str(cine.StudyInstanceUID))
    second = build_report([cine, late], update, PredecessorRef.from_dataset(first))
    for name, sr in (("first", first), ("second", second)):
        path = tmp_path / f"{name}.dcm"
        sr.save_as(path, enforce_file_format=True)
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        report = out.stdout + out.stderr
        assert "ComprehensiveSR" in report
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert errors == [], report


def test_uids_are_deterministic(cine, late, result):
    study = str(cine.StudyInstanceUID)
    a, b = build_report([cine], result), build_report([cine], result)
    assert a.SOPInstanceUID == b.SOPInstanceUID == report_sop_instance_uid(result)
    assert a.SeriesInstanceUID == b.SeriesInstanceUID == report_series_instance_uid(result)
    both = _result(_image(cine), _image(late), study=study)
    reordered = _result(_image(late), _image(cine), study=study)
    assert report_sop_instance_uid(both) == report_sop_instance_uid(reordered) != a.SOPInstanceUID
    assert report_series_instance_uid(both) == a.SeriesInstanceUID  # same study and bundle: same series
    other_bundle = dataclasses.replace(result, bundle_sha256="f" * 64)
    assert report_sop_instance_uid(other_bundle) != a.SOPInstanceUID
    assert report_series_instance_uid(other_bundle) != a.SeriesInstanceUID
    assert report_sop_instance_uid(dataclasses.replace(result, threshold=0.6)) != a.SOPInstanceUID
    assert len(a.SOPInstanceUID) <= 64 and a.SOPInstanceUID.startswith("2.25.")


def test_superseding_report_references_its_predecessor(cine, late, result):
    first = _round_trip(build_report([cine], result))
    update = _result(_image(cine), _image(late, 0.3, (2,)), study=str(cine.StudyInstanceUID))
    second = _round_trip(build_report([cine, late], update, PredecessorRef.from_dataset(first)))
    assert second.SOPInstanceUID != first.SOPInstanceUID
    assert second.InstanceNumber == first.InstanceNumber + 1
    pre = second.PredecessorDocumentsSequence[0]
    assert pre.StudyInstanceUID == first.StudyInstanceUID
    assert pre.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    ref = pre.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (first.SOPClassUID, first.SOPInstanceUID)
    assert read_result(second) == update
    with pytest.raises(ValueError, match='"predecessor"'):
        build_report([cine], result, PredecessorRef.from_dataset(first))


GOOD_IMAGE = dict(sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1", sop_instance_uid="1.2.3.4",
                  series_instance_uid="1.2.3", score=0.5, frames=())


@pytest.mark.parametrize("field, value, error", [
    ("sop_class_uid", 12, TypeError),
    ("sop_instance_uid", "", ValueError),
    ("sop_instance_uid", "1.2.x", ValueError),
    ("series_instance_uid", "1." * 40, ValueError),
    ("score", 1.5, ValueError),
    ("score", float("nan"), ValueError),
    ("score", "0.5", TypeError),
    ("score", True, TypeError),
    ("frames", (0,), ValueError),
    ("frames", (2, 2), ValueError),
    ("frames", (1.0,), TypeError),
    ("frames", "1", TypeError),
])
def test_image_score_ref_validation(field, value, error):
    with pytest.raises(error, match=f'"{field}"'):
        ImageScoreRef(**{**GOOD_IMAGE, field: value})


def test_image_score_ref_sorts_frames():
    assert ImageScoreRef(**{**GOOD_IMAGE, "frames": [3, 1]}).frames == (1, 3)


@pytest.mark.parametrize("field, value, error", [
    ("study_instance_uid", None, TypeError),
    ("score", -0.1, ValueError),
    ("threshold", 2, ValueError),
    ("verdict", "maybe", ValueError),
    ("verdict", 1, TypeError),
    ("image_scores", (), ValueError),
    ("image_scores", (GOOD_IMAGE,), TypeError),
    ("image_scores", (ImageScoreRef(**GOOD_IMAGE), ImageScoreRef(**GOOD_IMAGE)), ValueError),
    ("quarantined", (QuarantinedRef("1.2.3.4", "x"),), ValueError),
    ("quarantined", ("1.2.3.9",), TypeError),
    ("bundle_sha256", "A" * 64, ValueError),
    ("bundle_sha256", "ab", ValueError),
    ("backbone", "", ValueError),
    ("algorithm_name", "n" * 65, ValueError),
    ("algorithm_version", b"1", TypeError),
])
def test_study_result_validation(field, value, error):
    fields = dict(study_instance_uid="1.2", score=0.7, verdict="abnormal", threshold=0.5,
                  image_scores=(ImageScoreRef(**GOOD_IMAGE),), quarantined=(), bundle_sha256=BUNDLE,
                  backbone="b", algorithm_name="a", algorithm_version="1")
    StudyResult(**fields)
    with pytest.raises(error, match=f'"{field}"'):
        StudyResult(**{**fields, field: value})


@pytest.mark.parametrize("verdict, score", [("normal", 0.6), ("abnormal", 0.4)])
def test_verdict_must_agree_with_threshold(verdict, score):
    with pytest.raises(ValueError, match='"verdict"'):
        StudyResult("1.2", score, verdict, 0.5, (ImageScoreRef(**{**GOOD_IMAGE, "score": score}),), (),
                    BUNDLE, "b", "a", "1")


def test_verdict_at_threshold_may_be_either():
    for verdict in VerdictValues:
        StudyResult("1.2", 0.5, verdict, 0.5, (ImageScoreRef(**GOOD_IMAGE),), (), BUNDLE, "b", "a", "1")


@pytest.mark.parametrize("kwargs, error, field", [
    (dict(sop_instance_uid="1.2", series_instance_uid="1.3", instance_number=0), ValueError, "instance_number"),
    (dict(sop_instance_uid="1.2", series_instance_uid="1.3", instance_number="2"), TypeError, "instance_number"),
    (dict(sop_instance_uid="1.2", series_instance_uid="x"), ValueError, "series_instance_uid"),
    (dict(sop_instance_uid="1.2", series_instance_uid="1.3", sop_class_uid=""), ValueError, "sop_class_uid"),
])
def test_predecessor_ref_validation(kwargs, error, field):
    with pytest.raises(error, match=f'"{field}"'):
        PredecessorRef(**kwargs)


@pytest.mark.parametrize("kwargs, error, field", [
    (dict(sop_instance_uid="1.2", reason=""), ValueError, "reason"),
    (dict(sop_instance_uid="1.2", reason=None), TypeError, "reason"),
    (dict(sop_instance_uid="a", reason="r"), ValueError, "sop_instance_uid"),
])
def test_quarantined_ref_validation(kwargs, error, field):
    with pytest.raises(error, match=f'"{field}"'):
        QuarantinedRef(**kwargs)


def test_build_report_rejects_inconsistent_originals(cine, late, result):
    other_study = pydicom_file("examples_ybr_color.dcm")
    other = pydicom.dcmread(other_study, stop_before_pixels=True)
    study = str(cine.StudyInstanceUID)
    with pytest.raises(ValueError, match='"originals".*Study Instance UID'):
        build_report([cine, other], result)
    with pytest.raises(ValueError, match='"originals" lacks evaluated instance'):
        build_report([late], result)
    wrong_series = dataclasses.replace(_image(cine), series_instance_uid="1.2.3")
    with pytest.raises(ValueError, match='"result".*differs'):
        build_report([cine], _result(wrong_series, study=study))
    with pytest.raises(ValueError, match='"result".*Number of Frames'):
        build_report([cine], _result(_image(cine, frames=(35,)), study=study))
    with pytest.raises(TypeError, match='"originals"'):
        build_report(cine, result)
    with pytest.raises(TypeError, match='"originals"'):
        build_report([str(pydicom_file("examples_ybr_color.dcm"))], result)
    with pytest.raises(TypeError, match='"result"'):
        build_report([cine], dataclasses.asdict(result))
    with pytest.raises(TypeError, match='"predecessor"'):
        build_report([cine], result, predecessor="1.2.3")


def test_build_report_rejects_frames_on_single_frame_image(shared_dicom):
    ds = pydicom.dcmread(shared_dicom / "orthanc-1.2.840.10008.1.2.4.50.dcm", stop_before_pixels=True)
    with pytest.raises(ValueError, match="Number of Frames"):
        build_report([ds], _result(_image(ds, 0.7, (1,)), study=str(ds.StudyInstanceUID)))


def test_read_result_rejects_other_documents(cine):
    with pytest.raises(ValueError, match='"dataset"'):
        read_result(cine)
    with pytest.raises(TypeError, match='"dataset"'):
        read_result(b"DICM")
    foreign = pydicom.dcmread(pydicom_file("reportsi.dcm"))  # a Basic Text SR from pydicom
    foreign.SOPClassUID = ComprehensiveSRStorage
    with pytest.raises(ValueError, match='"dataset"'):
        read_result(foreign)
