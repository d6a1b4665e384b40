"""One contract for both work carriers: the in-process pool on SQLite, and procrastinate on a real
PostgreSQL 15 (``tests/postgres.py``), as ``tests/test_db_backends.py`` holds the store to one
contract on both databases.

The stages here do no pixel work: they are real implementations of the stage interface that
write through the real store (finish de-identification, add a result, record a delivery), and
record each run, so the tests can count what the carriers did.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text

from sonoshot.config import ClusterConfig
from sonoshot.daemon.stages import InProcessCarrier, Periodic
from sonoshot.db.lifecycle import StudyState
from sonoshot.db.store import DeidRecord, DeliveryRef, NewInstance, NewResult, Store, StudyRef
from sonoshot.db.work import Lane, WakeDeferrer
from tests.peers import wait_for
from tests.postgres import fresh_database, postgres_url  # noqa: F401  (the session-scoped server fixture)

PREFIX = "1.2.826.0.1.3680043.10.4322"
_counter = iter(range(1, 10**9))
CLUSTER = ClusterConfig(enabled=True, stall_timeout_s=2.0, heartbeat_interval_s=0.5, poll_interval_s=0.2)


def _uid() -> str:
    return f"{PREFIX}.{next(_counter)}"


@dataclass
class Recorder:
    """What the stages did: (stage, study, generation, lease) per run, in order."""

    runs: list[tuple[str, str, int, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    fail_deliveries: int = 0  # the first n sends fail (a PACS that is down)
    hold: threading.Event | None = None  # deid waits on it (a worker that hangs)

    def add(self, stage: str, uid: str, generation: int, lease: int) -> None:
        with self.lock:
            self.runs.append((stage, uid, generation, lease))

    def count(self, stage: str) -> Counter:
        with self.lock:
            return Counter(uid for s, uid, _g, _l in self.runs if s == stage)


class DeidDone:
    name = "deid"

    def __init__(self, store: Store, recorder: Recorder) -> None:
        self.store, self.recorder = store, recorder

    def run(self, study: StudyRef) -> None:
        self.recorder.add("deid", study.study_instance_uid, study.generation, study.lease)
        if self.recorder.hold is not None:
            self.recorder.hold.wait(30)
        self.store.finish_deid(study, [DeidRecord(i.sop_instance_uid, "ok", f"{i.sop_instance_uid}.dcm")
                                       for i in self.store.instances_of(study)], 0.01, "test")


class DetectDone:
    name = "detect"

    def __init__(self, store: Store, recorder: Recorder) -> None:
        self.store, self.recorder = store, recorder

    def run(self, study: StudyRef) -> None:
        self.recorder.add("detect", study.study_instance_uid, study.generation, study.lease)
        sr = f"{study.study_instance_uid}.99.{study.generation}"
        self.store.add_result(study, NewResult(
            score=0.5, verdict="normal", threshold=0.6, bundle_sha256="ab" * 32, backbone="test", images_scored=1,
            images_quarantined=0, sr_sop_instance_uid=sr, sr_path=f"{study.study_instance_uid}/{sr}.dcm",
            predecessor_sr_uid=None, timings={"detect": 0.01}), ["pacs"])


class DeliverDone:
    name = "deliver"

    def __init__(self, store: Store, recorder: Recorder) -> None:
        self.store, self.recorder = store, recorder

    def run(self, delivery: DeliveryRef) -> None:
        self.recorder.add("deliver", delivery.result.study_instance_uid, delivery.result.generation, delivery.lease)
        with self.recorder.lock:
            fail = self.recorder.fail_deliveries > 0
            self.recorder.fail_deliveries -= fail
        if fail:
            self.store.record_attempt(delivery, False, "none", "association refused", 0.5)
        else:
            self.store.record_attempt(delivery, True, "0x0000", None, None)


class Site:
    """A fresh database and the means to start consumers (carriers) on it."""

    def __init__(self, kind: str, url: str, spool: Path) -> None:
        self.kind = kind
        self.url = url
        self.spool = spool
        self.carriers: list = []
        self.recorder = Recorder()
        self.periodic_runs: list[float] = []
        if kind == "in-process":
            self.deferrer = WakeDeferrer()
        else:
            from sonoshot.db.cluster import ProcrastinateDeferrer, apply_schema

            self.deferrer = ProcrastinateDeferrer()
        self.store = Store(url, self.deferrer)
        self.store.migrate()
        if kind == "procrastinate":
            apply_schema(self.store.engine)

    #: How many consumers one deployment of this carrier has: one process in process, any in a cluster.
    @property
    def consumers(self) -> int:
        return 1 if self.kind == "in-process" else 2

    def periodic(self) -> list[Periodic]:
        return [Periodic("tick", 1.0, lambda: self.periodic_runs.append(time.time()))]

    def start(self, periodic: bool = False, delivery_interval_s: float = 0.2) -> None:
        """Start one more consumer: a carrier with its own store (its own connections);
        ``delivery_interval_s`` is the in-process outbox sweep's period."""
        store = Store(self.url, self.deferrer)
        stages = {stage.name: stage for stage in (DeidDone(store, self.recorder), DetectDone(store, self.recorder),
                                                  DeliverDone(store, self.recorder))}
        jobs = self.periodic() if periodic else []
        if self.kind == "in-process":
            carrier = InProcessCarrier(store, self.deferrer, stages, jobs, threads=2, destinations=["pacs"],
                                       delivery_interval_s=delivery_interval_s, idle_s=0.1)
        else:
            from sonoshot.daemon.cluster import ProcrastinateCarrier

            carrier = ProcrastinateCarrier(self.url, CLUSTER, store, stages, jobs,
                                           [["deid", "detect", "archive", "archive-detect"], ["deliver-pacs"]], concurrency=2,
                                           name=f"consumer-{len(self.carriers)}")
        carrier.start()
        self.carriers.append((carrier, store))

    def stop(self) -> None:
        for carrier, store in self.carriers:
            carrier.stop()
            store.dispose()
        self.carriers.clear()
        self.store.dispose()

    def receive(self, uid: str, count: int = 1, lane: Lane = Lane.LIVE) -> None:
        for n in range(count):
            assert self.store.record_instance(NewInstance(
                sop_instance_uid=f"{uid}.1.{n}", study_instance_uid=uid, series_instance_uid=f"{uid}.1",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1", transfer_syntax_uid="1.2.840.10008.1.2.1",
                modality="US", path=f"{uid}/{uid}.1/{uid}.1.{n}.dcm", size_bytes=10, lane=lane))

    def states(self, uids: list[str]) -> set[StudyState]:
        return {self.store.study(uid).state for uid in uids}


