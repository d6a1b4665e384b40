"""End to end: Orthanc (the PACS) → sonoshot → SR back in Orthanc, with a real fitted detector."""

from __future__ import annotations

import io
import json
import signal
import subprocess
from pathlib import Path

import pydicom
import pytest
import tomli_w
from pydicom.uid import generate_uid
from pynetdicom import AE

from sonoshot.dicom_io.report import read_result
from tests.daemon import Daemon
from tests.peers import Orthanc, dcmsend, wait_for
from tests.util import require_binary

STUDY_FILE = "orthanc-Issue16.dcm"  # multi-frame JPEG Baseline ultrasound, 34 frames, 2 regions


def _pipeline(tmp_path: Path, bundle: Path | None, pacs: Orthanc, **delivery) -> Daemon:
    config = {"delivery": {"destinations": [{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1",
                                             "port": pacs.dicom_port}],
                           "sweep_interval_s": 0.2, "backoff_initial_s": 0.5, "backoff_max_s": 1.0, **delivery}}
    if bundle is not None:
        config["detector"] = {"bundle": str(bundle)}
    daemon = Daemon(tmp_path / "sonoshot", config)
    pacs.modalities["sonoshot"] = (daemon.aet, "127.0.0.1", daemon.port)
    return daemon


def _srs(pacs: Orthanc, study_uid: str) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(io.BytesIO(pacs.rest(f"/instances/{i['ID']}/file")))
            for i in pacs.instances_in_study(study_uid) if i.get("Modality") == "SR"]


def _copy_with_new_instance(src: Path, dst: Path) -> pydicom.Dataset:
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(dst)
    return ds


def test_orthanc_forwards_and_receives_the_sr(tmp_path, shared_dicom, demo_bundle):
    require_binary("dciodvfy")
    pacs = Orthanc(tmp_path / "orthanc")
    daemon = _pipeline(tmp_path, demo_bundle, pacs)
    with pacs, daemon:
        stored = pacs.upload(shared_dicom / STUDY_FILE)
        study_uid = pacs.rest(f"/studies/{stored['ParentStudy']}")["MainDicomTags"]["StudyInstanceUID"]
        pacs.rest("/modalities/sonoshot/store", "POST", {"Resources": [stored["ParentStudy"]], "Synchronous": True})
        (sr,) = wait_for(lambda: _srs(pacs, study_uid), timeout=120, interval=0.5, what="the SR in Orthanc")
        assert sr.StudyInstanceUID == study_uid
        original = pydicom.dcmread(shared_dicom / STUDY_FILE, stop_before_pixels=True)
        assert sr.PatientID == original.PatientID and sr.PatientName == original.PatientName
        assert sr.VerificationFlag == "UNVERIFIED"
        result = read_result(sr)
        ((score, verdict, threshold, bundle_hash),) = daemon.query(
            "select score, verdict, threshold, bundle_sha256 from results")
        assert result.score == pytest.approx(score, abs=1e-6)
        assert result.verdict.value == verdict and result.threshold == pytest.approx(threshold)
        assert result.bundle_sha256 == bundle_hash
        (image,) = result.image_scores
        assert image.sop_instance_uid == original.SOPInstanceUID and image.frames
        wait_for(lambda: daemon.study_state(study_uid) == "delivered", timeout=30, what="delivered state")
        # Its one instance was de-identified during the quiet period (sonoshot.daemon.ahead).
        assert f"study {study_uid}: 1 of 1 instance(s) were de-identified ahead" in daemon.log()
        ((timings,),) = daemon.query("select timings from results")
        timings = json.loads(timings)  # the work done ahead is recorded beside the stage's own time
        assert timings["deidentify-ahead"] > 0 and timings["deidentify"] > 0
        # The database never saw the patient's identity.
        dump = _dump(daemon)
        for phi in (str(original.PatientName), str(original.PatientID)):
            if phi:
                assert phi not in dump
        sr_file = tmp_path / "sr.dcm"
        sr.save_as(sr_file)
        check = subprocess.run(["dciodvfy", str(sr_file)], capture_output=True, text=True)
        errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
        assert errors == []


def _dump(daemon: Daemon) -> str:
    tables = [t for (t,) in daemon.query("select name from sqlite_master where type = 'table'")]
    return "\n".join(repr(row) for t in tables for row in daemon.query(f"select * from {t}"))


