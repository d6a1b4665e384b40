"""Results a radiologist can see, in a real Orthanc, with the built-in demo detector: a breast
cine comes back with an SR that outlines the anomalous area of each flagged frame and a key
image; an echo outside the detector's scope, and a study that cannot be de-identified, come back
with a "not analysed" SR; a reload that cleans the latter supersedes it."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pydicom
import pytest
import tomli_w
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from sonoshot.dicom_io.not_analysed import read_not_analysed
from sonoshot.dicom_io.report import read_result
from tests.breast import PATIENT, breast_cine
from tests.peers import Orthanc, dcmsend, wait_for
from tests.scenarios import SMALL_US, SMALL_US_MASK, demo_pipeline, documents, http_get, make_study
from tests.util import require_binary

DEMO = "demo detector: breast, public data, not validated for this site"

pytestmark = pytest.mark.slow


def dciodvfy_errors(ds: pydicom.Dataset, path: Path) -> list[str]:
    ds.save_as(path)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def _fresh_copy(src: Path, dst: Path) -> pydicom.Dataset:
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(dst)
    return ds


def test_breast_cine_gets_regions_and_a_key_image_and_an_echo_is_not_analysed(tmp_path, busi, shared_dicom):
    require_binary("dciodvfy")
    pacs = Orthanc(tmp_path / "orthanc")
    daemon = demo_pipeline(tmp_path, pacs)
    cine = breast_cine(busi, tmp_path / "cine.dcm")
    echo = _fresh_copy(shared_dicom / "orthanc-Issue16.dcm", tmp_path / "echo.dcm")  # ECG trace: a heart study
    with pacs, daemon:
        studies = [pacs.upload(tmp_path / name)["ParentStudy"] for name in ("cine.dcm", "echo.dcm")]
        pacs.rest("/modalities/sonoshot/store", "POST", {"Resources": studies, "Synchronous": True})
        sent = wait_for(lambda: documents(pacs, cine.StudyInstanceUID, 2), timeout=300, interval=1,
                        what="the SR and the key image in Orthanc")
        (sr,) = [d for d in sent if d.SOPClassUID == ComprehensiveSRStorage]
        (key,) = [d for d in sent if d.SOPClassUID == SecondaryCaptureImageStorage]
        result = read_result(sr)
        assert result.description == DEMO and result.verdict.value == "abnormal"
        (image,) = result.image_scores
        assert image.sop_instance_uid == cine.SOPInstanceUID and image.frames == (1, 2, 3)
        assert image.regions, "no region on a flagged frame"
        for region in image.regions:
            assert region.frame in image.frames and region.score >= result.threshold
        assert sr.PatientID == cine.PatientID and key.PatientID == cine.PatientID
        assert key.StudyInstanceUID == cine.StudyInstanceUID and key.SeriesInstanceUID != sr.SeriesInstanceUID
        assert (key.BurnedInAnnotation, key.PhotometricInterpretation, key.SamplesPerPixel) == ("YES", "RGB", 3)
        source = key.SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == cine.SOPInstanceUID
        assert source.ReferencedFrameNumber in image.frames
        for name, ds in (("sr", sr), ("key", key)):
            assert dciodvfy_errors(ds, tmp_path / f"{name}.dcm") == [], name

        (not_analysed,) = wait_for(lambda: documents(pacs, echo.StudyInstanceUID, 1), timeout=120, interval=1,
                                   what="the not-analysed SR of the echo")
        stated = read_not_analysed(not_analysed)
        assert [i.reason.value for i in stated.instances] == ["outside-scope"]
        assert "HEART" in stated.instances[0].detail and stated.description == DEMO
        assert dciodvfy_errors(not_analysed, tmp_path / "not-analysed.dcm") == []

        wait_for(lambda: daemon.study_state(cine.StudyInstanceUID) == "delivered", timeout=30, what="delivered")
        assert daemon.study_state(echo.StudyInstanceUID) == "out-of-scope"
        rows = dict(daemon.query("select kind, key_image_sop_instance_uid from results"))
        assert rows == {"scored": key.SOPInstanceUID, "not-analysed": None}
        wait_for(lambda: daemon.query("select count(*) from deliveries where state = 'delivered'") == [(2,)],
                 timeout=30, what="both deliveries recorded")
        status, body = http_get(daemon, "/metrics")
        metrics = body.decode()
        assert status == 200
        assert 'sonoshot_studies{state="out-of-scope"} 1.0' in metrics
        assert 'sonoshot_not_analysed_results{reason="outside-scope"} 1.0' in metrics
        log = daemon.log()
        assert DEMO in log  # the start-up log says what the detector is
        assert PATIENT[0] not in log and PATIENT[1] not in log  # highdicom's person-name warning stays quiet


def test_quarantined_study_gets_a_not_analysed_sr_that_a_reload_supersedes(tmp_path, shared_dicom):
    require_binary("dciodvfy")
    pacs = Orthanc(tmp_path / "orthanc")
    # SMALL_US has no ultrasound regions, and the mask configured for its device is wrong (its box
    # lies outside the 640 x 480 image): the instance cannot be cleaned, so it is quarantined.
    wrong_mask = {**SMALL_US_MASK, "keep": [[600, 400, 700, 500]]}
    daemon = demo_pipeline(tmp_path, pacs, deid={"pixel_masks": [wrong_mask]})
    study, files = make_study(shared_dicom / SMALL_US, tmp_path / "study")
    with pacs, daemon:
        assert dcmsend(daemon.port, list(files)).returncode == 0
        (first,) = wait_for(lambda: documents(pacs, study, 1), timeout=120, interval=0.5,
                            what="the not-analysed SR")
        stated = read_not_analysed(first)
        assert [(i.sop_instance_uid, i.reason.value) for i in stated.instances] == \
            [(next(iter(files.values())), "pixels-unclean")]
        assert dciodvfy_errors(first, tmp_path / "first.dcm") == []
        assert daemon.study_state(study) == "quarantined"

        daemon.config["deid"]["pixel_masks"] = [SMALL_US_MASK]  # the mask corrected
        daemon.config_path.write_text(tomli_w.dumps(daemon.config))
        daemon.process.send_signal(signal.SIGHUP)
        sent = wait_for(lambda: documents(pacs, study, 3), timeout=180, interval=0.5,
                        what="the superseding SR and its key image")
        (second,) = [d for d in sent if d.Modality == "SR" and d.SOPInstanceUID != first.SOPInstanceUID]
        pre = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        assert pre.ReferencedSOPInstanceUID == first.SOPInstanceUID
        assert second.InstanceNumber == first.InstanceNumber + 1
        assert read_result(second).image_scores[0].sop_instance_uid == next(iter(files.values()))
        assert dciodvfy_errors(second, tmp_path / "second.dcm") == []
        wait_for(lambda: daemon.study_state(study) == "delivered", timeout=30, what="delivered")
        assert [k for (k,) in daemon.query("select kind from results order by id")] == ["not-analysed", "scored"]
