"""Reliability under faults, with real processes: ``kill -9`` at random points, a PACS that refuses
or is unreachable, the disk at its watermark, the database locked by another process.

The kill trials share one daemon folder and one Orthanc: each trial sends a small study with
DCMTK ``storescu`` and kills the daemon (SIGKILL), then restarts it on the same folders. One trial
in four kills mid-association (after a seeded random number of its 40 instances are indexed); the
others after a seeded random delay drawn from the window that covers the quiet period,
processing and delivery. Earlier trials' studies are still in flight when later kills land, so kills hit
every stage. At the end every acknowledged instance must be in the database, every study
processed, and every result delivered exactly once (one SR per study in Orthanc, one
``delivered`` outbox row per result). ``SONOSHOT_FAULT_SEED`` replays a run.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time


from tests.daemon import Daemon
from tests.peers import DCMTK_ENV, Orthanc, wait_for
from tests.scenarios import SMALL_US, acknowledged, http_get, make_study, orthanc_srs, pipeline, storescu_args
from tests.util import free_port, require_binary

SEED = int(os.environ.get("SONOSHOT_FAULT_SEED", "20261127"))
TRIALS = 20
KILL_WINDOW_S = (0.5, 3.2)  # after storescu starts: quiet period (0.5 s), processing, delivery
RECEIVE_COUNT, RECEIVE_KILL_AFTER = 40, (1, 20)  # kill once 1-20 of 40 instances are indexed


# --- kill -9 at random points -----------------------------------------------------------------

def test_kill_9_at_random_points_loses_nothing_and_delivers_once(tmp_path, shared_dicom, demo_bundle):
    require_binary("storescu")
    rng = random.Random(SEED)
    pacs = Orthanc(tmp_path / "orthanc")
    daemon = pipeline(tmp_path / "sonoshot", demo_bundle,
                      [{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}])
    acked: dict[str, str] = {}  # SOP Instance UID -> Study Instance UID, acknowledged with Success
    sent_studies: set[str] = set()
    delays: list[float] = []
    kills = 0
    with pacs:
        daemon.start()
        try:
            for trial in range(TRIALS):
                # One trial in four kills while storescu is still sending (a longer study, an early
                # kill); the others kill later: quiet period, processing, delivery (of this study or of
                # the earlier ones recovery requeued).
                receive = trial % 4 == 0
                study, files = make_study(shared_dicom / SMALL_US, tmp_path / f"trial{trial}",
                                          count=RECEIVE_COUNT if receive else rng.choice((1, 1, 2, 3)))
                sent_studies.add(study)
                sender = subprocess.Popen(storescu_args(daemon.port, files), env=DCMTK_ENV, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                if receive:  # mid-association, whatever the machine's speed: count rows, then kill
                    rows = rng.randint(*RECEIVE_KILL_AFTER)
                    wait_for(lambda: daemon.query("select count(*) from instances i join studies s on "
                                                  "s.id = i.study_id where s.study_instance_uid = ?",
                                                  study)[0][0] >= rows, timeout=60, interval=0.005,
                             what=f"{rows} instances of the trial study")
                else:
                    delay = rng.uniform(*KILL_WINDOW_S)
                    delays.append(delay)
                    time.sleep(delay)
                daemon.kill()
                kills += 1
                output, _ = sender.communicate(timeout=60)
                for path, response in acknowledged(output).items():
                    if response == "Success":
                        acked[files[path]] = study
                daemon.start()
            # Everything acknowledged is indexed, and every study reaches the PACS.
            stored = dict(daemon.query("select i.sop_instance_uid, s.study_instance_uid from instances i "
                                       "join studies s on s.id = i.study_id"))
            assert set(acked) <= set(stored), f"acknowledged but lost: {set(acked) - set(stored)}"
            assert all(stored[sop] == study for sop, study in acked.items())
            studies = {s for (s,) in daemon.query("select study_instance_uid from studies")}
            assert set(acked.values()) <= studies <= sent_studies

            def settled():
                rows = daemon.query("select state from studies")
                return rows and all(state == "delivered" for (state,) in rows)
            try:
                wait_for(settled, timeout=240, interval=0.3, what="every study to be delivered")
            except TimeoutError:
                raise AssertionError(f"studies not delivered: {daemon.query('select study_instance_uid, state, detail from studies')}"
                                     f"\n{daemon.log()[-4000:]}")
            for (spool_path,) in daemon.query("select path from instances"):
                assert (daemon.spool / spool_path).is_file()
            results = daemon.query("select r.id, s.study_instance_uid, r.sr_sop_instance_uid from results r "
                                   "join studies s on s.id = r.study_id")
            by_study: dict[str, list[str]] = {}
            for _, study, sr_uid in results:
                by_study.setdefault(study, []).append(sr_uid)
            assert set(by_study) == studies
            assert all(len(uids) == 1 for uids in by_study.values()), f"more than one result: {by_study}"
            deliveries = daemon.query("select result_id, state from deliveries")
            assert sorted(deliveries) == sorted((rid, "delivered") for rid, _, _ in results)
            for study, (sr_uid,) in by_study.items():
                assert orthanc_srs(pacs, study) == [sr_uid], f"study {study}: not exactly one SR in the PACS"
            # Some kills landed during an association (recovery marks it interrupted).
            assert daemon.query("select count(*) from associations where outcome = 'interrupted'")[0][0] >= 1
            # A kill -9 leaves no traceback behind, and recovery must raise none.
            assert "Traceback" not in daemon.log(), daemon.log()[-4000:]
        finally:
            daemon.kill()
    assert kills >= 20 and max(delays) > 2.5


# --- a PACS that refuses, one that is busy, one that is unreachable ---------------------------

class ScriptedSCP:
    """A pynetdicom storage SCP answering C-STORE with scripted statuses (the last one repeats)."""

    def __init__(self, statuses: list[int], aet: str, port: int | None = None) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification
        self.statuses, self.aet, self.port = list(statuses), aet, port or free_port()
        self.received: list[str] = []
        self.lock = threading.Lock()
        ae = AE(ae_title=aet)
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax)
        self._ae, self._evt = ae, evt
        self.server = None

    def _store(self, event) -> int:
        with self.lock:
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            self.received.append(str(event.request.AffectedSOPInstanceUID))
            return status

    def __enter__(self) -> "ScriptedSCP":
        self.server = self._ae.start_server(("127.0.0.1", self.port), block=False,
                                            evt_handlers=[(self._evt.EVT_C_STORE, self._store)])
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


def test_refusing_busy_and_unreachable_pacs(tmp_path, shared_dicom, demo_bundle):
    require_binary("storescu")
    down_port = free_port()  # nothing listens here
    # Each attempt stores the SR and its key image: two C-STOREs, two scripted statuses.
    with ScriptedSCP([0xA700] * 4 + [0x0000], "BUSYPACS") as busy, ScriptedSCP([0xC000], "REFUSER") as refuser:
        daemon = pipeline(tmp_path / "sonoshot", demo_bundle, [
            {"name": "busy", "ae_title": busy.aet, "host": "127.0.0.1", "port": busy.port},
            {"name": "refusing", "ae_title": refuser.aet, "host": "127.0.0.1", "port": refuser.port},
            {"name": "down", "ae_title": "DOWNPACS", "host": "127.0.0.1", "port": down_port},
        ], delivery={"max_attempts": 3})
        with daemon:
            study, files = make_study(shared_dicom / SMALL_US, tmp_path / "study")
            result = subprocess.run(storescu_args(daemon.port, files), env=DCMTK_ENV, capture_output=True,
                                    text=True, timeout=60)
            assert result.returncode == 0, result.stdout + result.stderr
            wait_for(lambda: daemon.study_state(study) == "dead-letter", timeout=90, interval=0.3,
                     what="the study to be dead-lettered")
            rows = {d: (state, attempts) for d, state, attempts in
                    daemon.query("select destination, state, attempts from deliveries")}
            assert rows == {"busy": ("delivered", 3),  # out of resources (transient) twice, then stored
                            "refusing": ("dead-letter", 1),  # 0xC000 is permanent: no retry
                            "down": ("dead-letter", 3)}  # unreachable: retried up to max_attempts
            ((sr_uid, key_uid),) = daemon.query("select sr_sop_instance_uid, key_image_sop_instance_uid from results")
            assert busy.received == [sr_uid, key_uid] * 3 and refuser.received == [sr_uid, key_uid]
            assert http_get(daemon, "/healthz")[0] == 200  # a bad PACS does not make the node unhealthy
            status, metrics = http_get(daemon, "/metrics")
            assert status == 200 and b"sonoshot" in metrics
            # The admin's way out of dead-letter, once the PACS is back.
            with ScriptedSCP([0x0000], "DOWNPACS", port=down_port) as revived:
                resend = subprocess.run([sys.executable, "-m", "sonoshot", "--config", str(daemon.config_path),
                                         "resend", "--dead-letter"], timeout=60, capture_output=True, text=True)
                assert resend.returncode == 0 and "2 deliveries queued again" in resend.stdout, resend.stderr
                wait_for(lambda: sr_uid in revived.received, timeout=30, what="the resent SR")
                wait_for(lambda: daemon.query("select state from deliveries where destination = 'down'")
                         == [("delivered",)], timeout=30, what="the resent delivery to be recorded")


# --- disk at the watermark ---------------------------------------------------------------------

def test_disk_below_watermark_refuses_with_a700_and_stays_up(tmp_path, shared_dicom):
    require_binary("storescu")
    daemon = Daemon(tmp_path / "sonoshot", {"storage": {"min_free_mb": 10**9}})
    with daemon:
        _, files = make_study(shared_dicom / SMALL_US, tmp_path / "study", count=2)
        for path in files:  # storescu stops at the first refusal: one call per file
            result = subprocess.run(storescu_args(daemon.port, [path]), env=DCMTK_ENV, capture_output=True,
                                    text=True, timeout=60)
            responses = acknowledged(result.stdout + result.stderr)
            assert responses == {path: "Refused: OutOfResources"}, result.stdout + result.stderr
        assert daemon.query("select count(*) from instances") == [(0,)]
        assert not any(p.is_file() for p in daemon.spool.rglob("*.dcm"))
        status, body = http_get(daemon, "/healthz")
        health = json.loads(body)
        assert status == 503 and "disk" in health["failing"], health
        assert daemon.process.poll() is None
        assert [o for (o,) in daemon.query("select outcome from events where kind = 'instance'")] \
            == ["status-0xA700"] * 2


# --- database locked by another process --------------------------------------------------------

def test_database_locked_loses_no_acknowledged_instance(tmp_path, shared_dicom):
    require_binary("storescu")
    daemon = Daemon(tmp_path / "sonoshot")
    with daemon:
        study, files = make_study(shared_dicom / SMALL_US, tmp_path / "study", count=6)
        holder = sqlite3.connect(daemon.db_path, timeout=5, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            sender = subprocess.Popen(storescu_args(daemon.port, files), env=DCMTK_ENV, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            time.sleep(4.0)  # the lock outlives several C-STOREs; the SCP must wait or refuse
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        output, _ = sender.communicate(timeout=90)
        responses = acknowledged(output)
        assert len(responses) == len(files), output
        ok = {files[p] for p, r in responses.items() if r == "Success"}
        stored = {sop for (sop,) in daemon.query("select sop_instance_uid from instances")}
        assert ok <= stored, f"acknowledged while the database was locked, then lost: {ok - stored}"
        for (path,) in daemon.query("select path from instances"):
            assert (daemon.spool / path).is_file()
        assert daemon.process.poll() is None
        # The sender can resend what was refused; everything ends up stored once.
        refused = [p for p, r in responses.items() if r != "Success"]
        if refused:
            again = subprocess.run(storescu_args(daemon.port, refused), env=DCMTK_ENV, capture_output=True,
                                   text=True, timeout=60)
            assert again.returncode == 0, again.stdout + again.stderr
        assert {sop for (sop,) in daemon.query("select sop_instance_uid from instances")} == set(files.values())
        assert daemon.query("select instance_count from studies where study_instance_uid = ?", study) == [(6,)]
        assert "Traceback" not in daemon.log(), daemon.log()[-4000:]