def test_sr_waits_for_orthanc_and_is_delivered_once(tmp_path, shared_dicom, demo_bundle):
    pacs = Orthanc(tmp_path / "orthanc")
    daemon = _pipeline(tmp_path, demo_bundle, pacs)
    with daemon:
        src = tmp_path / "study.dcm"
        ds = _copy_with_new_instance(shared_dicom / STUDY_FILE, src)
        assert dcmsend(daemon.port, [src]).returncode == 0
        wait_for(lambda: daemon.query("select attempts from deliveries where attempts >= 2"), timeout=120,
                 interval=0.3, what="failed delivery attempts while the PACS is down")
        assert daemon.study_state(ds.StudyInstanceUID) == "reported"
        with pacs:
            wait_for(lambda: daemon.study_state(ds.StudyInstanceUID) == "delivered", timeout=60, what="delivery")
            assert len(_srs(pacs, ds.StudyInstanceUID)) == 1
            assert daemon.query("select state from deliveries") == [("delivered",)]
            daemon.stop()  # a restart must not send it again
            daemon.start()
            assert len(_srs(pacs, ds.StudyInstanceUID)) == 1


def test_late_instance_gives_a_superseding_sr(tmp_path, shared_dicom, demo_bundle):
    pacs = Orthanc(tmp_path / "orthanc")
    daemon = _pipeline(tmp_path, demo_bundle, pacs)
    with pacs, daemon:
        first, late = tmp_path / "first.dcm", tmp_path / "late.dcm"
        ds = _copy_with_new_instance(shared_dicom / STUDY_FILE, first)
        assert dcmsend(daemon.port, [first]).returncode == 0
        (sr1,) = wait_for(lambda: _srs(pacs, ds.StudyInstanceUID), timeout=120, interval=0.5, what="first SR")
        late_ds = _copy_with_new_instance(first, late)
        assert dcmsend(daemon.port, [late]).returncode == 0
        srs = wait_for(lambda: (lambda s: s if len(s) == 2 else None)(_srs(pacs, ds.StudyInstanceUID)),
                       timeout=120, interval=0.5, what="the superseding SR")
        (sr2,) = [s for s in srs if s.SOPInstanceUID != sr1.SOPInstanceUID]
        assert sr2.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
            .ReferencedSOPInstanceUID == sr1.SOPInstanceUID
        assert {i.sop_instance_uid for i in read_result(sr2).image_scores} == {ds.SOPInstanceUID,
                                                                             late_ds.SOPInstanceUID}
        assert daemon.query("select count(*), max(generation) from results") == [(2, 2)]


def test_studies_wait_for_a_detector_then_run_after_reload(tmp_path, shared_dicom, demo_bundle):
    pacs = Orthanc(tmp_path / "orthanc")
    daemon = _pipeline(tmp_path, None, pacs)
    with pacs, daemon:
        src = tmp_path / "held.dcm"
        ds = _copy_with_new_instance(shared_dicom / STUDY_FILE, src)
        assert dcmsend(daemon.port, [src]).returncode == 0
        wait_for(lambda: daemon.study_state(ds.StudyInstanceUID) == "awaiting-detector", timeout=30,
                 what="awaiting-detector")
        daemon.config["detector"] = {"bundle": str(demo_bundle)}
        daemon.config_path.write_text(tomli_w.dumps(daemon.config))
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: daemon.study_state(ds.StudyInstanceUID) == "delivered", timeout=120, interval=0.5,
                 what="the held study to be processed after reload")
        assert len(_srs(pacs, ds.StudyInstanceUID)) == 1


def test_undecodable_study_is_quarantined_not_reported(tmp_path, shared_dicom, demo_bundle):
    pacs = Orthanc(tmp_path / "orthanc")
    daemon = _pipeline(tmp_path, demo_bundle, pacs)
    with daemon:
        ds = pydicom.dcmread(shared_dicom / "dcm4che-will-jxl.dcm", force=True)
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ds.SOPClassUID, "1.2.840.10008.1.2.4.111")
        assoc = ae.associate("127.0.0.1", daemon.port, ae_title=daemon.aet)
        assert assoc.send_c_store(ds).Status == 0
        assoc.release()
        wait_for(lambda: daemon.study_state(ds.StudyInstanceUID) == "quarantined", timeout=60, what="quarantine")
        ((status, reason),) = daemon.query("select deid_status, deid_reason from instances")
        assert status == "quarantined" and "JPEG XL" in reason
        report = json.loads((daemon.workdir / "var" / "quarantine" / ds.StudyInstanceUID
                             / f"{ds.SOPInstanceUID}.json").read_text())
        assert report["ok"] is False and "JPEG XL" in report["quarantine_reason"]
        # Not reported as scored: the only result is the "not analysed" SR, waiting for the PACS.
        assert daemon.query("select kind, reason, score from results") == [("not-analysed", "undecodable", None)]