@pytest.fixture(params=["in-process", "procrastinate"])
def site(request, tmp_path):
    with contextlib.ExitStack() as stack:
        if request.param == "in-process":
            url = f"sqlite:///{tmp_path / 'sonoshot.db'}"
        else:
            url = stack.enter_context(fresh_database(request.getfixturevalue("postgres_url"), "carriers"))
        site = Site(request.param, url, tmp_path / "spool")
        yield site
        site.stop()


def _delivered(site: Site, uids: list[str], timeout: float = 60) -> None:
    wait_for(lambda: site.states(uids) == {StudyState.DELIVERED}, timeout=timeout, interval=0.1,
             what=f"{len(uids)} studies delivered ({site.kind})")


def test_every_stage_runs_once_per_study_revision(site):
    """Studies completed while consumers run go through every stage exactly once."""
    for _ in range(site.consumers):
        site.start()
    studies = [_uid() for _ in range(12)]
    for uid in studies:
        site.receive(uid, count=2)
    assert len(site.store.complete_quiet_studies(0, 3600)) == len(studies)
    _delivered(site, studies)
    for stage in ("deid", "detect", "deliver"):
        assert site.recorder.count(stage) == Counter(dict.fromkeys(studies, 1)), stage


def test_a_late_instance_gives_one_more_revision(site):
    site.start()
    uid = _uid()
    site.receive(uid)
    site.store.complete_quiet_studies(0, 3600)
    _delivered(site, [uid])
    assert site.store.record_instance(NewInstance(
        sop_instance_uid=f"{uid}.2.1", study_instance_uid=uid, series_instance_uid=f"{uid}.2",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1", transfer_syntax_uid="1.2.840.10008.1.2.1", modality="US",
        path=f"{uid}/{uid}.2/{uid}.2.1.dcm", size_bytes=10))
    site.store.complete_quiet_studies(0, 3600)
    _delivered(site, [uid])
    assert [(s, g) for s, u, g, _l in site.recorder.runs] == [
        ("deid", 1), ("detect", 1), ("deliver", 1), ("deid", 2), ("detect", 2), ("deliver", 2)]


def test_a_failed_delivery_is_retried_after_its_backoff_and_sent_once(site):
    site.recorder.fail_deliveries = 2
    site.start()
    uid = _uid()
    site.receive(uid)
    site.store.complete_quiet_studies(0, 3600)
    _delivered(site, [uid])
    assert site.recorder.count("deliver")[uid] == 3  # two failures, one success, no more
    with site.store.read_session() as s:
        assert s.execute(text("SELECT state, attempts FROM deliveries")).all() == [("delivered", 3)]


def test_a_result_is_sent_at_once_not_at_the_next_outbox_sweep(site):
    """The result's commit hands its delivery on: with an outbox sweep a minute apart, the study is
    delivered within seconds (the sweep is there for retries)."""
    site.start(delivery_interval_s=60)
    time.sleep(0.5)  # the sweep at start has run and found nothing
    uid = _uid()
    site.receive(uid)
    site.store.complete_quiet_studies(0, 3600)
    started = time.monotonic()
    _delivered(site, [uid], timeout=15)
    assert time.monotonic() - started < 5


