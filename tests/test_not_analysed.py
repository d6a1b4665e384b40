"""The "not analysed" SR: round trip, codes, deterministic UIDs, predecessors, dciodvfy."""

from __future__ import annotations

import subprocess
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from sonoshot.dicom_io.not_analysed import (
    NOT_ANALYSED_STATEMENT,
    NotAnalysedReason,
    NotAnalysedRef,
    NotAnalysedResult,
    build_not_analysed_report,
    not_analysed_sop_instance_uid,
    read_not_analysed,
)
from sonoshot.dicom_io.report import DISCLAIMER, PredecessorRef, read_result
from tests.util import require_binary

BUNDLE = "0123456789abcdef" * 4


@pytest.fixture(scope="module")
def originals(shared_dicom: Path) -> list[Dataset]:
    """Two instances of one study: the real single-frame JPEG file and a copy with another UID."""
    first = pydicom.dcmread(shared_dicom / "orthanc-1.2.840.10008.1.2.4.50.dcm", stop_before_pixels=True)
    second = pydicom.dcmread(shared_dicom / "orthanc-1.2.840.10008.1.2.4.50.dcm", stop_before_pixels=True)
    second.SOPInstanceUID = first.SOPInstanceUID + ".2"
    return [first, second]


def _ref(ds: Dataset, reason: NotAnalysedReason | str, detail: str = "") -> NotAnalysedRef:
    return NotAnalysedRef(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), reason, detail)


def _result(originals, *reasons, **overrides) -> NotAnalysedResult:
    fields = dict(study_instance_uid=str(originals[0].StudyInstanceUID),
                  instances=tuple(_ref(ds, r) for ds, r in zip(originals, reasons)),
                  algorithm_name="sonoshot-fewshot", algorithm_version="0.1.0", bundle_sha256=BUNDLE,
                  description="demo detector: breast, public data, not validated for this site")
    return NotAnalysedResult(**(fields | overrides))


def _round_trip(sr: Dataset) -> Dataset:
    buffer = BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(BytesIO(buffer.getvalue()))


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def test_round_trip_states_no_score_and_a_coded_reason_per_instance(originals):
    result = NotAnalysedResult(
        study_instance_uid=str(originals[0].StudyInstanceUID),
        instances=(_ref(originals[0], "pixels-unclean", "pixels: no ultrasound regions and no pixel mask"),
                   _ref(originals[1], NotAnalysedReason.OUTSIDE_SCOPE)),
        algorithm_name="sonoshot-fewshot", algorithm_version="0.1.0")
    ds = _round_trip(build_not_analysed_report(originals, result))
    assert read_not_analysed(ds) == result
    assert ds.StudyInstanceUID == originals[0].StudyInstanceUID and ds.PatientID == originals[0].PatientID
    assert ds.SeriesNumber == 9902 and ds.VerificationFlag == "UNVERIFIED"
    items = list(_walk(ds.ContentSequence))
    assert not [i for i in items if i.ValueType == "NUM"]  # no score anywhere
    coded = [(i.ConceptNameCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodeValue)
             for i in items if i.ValueType == "CODE"]
    assert ("111017", "111245") in coded  # CAD Processing and Findings Summary: no algorithm succeeded
    reasons = [c for name, c in coded if name == "not-analysed-why"]
    assert reasons == ["outside-scope", "pixels-unclean", "outside-scope"]  # the study's (a tie), per instance
    texts = [i.TextValue for i in items if i.ValueType == "TEXT"]
    assert DISCLAIMER in texts and NOT_ANALYSED_STATEMENT in texts
    assert f"{originals[0].SOPInstanceUID}: pixels: no ultrasound regions and no pixel mask" in texts
    assert f"{originals[1].SOPInstanceUID}: Outside the detector's scope" in texts
    with pytest.raises(ValueError, match='"dataset"'):
        read_result(ds)  # not a scored report


def test_study_reason_is_the_most_common(originals):
    assert _result(originals, "outside-scope", "outside-scope").reason is NotAnalysedReason.OUTSIDE_SCOPE
    assert _result(originals, "undecodable", "outside-scope").reason is NotAnalysedReason.OUTSIDE_SCOPE  # tie


def test_uids_are_deterministic_and_supersede(originals):
    result = _result(originals, "outside-scope", "undecodable")
    a, b = build_not_analysed_report(originals, result), build_not_analysed_report(originals[::-1], result)
    assert a.SOPInstanceUID == b.SOPInstanceUID == not_analysed_sop_instance_uid(result)
    other = _result(originals, "outside-scope", "proc-failed")
    assert not_analysed_sop_instance_uid(other) != a.SOPInstanceUID
    second = _round_trip(build_not_analysed_report(originals, other, PredecessorRef.from_dataset(a)))
    ref = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == a.SOPInstanceUID and second.InstanceNumber == 2
    assert second.SeriesInstanceUID == a.SeriesInstanceUID


def test_dciodvfy_reports_no_errors(originals, tmp_path):
    require_binary("dciodvfy")
    path = tmp_path / "not-analysed.dcm"
    build_not_analysed_report(originals, _result(originals, "deid-unverified", "outside-scope")).save_as(
        path, enforce_file_format=True)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    report = out.stdout + out.stderr
    assert "ComprehensiveSR" in report
    assert [line for line in report.splitlines() if line.startswith("Error")] == [], report


@pytest.mark.parametrize("kwargs, error, field", [
    (dict(reason="maybe"), ValueError, "reason"),
    (dict(reason=3), TypeError, "reason"),
    (dict(detail=None), TypeError, "detail"),
    (dict(detail="x" * 1025), ValueError, "detail"),
    (dict(sop_instance_uid="1.x"), ValueError, "sop_instance_uid"),
])
def test_ref_validation(kwargs, error, field):
    fields = dict(sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1", sop_instance_uid="1.2.3.4",
                  series_instance_uid="1.2.3", reason="undecodable")
    with pytest.raises(error, match=f'"{field}"'):
        NotAnalysedRef(**(fields | kwargs))


def test_result_validation_and_missing_originals(originals):
    with pytest.raises(ValueError, match='"instances"'):
        _result(originals, instances=())
    with pytest.raises(ValueError, match='"instances"'):
        _result(originals, instances=(_ref(originals[0], "unreadable"),) * 2)
    with pytest.raises(ValueError, match='"bundle_sha256"'):
        _result(originals, "unreadable", bundle_sha256="abc")
    with pytest.raises(ValueError, match='"originals" lacks'):
        build_not_analysed_report(originals[:1], _result(originals, "unreadable", "unreadable"))
    with pytest.raises(TypeError, match='"result"'):
        build_not_analysed_report(originals, "not analysed")
