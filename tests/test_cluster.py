"""Cluster mode end to end, with every failure the issue names injected: two receivers, two workers
and a deliverer as separate processes on a real PostgreSQL 15, a real S3 store (OpenStack Swift),
two real Orthanc PACS and DCMTK senders, all on 127.0.0.1.

The processes are started once for the module and the tests run in order, each leaving the
cluster whole again. What each asserts is counted where it happened: SRs by SOP Instance UID in
Orthanc, instances and results in the database, objects in the buckets.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import text

from tests.cluster import Cluster, srs_in
from tests.peers import DCMTK_ENV, Orthanc, wait_for
from tests.postgres import PostgresServer
from tests.scenarios import SMALL_US, acknowledged, make_study, storescu_args
from tests.swift import swift_server  # noqa: F401  (the session-scoped server fixture, by name below)
from tests.util import require_binary

pytestmark = [pytest.mark.slow, pytest.mark.peers, pytest.mark.timeout(900)]

CINE = "orthanc-Issue16.dcm"  # 34 JPEG frames: de-identification takes seconds, long enough to interrupt
WORKERS = ["w1", "w2"]


@pytest.fixture(scope="module")
def site(request, tmp_path_factory, shared_dicom, demo_bundle):
    require_binary("storescu", "Orthanc")
    swift = request.getfixturevalue("swift_server")
    root = tmp_path_factory.mktemp("cluster")
    pg = PostgresServer(Path(tempfile.mkdtemp(prefix="sonoshot-pg-")), max_connections=200)
    pacs = {"pacs": Orthanc(root / "pacs", aet="PACS"), "pacs2": Orthanc(root / "pacs2", aet="PACS2")}
    cluster = None
    try:
        pg.start()
        for orthanc in pacs.values():
            orthanc.start()
        cluster = Cluster(root, pg.url, swift, demo_bundle, pacs)
        for name, role in (("rx1", "receiver"), ("rx2", "receiver"), ("w1", "worker"), ("w2", "worker"),
                           ("dl", "deliverer")):
            cluster.add(name, role)
        cluster.start()
        yield Site(cluster, pg, pacs, swift, shared_dicom, root)
    finally:
        if cluster is not None:
            cluster.stop()
        for orthanc in pacs.values():
            orthanc.stop()
        pg.stop()
        shutil.rmtree(pg.root, ignore_errors=True)


class Site:
    def __init__(self, cluster: Cluster, pg: PostgresServer, pacs: dict[str, Orthanc], swift, shared_dicom: Path,
                 root: Path) -> None:
        self.cluster, self.pg, self.pacs, self.swift = cluster, pg, pacs, swift
        self.small, self.cine = shared_dicom / SMALL_US, shared_dicom / CINE
        self.root = root
        self.n = 0

    def study(self, count: int = 1, source: Path | None = None) -> tuple[str, list[Path]]:
        self.n += 1
        uid, files = make_study(source or self.small, self.root / "studies" / str(self.n), count=count)
        return uid, list(files)

    def send(self, receiver: str, files: list[Path]) -> subprocess.CompletedProcess[str]:
        """storescu to one receiver; its log (stdout and stderr together) is the result's stdout."""
        return subprocess.run(storescu_args(self.cluster[receiver].port, files), env=DCMTK_ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=300)

    def sending(self, receiver: str, files: list[Path]) -> subprocess.Popen[str]:
        return subprocess.Popen(storescu_args(self.cluster[receiver].port, files), env=DCMTK_ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def delivered(self, uids: list[str], timeout: float = 120) -> None:
        def done() -> bool:
            return set(self.cluster.states(uids).values()) == {"delivered"} and len(self.cluster.states(uids)) == len(uids)
        wait_for(done, timeout=timeout, interval=0.5, what=f"{len(uids)} studies delivered")

    def srs(self, uid: str, pacs: str = "pacs") -> list[pydicom.Dataset]:
        return srs_in(self.pacs[pacs], uid)

    def results(self, uid: str) -> list[tuple]:
        return self.cluster.query("SELECT r.generation, r.attempt, r.sr_sop_instance_uid FROM results r "
                                  "JOIN studies s ON s.id = r.study_id WHERE s.study_instance_uid = :uid "
                                  "ORDER BY r.id", uid=uid)

    def events(self, uid: str, outcome: str) -> int:
        return self.cluster.query("SELECT count(*) FROM events WHERE study_instance_uid = :uid AND outcome = :o",
                                  uid=uid, o=outcome)[0][0]

    def holder(self, uid: str) -> tuple[str, int]:
        """The worker that started on the study, and the attempt (lease) its claim holds."""
        name = wait_for(lambda: self.cluster.holder(uid, WORKERS), timeout=120, interval=0.05,
                        what=f"a worker to start on study {uid}")
        (attempt,) = re.findall(rf"study {re.escape(uid)}: \S+ \d+ instance\(s\) \(generation \d+, attempt (\d+)\)",
                                self.cluster[name].log())
        return name, int(attempt)

    def instance_count(self, uid: str) -> int:
        rows = self.cluster.query("SELECT instance_count FROM studies WHERE study_instance_uid = :uid", uid=uid)
        return rows[0][0] if rows else 0


def test_fifty_studies_across_two_receivers_are_each_processed_once(site):
    studies = [site.study() for _ in range(49)]
    split_uid, split_files = site.study(count=2)  # one study, one instance to each receiver
    first = [f for _uid, files in studies[:25] for f in files] + split_files[:1]
    second = [f for _uid, files in studies[25:] for f in files] + split_files[1:]
    senders = [site.sending("rx1", first), site.sending("rx2", second)]
    for sender in senders:
        assert sender.wait(timeout=300) == 0, sender.stdout.read()
    uids = [uid for uid, _files in studies] + [split_uid]
    site.delivered(uids, timeout=600)
    for uid in uids:
        for pacs in site.pacs:
            assert len({sr.SOPInstanceUID for sr in site.srs(uid, pacs)}) == 1, (uid, pacs)
        assert len(site.results(uid)) == 1
    per_stage = site.cluster.query(
        "SELECT task_name, lock, count(*) FROM procrastinate_jobs WHERE task_name IN ('sonoshot.deid', "
        "'sonoshot.detect') AND lock = ANY(:locks) GROUP BY 1, 2", locks=[f"study:{u}" for u in uids])
    assert len(per_stage) == 2 * len(uids) and {n for _t, _l, n in per_stage} == {1}
    assert site.cluster.query("SELECT count(*) FROM events WHERE outcome = 'taken-over'") == [(0,)]
    nodes = site.cluster.query("SELECT DISTINCT a.node FROM instances i JOIN associations a ON a.id = i.association_id "
                               "JOIN studies s ON s.id = i.study_id WHERE s.study_instance_uid = :uid", uid=split_uid)
    assert len(nodes) == 2  # the split study was received by both receivers
    assert all("de-identifying" in site.cluster[w].log() for w in WORKERS)  # both workers took work


def test_a_worker_killed_mid_study_is_retried_by_the_other(site):
    uid, files = site.study(source=site.cine)
    assert site.send("rx1", files).returncode == 0
    holder, _attempt = site.holder(uid)
    site.cluster[holder].kill()
    site.delivered([uid], timeout=180)
    assert site.events(uid, "taken-over") == 1
    ((generation, attempt, sr_uid),) = site.results(uid)
    assert attempt > 1  # made by the takeover's claim
    assert [sr.SOPInstanceUID for sr in site.srs(uid)] == [sr_uid]
    site.cluster.start(holder)


def test_a_paused_worker_past_the_stall_timeout_cannot_overwrite_the_retry(site):
    uid, files = site.study(source=site.cine)
    assert site.send("rx2", files).returncode == 0
    holder, stale = site.holder(uid)
    site.cluster[holder].pause()
    try:
        site.delivered([uid], timeout=180)  # the other worker took over and finished
    finally:
        site.cluster[holder].resume()
    assert site.events(uid, "taken-over") == 1
    wait_for(lambda: f"study {uid}: de-identification dropped" in site.cluster[holder].log()
             or f"study {uid}: result dropped" in site.cluster[holder].log(), timeout=120, interval=0.5,
             what="the resumed worker's late write to be refused")
    ((_generation, attempt, sr_uid),) = site.results(uid)
    assert attempt > stale
    assert [sr.SOPInstanceUID for sr in site.srs(uid)] == [sr_uid]
    written = [key for key in site.swift.keys("work") + site.swift.keys("reports") if key.startswith(f"{uid}/")]
    assert written and not [key for key in written if f".a{stale}/" in key or key.endswith(f".a{stale}.dcm")]
    # the resumed worker deleted what it wrote under its stale claim; the retry's objects are there


def test_the_object_store_down_during_ingest_loses_nothing(site):
    site.swift.stop_proxy()
    try:
        studies = [site.study(count=2) for _ in range(4)]
        for n, (uid, files) in enumerate(studies):
            result = site.send("rx1" if n % 2 else "rx2", files)
            assert result.returncode == 0 and set(acknowledged(result.stdout).values()) == {"Success"}
        uids = [uid for uid, _files in studies]
        time.sleep(4)  # well past the quiet period: nothing completes while uploads are pending
        assert set(site.cluster.states(uids).values()) == {"receiving"}
        pending = site.cluster.query("SELECT count(*) FROM instances i JOIN studies s ON s.id = i.study_id "
                                     "WHERE s.study_instance_uid = ANY(:uids) AND i.pending_upload IS NOT NULL",
                                     uids=uids)
        assert pending == [(8,)]
    finally:
        site.swift.start_proxy()
    site.delivered(uids, timeout=180)
    originals = set(site.swift.keys("originals"))
    for uid, files in studies:
        for file in files:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
            assert f"{uid}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm" in originals
        assert len(site.srs(uid)) == 1
    for receiver in ("rx1", "rx2"):  # the local spools are empty again
        assert not list(site.cluster[receiver].spool.glob("*/*/*.dcm"))


def test_postgresql_down_during_an_association_acknowledges_nothing_uncommitted(site):
    uid, files = site.study(count=8)
    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", site.cluster["rx1"].port, ae_title="SONOSHOT")
    assert assoc.is_established
    statuses: dict[str, int] = {}
    try:
        for n, ds in enumerate(datasets):
            if n == 3:
                site.pg.stop()
            status = assoc.send_c_store(ds)
            statuses[ds.SOPInstanceUID] = int(status.Status) if "Status" in status else -1
    finally:
        site.pg.start()  # back before the association ends, so its end is recorded
        if assoc.is_established:
            assoc.release()
    acked = {sop for sop, status in statuses.items() if status == 0}
    assert len(acked) == 3 and len(statuses) == 8  # refused while the database was down
    wait_for(lambda: site.cluster.query("SELECT 1"), timeout=60, what="PostgreSQL back")
    rows = {sop for (sop,) in site.cluster.query("SELECT sop_instance_uid FROM instances WHERE "
                                                  "sop_instance_uid = ANY(:sops)", sops=list(statuses))}
    assert acked <= rows and rows <= acked  # every Success had its row; nothing else got one
    result = site.send("rx2", files)  # the modality sends the study again
    assert result.returncode == 0
    site.delivered([uid], timeout=240)
    assert site.cluster.query("SELECT instance_count FROM studies WHERE study_instance_uid = :uid", uid=uid) == [(8,)]
    assert len(site.srs(uid)) == 1


def test_a_receiver_killed_mid_association_deduplicates_the_resend(site):
    uid, files = site.study(count=30)
    sender = site.sending("rx2", files)
    wait_for(lambda: site.instance_count(uid) >= 5, timeout=60, interval=0.02, what="part of the study received")
    site.cluster["rx2"].kill()
    sender.wait(timeout=60)
    assert site.send("rx1", files).returncode == 0  # the modality sends it all again, to the other receiver
    site.cluster.start("rx2")  # its restart closes the association it left open: the study completes
    site.delivered([uid], timeout=180)
    counts = site.cluster.query("SELECT count(*), count(DISTINCT i.sop_instance_uid), s.instance_count FROM instances i "
                                "JOIN studies s ON s.id = i.study_id WHERE s.study_instance_uid = :uid "
                                "GROUP BY s.instance_count", uid=uid)
    assert counts == [(30, 30, 30)]
    assert site.events(uid, "duplicate") >= 5
    assert len(site.srs(uid)) == 1 and len(site.results(uid)) == 1


def test_a_late_instance_after_the_sr_gives_revision_2_referencing_revision_1(site):
    uid, files = site.study()
    assert site.send("rx1", files).returncode == 0
    site.delivered([uid])
    (sr1,) = site.srs(uid)
    late = site.root / "late.dcm"
    ds = pydicom.dcmread(files[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(late)
    assert site.send("rx2", [late]).returncode == 0
    wait_for(lambda: len(site.srs(uid)) == 2, timeout=120, interval=0.5, what="the revision-2 SR")
    (sr2,) = [sr for sr in site.srs(uid) if sr.SOPInstanceUID != sr1.SOPInstanceUID]
    assert sr2.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == sr1.SOPInstanceUID
    assert [g for g, _a, _sr in site.results(uid)] == [1, 2]
    site.delivered([uid])


def test_a_pacs_down_then_back_gets_its_sr_once_and_blocks_no_other(site):
    site.pacs["pacs2"].stop()
    try:
        uid, files = site.study()
        assert site.send("rx1", files).returncode == 0
        wait_for(lambda: len(site.srs(uid, "pacs")) == 1, timeout=120, interval=0.5, what="the SR in the up PACS")
        wait_for(lambda: site.cluster.query("SELECT attempts FROM deliveries WHERE destination = 'pacs2' AND "
                                            "attempts >= 2 AND result_id IN (SELECT r.id FROM results r JOIN studies s "
                                            "ON s.id = r.study_id WHERE s.study_instance_uid = :uid)", uid=uid),
                 timeout=60, interval=0.3, what="failed attempts towards the PACS that is down")
        assert site.cluster.states([uid]) == {uid: "reported"}
    finally:
        site.pacs["pacs2"].start()
    site.delivered([uid])
    assert len(site.srs(uid, "pacs2")) == 1 and len(site.srs(uid, "pacs")) == 1


def test_the_deliverer_killed_after_the_pacs_ack_before_commit_resends_the_same_sr(site):
    deliverer = site.cluster["dl"]
    deliverer.pause()
    uid, files = site.study()
    assert site.send("rx2", files).returncode == 0
    wait_for(lambda: site.cluster.states([uid]).get(uid) == "reported", timeout=120, interval=0.3,
             what="the study reported")
    with site.cluster.engine.connect() as held, held.begin() as transaction:
        # hold the study row: the deliverer's commit of the outcome must wait for it
        held.execute(text("SELECT id FROM studies WHERE study_instance_uid = :uid FOR UPDATE"), {"uid": uid})
        deliverer.resume()
        (sent,) = wait_for(lambda: site.srs(uid), timeout=60, interval=0.2, what="the PACS to acknowledge the SR")
        wait_for(lambda: len(site.srs(uid, "pacs2")) == 1, timeout=60, interval=0.2, what="the second PACS too")
        deliverer.kill()  # after the PACS stored it, before our commit
        transaction.rollback()
    assert site.cluster.query("SELECT d.state, d.attempts FROM deliveries d JOIN results r ON r.id = d.result_id "
                              "JOIN studies s ON s.id = r.study_id WHERE s.study_instance_uid = :uid "
                              "AND d.destination = 'pacs'", uid=uid) == [("pending", 0)]
    site.cluster.start("dl")
    site.delivered([uid], timeout=120)  # the stalled send was taken over and sent again
    assert [sr.SOPInstanceUID for sr in site.srs(uid)] == [sent.SOPInstanceUID]  # Orthanc holds one
    assert len(site.srs(uid, "pacs2")) == 1
    assert site.cluster.query("SELECT d.attempts FROM deliveries d JOIN results r ON r.id = d.result_id "
                              "JOIN studies s ON s.id = r.study_id WHERE s.study_instance_uid = :uid "
                              "AND d.destination = 'pacs'", uid=uid) == [(1,)]


def test_periodic_jobs_ran_once_per_period_across_both_workers(site):
    """Both workers propose every period of the completion sweep; it ran once per period. (A
    worker that resumed after its pause proposed the periods it missed again: those late
    proposals became jobs, which the period guard turned away.)"""
    ((runs, last),) = site.cluster.query("SELECT runs, last_timestamp FROM periodic_runs WHERE name = 'completion'")
    proposed = site.cluster.query("SELECT (args->>'timestamp')::bigint, count(*) FROM procrastinate_jobs "
                                  "WHERE task_name = 'sonoshot.periodic.completion' GROUP BY 1 ORDER BY 1")
    span = last - proposed[0][0] + 1
    assert 0.5 * span <= runs <= span  # about every second, never twice (periods lost while PostgreSQL was down)
    ran_by = site.cluster.query("SELECT count(DISTINCT worker_id) FROM procrastinate_jobs "
                                "WHERE task_name = 'sonoshot.periodic.completion' AND status = 'succeeded'")
    assert ran_by[0][0] >= 2  # each worker ran some of them