def test_live_studies_jump_the_archive_backlog(site):
    """With one consumer busy, a live study completed after twenty archive ones runs next."""
    site.recorder.hold = threading.Event()
    archive = [_uid() for _ in range(20)]
    for uid in archive:
        site.receive(uid, lane=Lane.ARCHIVE)
        site.store.complete_study(uid)
    site.start()
    wait_for(lambda: site.recorder.count("deid"), timeout=30, what="the first archive study to start")
    live = _uid()
    site.receive(live)
    site.store.complete_quiet_studies(0, 3600)
    site.recorder.hold.set()
    wait_for(lambda: site.recorder.count("deliver")[live], timeout=60, what="the live study delivered")
    deid_order = [uid for stage, uid, _g, _l in site.recorder.runs if stage == "deid"]
    # Before it: the two archive studies in hand, and at most one more, which the other consumer
    # slot took after live when both were freed together (its run may be recorded first).
    assert deid_order.index(live) <= 3
    _delivered(site, archive + [live], timeout=120)


def test_a_study_whose_holder_died_is_finished_once(site):
    """A consumer dies holding a study; the deployment's own recovery hands it on, once."""
    uid = _uid()
    site.receive(uid)
    site.store.complete_quiet_studies(0, 3600)
    if site.kind == "in-process":
        dead = site.store.claim_study(StudyState.COMPLETE, StudyState.PROCESSING)  # then the process died
        assert dead is not None
        site.store.recover_after_restart(site.spool)  # at the next start
    else:
        with site.store.engine.begin() as c:  # a worker fetched the job, then stopped sending heartbeats
            worker = c.scalar(text("INSERT INTO procrastinate_workers (last_heartbeat) "
                                   "VALUES (NOW() - INTERVAL '1 hour') RETURNING id"))
            c.execute(text("UPDATE procrastinate_jobs SET status = 'doing', worker_id = :w"), {"w": worker})
        dead = site.store.claim_study(StudyState.COMPLETE, StudyState.PROCESSING)
    site.start(periodic=True)  # procrastinate: with the periodic jobs comes the takeover, which finds it
    _delivered(site, [uid])
    assert site.recorder.count("deid")[uid] == 1 and site.recorder.count("deliver")[uid] == 1
    assert site.store.finish_deid(dead, [DeidRecord(f"{uid}.1.0", "ok", "late")], 0.0, "late") is False  # void claim


def test_periodic_jobs_run_once_per_period_across_consumers(site):
    for _ in range(site.consumers):
        site.start(periodic=True)
    time.sleep(6.5)
    runs = list(site.periodic_runs)
    assert 4 <= len(runs) <= 8, runs  # every second, once (not once per consumer)
    if site.kind == "procrastinate":
        with site.store.read_session() as s:
            per_period = s.execute(text("SELECT args->>'timestamp', count(*) FROM procrastinate_jobs "
                                        "WHERE task_name = 'sonoshot.periodic.tick' GROUP BY 1")).all()
        assert len(per_period) >= len(runs) and {n for _t, n in per_period} == {1}


def test_in_process_a_periodic_job_also_runs_when_its_work_is_due(tmp_path):
    """In process, a job that tells when its work is due next (the completion sweep: when the next
    study goes quiet) runs at that moment as well as every period; a due time already past waits."""
    runs: list[float] = []
    now = datetime.now(timezone.utc)
    dues = [now + timedelta(seconds=1.0), now - timedelta(seconds=1.0)]
    job = Periodic("sweep", 30.0, lambda: runs.append(time.monotonic()), at_start=True,
                   next_due=lambda: dues.pop(0) if dues else None)
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    carrier = InProcessCarrier(store, WakeDeferrer(), {}, [job])
    started = time.monotonic()
    carrier.start()
    try:
        wait_for(lambda: len(runs) >= 2, timeout=10, what="the run at the due time")
        time.sleep(1.5)
    finally:
        carrier.stop()
        store.dispose()
    assert runs[1] - started == pytest.approx(1.0, abs=0.4)  # not 30 s later
    assert len(runs) == 2 and not dues  # the past due time added no run


def test_in_process_the_carrier_tells_when_a_stage_runs(tmp_path):
    """De-identification ahead (sonoshot.daemon.ahead) works only while the pool is idle."""
    site = Site("in-process", f"sqlite:///{tmp_path / 'sonoshot.db'}", tmp_path / "spool")
    try:
        site.recorder.hold = threading.Event()
        site.start()
        ((carrier, _store),) = site.carriers
        assert not carrier.busy()
        uid = _uid()
        site.receive(uid)
        site.store.complete_quiet_studies(0, 3600)
        wait_for(lambda: site.recorder.count("deid")[uid], timeout=30, what="the stage to start")
        assert carrier.busy()
        site.recorder.hold.set()
        _delivered(site, [uid])
        wait_for(lambda: not carrier.busy(), timeout=10, what="the pool to go idle")
    finally:
        site.stop()
