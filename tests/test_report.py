"""The SR report: round trip, validation, deterministic UIDs, predecessors, dciodvfy."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
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
    RegionRef,
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


SQUARE = ((100.5, 50.5), (160.5, 50.5), (160.5, 120.5), (100.5, 120.5), (100.5, 50.5))
TRIANGLE = ((300.5, 200.5), (420.5, 210.5), (350.5, 300.5), (300.5, 200.5))


def _image(ds: Dataset, score: float = 0.8, frames: tuple[int, ...] = (1, 12, 23, 34),
           regions: tuple[RegionRef, ...] = ()) -> ImageScoreRef:
    return ImageScoreRef(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), score, frames,
                         regions)


def _flagged(ds: Dataset) -> ImageScoreRef:
    """The cine with two anomalous areas on frame 12 and one on frame 23."""
    return _image(ds, regions=(RegionRef(12, 0.8, SQUARE), RegionRef(12, 0.8, TRIANGLE),
                               RegionRef(23, 0.7, SQUARE)))


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


def test_dciodvfy_reports_no_errors(cine, late, tmp_path):
    require_binary("dciodvfy")
    result = _result(_flagged(cine), study=str(cine.StudyInstanceUID), description="demo detector: breast")
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
    with pytest.raises(ValueError, match='"originals" lacks referenced instance'):
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


def test_regions_round_trip_as_tid_1410_polylines(cine):
    result = _result(_flagged(cine), study=str(cine.StudyInstanceUID), description="demo detector: breast")
    ds = _round_trip(build_report([cine], result))
    back = read_result(ds)
    assert back == result and len(back.image_scores[0].regions) == 3
    assert back.image_scores[0].regions[1].points == TRIANGLE
    (measurements,) = [i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"]
    groups = measurements.ContentSequence
    regions = [g for g in groups if g.ContentTemplateSequence[0].TemplateIdentifier == "1410"]
    assert len(regions) == 3
    (scoord,) = [i for i in regions[0].ContentSequence if i.ValueType == "SCOORD"]
    assert scoord.ConceptNameCodeSequence[0].CodeValue == "111030" and scoord.GraphicType == "POLYLINE"
    assert list(scoord.GraphicData) == [v for point in SQUARE for v in point]
    (image,) = scoord.ContentSequence
    assert image.RelationshipType == "SELECTED FROM" and image.ValueType == "IMAGE"
    assert (image.ConceptNameCodeSequence[0].CodeValue, image.ConceptNameCodeSequence[0].CodingSchemeDesignator) \
        == ("111040", "DCM")
    assert image.ReferencedSOPSequence[0].ReferencedFrameNumber == 12
    texts = [i.TextValue for i in _walk(ds.ContentSequence) if i.ValueType == "TEXT"]
    assert "description=demo detector: breast" in texts and "demo detector: breast" in texts


def test_regions_meet_what_orthanc_stone_reads(cine):
    """The conditions of Orthanc Stone's TID 1500 reader (OrthancStone/Sources/Toolbox/
    DicomStructuredReport.cpp) for drawing a region, checked on our document: every measurement
    group names its template; each evidence instance is listed once; a TID 1410 group's SCOORD
    (111030, DCM) POLYLINE is SELECTED FROM one IMAGE named (111040, DCM) that is in the evidence,
    with its frame number."""
    result = _result(_flagged(cine), study=str(cine.StudyInstanceUID))
    ds = _round_trip(build_report([cine], result))
    assert (ds.Modality, ds.SOPClassUID, ds.ValueType) == ("SR", ComprehensiveSRStorage, "CONTAINER")
    assert ds.ConceptNameCodeSequence[0].CodeValue == "126000"
    assert ds.ContentTemplateSequence[0].MappingResource == "DCMR"
    evidence = [ref.ReferencedSOPInstanceUID for study in ds.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence]
    assert len(evidence) == len(set(evidence))
    (measurements,) = [i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"]
    drawn = []
    for group in measurements.ContentSequence:
        assert group.ConceptNameCodeSequence[0].CodeValue == "125007"
        assert group.ContentTemplateSequence[0].MappingResource == "DCMR"  # Stone throws without it
        if group.ContentTemplateSequence[0].TemplateIdentifier != "1410":
            continue
        for item in group.ContentSequence:
            if item.ValueType == "SCOORD" and item.ConceptNameCodeSequence[0].CodeValue == "111030":
                (image,) = item.ContentSequence
                code = image.ConceptNameCodeSequence[0]
                if (image.RelationshipType, image.ValueType, code.CodingSchemeDesignator, code.CodeValue) \
                        == ("SELECTED FROM", "IMAGE", "DCM", "111040"):
                    (ref,) = image.ReferencedSOPSequence
                    assert ref.ReferencedSOPInstanceUID in evidence
                    drawn.append((item.GraphicType, int(ref.ReferencedFrameNumber)))
    assert drawn == [("POLYLINE", 12), ("POLYLINE", 12), ("POLYLINE", 23)]


@pytest.mark.parametrize("kwargs, error, field", [
    (dict(frame=0), ValueError, "frame"),
    (dict(frame=1.0), TypeError, "frame"),
    (dict(score=1.2), ValueError, "score"),
    (dict(points=SQUARE[:-1]), ValueError, "points"),
    (dict(points=((1.0, 1.0), (2.0, 2.0), (1.0, 1.0), (1.0, 1.0))), ValueError, "points"),
    (dict(points=((1.0, -1.0), (2.0, 2.0), (3.0, 1.0), (1.0, -1.0))), ValueError, "points"),
    (dict(points=((1.0, 2.0, 3.0),) * 4), ValueError, "points"),
    (dict(points="abc"), TypeError, "points"),
])
def test_region_ref_validation(kwargs, error, field):
    with pytest.raises(error, match=f'"{field}"'):
        RegionRef(**{**dict(frame=2, score=0.5, points=SQUARE), **kwargs})


def test_regions_must_be_on_scored_frames_inside_the_image(cine, shared_dicom):
    with pytest.raises(ValueError, match='"regions"'):
        _image(cine, regions=(RegionRef(2, 0.8, SQUARE),))
    with pytest.raises(ValueError, match='"regions"'):
        _image(cine, frames=(), regions=(RegionRef(1, 0.8, SQUARE),))
    single = pydicom.dcmread(shared_dicom / "orthanc-1.2.840.10008.1.2.4.50.dcm", stop_before_pixels=True)
    with pytest.raises(ValueError, match='"regions"'):
        _image(single, frames=(), regions=(RegionRef(1, 0.8, SQUARE),))
    outside = ((470.5, 400.5), (490.5, 400.5), (480.5, 420.5), (470.5, 400.5))  # the cine is 480 columns
    with pytest.raises(ValueError, match="outside"):
        build_report([cine], _result(_image(cine, regions=(RegionRef(1, 0.8, outside),)),
                                     study=str(cine.StudyInstanceUID)))
    ok = _result(_image(single, 0.7, (), (RegionRef(None, 0.7, SQUARE),)), study=str(single.StudyInstanceUID))
    (image,) = read_result(_round_trip(build_report([single], ok))).image_scores
    assert image.regions[0].frame is None


def test_standard_tables_are_read_at_start_up_not_in_the_first_report() -> None:
    """In a fresh interpreter: highdicom's tables of the standard are not read until a report
    names a region, and load_standard_tables() reads them (the daemon calls it at start)."""
    code = ("from highdicom import _standard_utils as standard\n"
            "from sonoshot.dicom_io.report import load_standard_tables\n"
            "print(standard.get_module_attribute_map.cache_info().currsize)\n"
            "load_standard_tables()\n"
            "print(standard.get_module_attribute_map.cache_info().currsize)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120).stdout.split()
    assert out == ["0", "1"]
