"""The "not analysed" path in the daemon: the coded reasons, a study that fails, and the switch."""

from __future__ import annotations

import signal

import pydicom
from pynetdicom import AE
import pytest
import tomli_w

from sonoshot.daemon.reporting import deid_reason
from sonoshot.dicom_io.deid import QuarantineReason
from sonoshot.dicom_io.not_analysed import NotAnalysedReason, read_not_analysed
from tests.daemon import Daemon
from tests.peers import dcmsend, wait_for
from tests.scenarios import SMALL_US, SMALL_US_MASK, make_study


@pytest.mark.parametrize("quarantine, code", [
    (QuarantineReason.UNREADABLE, NotAnalysedReason.UNREADABLE),
    (QuarantineReason.UNSUPPORTED_TRANSFER_SYNTAX, NotAnalysedReason.UNDECODABLE),
    (QuarantineReason.UNDECODABLE, NotAnalysedReason.UNDECODABLE),
    (QuarantineReason.NO_KEEP_AREA, NotAnalysedReason.PIXELS_NOT_CLEANED),
    (QuarantineReason.TEXT_DETECTOR_UNAVAILABLE, NotAnalysedReason.NOT_VERIFIED),
    (QuarantineReason.VERIFIER_FAILED, NotAnalysedReason.NOT_VERIFIED),
    (QuarantineReason.INTERNAL_ERROR, NotAnalysedReason.PROCESSING_FAILED),
    (None, NotAnalysedReason.NOT_VERIFIED),
])
def test_every_quarantine_code_has_a_not_analysed_reason(quarantine, code):
    assert deid_reason(quarantine) is code


@pytest.mark.slow
def test_failed_study_is_reported_and_the_switch_turns_it_off(tmp_path, shared_dicom):
    daemon = Daemon(tmp_path / "sonoshot", {
        "completion": {"quiet_period_s": 3.0, "sweep_interval_s": 0.1},
        "detector": {"bundle": "demo"},
        "deid": {"pixel_masks": [SMALL_US_MASK]},
    })
    study, files = make_study(shared_dicom / SMALL_US, tmp_path / "study", count=2)
    with daemon:
        assert dcmsend(daemon.port, list(files)).returncode == 0
        # One received file is damaged on disk before the study completes: processing fails.
        (damaged,) = daemon.query("select path from instances order by id limit 1")[0]
        (daemon.spool / damaged).write_bytes(b"not a DICOM file any more")
        wait_for(lambda: daemon.study_state(study) == "failed", timeout=90, interval=0.3, what="failed")
        ((kind, reason, sr_path),) = daemon.query("select kind, reason, sr_path from results")
        assert (kind, reason) == ("not-analysed", "proc-failed")
        stated = read_not_analysed(pydicom.dcmread(daemon.spool / sr_path))
        readable = daemon.query("select sop_instance_uid from instances where path != ?", damaged)
        assert [i.sop_instance_uid for i in stated.instances] == [readable[0][0]]  # the damaged one is left out
        assert stated.instances[0].reason is NotAnalysedReason.PROCESSING_FAILED
        assert "during processing" in stated.instances[0].detail

        daemon.config["report"] = {"not_analysed": False}
        daemon.config["deid"] = {**daemon.config["deid"], "pixel_masks": []}
        daemon.config_path.write_text(tomli_w.dumps(daemon.config))
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded" in {o for (o,) in daemon.query("select outcome from events where kind = 'service'")},
                 timeout=30, what="the reload")
        # A JPEG XL study (no decoder): quarantined, and with the switch off it gets no report.
        quiet, quiet_files = make_study(shared_dicom / "dcm4che-will-jxl.dcm", tmp_path / "quiet")
        ae = AE(ae_title="MODALITY")
        ds = pydicom.dcmread(next(iter(quiet_files)))
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", daemon.port, ae_title=daemon.aet)
        assert assoc.send_c_store(ds).Status == 0
        assoc.release()
        wait_for(lambda: daemon.study_state(quiet) == "quarantined", timeout=90, interval=0.3, what="quarantined")
        assert daemon.query("select count(*) from results") == [(1,)]  # no report for the quiet one
