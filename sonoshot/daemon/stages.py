"""stages.py
=========

The one stage interface, and the in-process carrier that runs stages inside one sonoshot process.

A :class:`Stage` does one step for one *claim*: a study revision in its running state (``deid``,
``detect``: a :class:`~sonoshot.db.store.StudyRef`) or an outbox row (``deliver``: a
:class:`~sonoshot.db.store.DeliveryRef`). It never claims anything itself; a carrier claims
through the store and hands the claim over, and every write of the stage carries the claim's
lease, so a stage that lost its claim (it was paused past the stall timeout and taken over)
writes nothing. :class:`Periodic` jobs (completion sweep, retention, ...) are the carrier's
other work. Two carriers move the same stages and periodic jobs:

* :class:`InProcessCarrier` (the embedded default): a pool of threads claims the oldest due
  study (its state is the job, live before archive, detect before de-identify), per-destination
  outbox sweeps claim due deliveries, APScheduler runs the periodic jobs;
* :class:`~sonoshot.daemon.cluster.ProcrastinateCarrier` (cluster mode): procrastinate workers
  in any number of processes fetch the jobs the store deferred; periodic jobs run once per
  period across all of them.

``tests/test_carriers.py`` holds both to one contract.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Protocol, TypeVar

from apscheduler.schedulers.background import BackgroundScheduler

from sonoshot.db.lifecycle import STAGE_STATES
from sonoshot.db.store import DeliveryRef, Store, StudyRef
from sonoshot.db.work import Job, WakeDeferrer
from sonoshot.host import lower_priority

log = logging.getLogger(__name__)

ClaimT = TypeVar("ClaimT", bound=StudyRef | DeliveryRef, contravariant=True)
#: The order the in-process pool looks for work: a study further along first, so it leaves sooner.
POOL_ORDER = ("detect", "deid")
#: How much lower than the receiver's threads the pool runs in the process of the SCP (Linux nice
#: increment): on a small machine de-identification, OCR and the model must not slow the
#: acknowledgement of instances. Threads that a pool thread starts (torch's, tesseract's) inherit it.
WORKER_NICE = 10


class Stage(Protocol[ClaimT]):
    """One pipeline step for one claim; exceptions are the stage's own to record (a study it
    cannot process becomes ``failed``), so a carrier only logs what escapes."""

    name: str

    def run(self, claim: ClaimT) -> None: ...


class Carrier(Protocol):
    """Runs stages and periodic jobs until stopped (the jobs in hand are finished first)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Periodic:
    """A job every ``interval_s`` seconds, run once per period by whichever node's turn it is.

    Raises
    ------
    ValueError
        If ``interval_s`` is not positive.
    """

    name: str
    interval_s: float
    run: Callable[[], object]
    at_start: bool = False  # in process: also once right at start (a cluster runs it at its next period)
    #: In process: when the job has work due next (None: nothing known). A time within the next
    #: period gets one extra run at that moment, so a study completes at the end of its quiet
    #: period instead of up to a period later. A cluster runs the job at its periods only.
    next_due: Callable[[], datetime | None] | None = None

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f'Argument "interval_s" must be positive; got {self.interval_s!r}.')


def claim(store: Store, job: Job) -> StudyRef | DeliveryRef | None:
    """The claim a job asks for, or None when the job is obsolete (nothing is due for it)."""
    if job.stage == "deliver":
        assert job.delivery_id is not None  # Job checks it
        return store.claim_delivery(job.delivery_id)
    return store.claim_job(job)


def run_job(store: Store, stages: Mapping[str, Stage], job: Job) -> bool:
    """Claim what ``job`` names and run its stage; returns whether there was anything to do."""
    claimed = claim(store, job)
    if claimed is None:
        log.debug("%s job for study %s (generation %d): nothing due", job.stage, job.study_instance_uid,
                  job.generation)
        return False
    stages[job.stage].run(claimed)
    return True


class InProcessCarrier:
    """Stages and periodic jobs in this process: ``threads`` pool threads claim due studies; each
    destination has a sender thread that sweeps its outbox every ``delivery_interval_s`` and at
    once when a pool thread has committed a delivery to it (one sweep at a time per
    destination, so a slow PACS holds up no other).

    The store must defer through ``deferrer`` (a :class:`~sonoshot.db.work.WakeDeferrer`): a
    deferred job wakes the pool at once instead of at its next idle poll. ``nice`` lowers the pool
    threads' CPU priority (:data:`WORKER_NICE` beside the receiver).
    """

    def __init__(self, store: Store, deferrer: WakeDeferrer, stages: Mapping[str, Stage],
                 periodic: Sequence[Periodic], threads: int = 1, destinations: Sequence[str] = (),
                 delivery_interval_s: float = 2.0, idle_s: float = 0.25, nice: int = 0) -> None:
        self.store = store
        self.deferrer = deferrer
        self.stages = dict(stages)
        self.periodic = list(periodic)
        self.destinations = list(destinations)
        self.delivery_interval_s = delivery_interval_s
        self.senders: dict[str, tuple[threading.Thread, threading.Event]] = {}
        self.threads_n = threads
        self.idle_s = idle_s
        self.nice = nice
        self.scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1})
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self._in_hand = 0
        self._in_hand_lock = threading.Lock()

    def start(self) -> None:
        for job in self.periodic:
            self._schedule(job)
        self.sweep_destinations(self.destinations)
        self.scheduler.start()
        if any(stage in self.stages for stage in POOL_ORDER):
            for n in range(self.threads_n):
                thread = threading.Thread(target=self._loop, name=f"worker-{n}", daemon=True)
                thread.start()
                self.threads.append(thread)

    def _schedule(self, job: Periodic) -> None:
        start = {"next_run_time": datetime.now(timezone.utc)} if job.at_start else {}
        run = job.run if job.next_due is None else functools.partial(self._run_then_plan, job)
        self.scheduler.add_job(run, "interval", seconds=job.interval_s, id=job.name, **start)

    def _run_then_plan(self, job: Periodic) -> None:
        """Run ``job``, then add one run at its next due time if that comes before its next period.
        A due time already past (a study still held open by an association) waits for the period."""
        job.run()
        assert job.next_due is not None
        due = job.next_due()
        now = datetime.now(timezone.utc)
        if due is not None and now < due < now + timedelta(seconds=job.interval_s):
            self.scheduler.add_job(self._run_then_plan, "date", args=[job], run_date=due, id=f"{job.name}-due",
                                   replace_existing=True)

    def sweep_destinations(self, names: Sequence[str]) -> None:
        """Give each destination its sender thread; one added by a reload gets its own too."""
        if "deliver" not in self.stages:
            return
        for name in names:
            if name not in self.senders:
                wake = threading.Event()
                thread = threading.Thread(target=self._send_loop, args=(name, wake), name=f"deliver-{name}",
                                          daemon=True)
                self.senders[name] = (thread, wake)
                thread.start()

    def _send_loop(self, destination: str, wake: threading.Event) -> None:
        while not self.stopping.is_set():
            wake.clear()  # a wake-up during the sweep below leaves it set: the next sweep follows at once
            try:
                self.deliver_due(destination)
            except Exception:  # the database gone, say: the next sweep tries again
                log.exception("outbox sweep of %s failed", destination)
            wake.wait(self.delivery_interval_s)

    def _wake_senders(self) -> None:
        for name in self.deferrer.take_destinations():
            if name in self.senders:
                self.senders[name][1].set()

    def run_next(self, woken: bool = True) -> bool:
        """Claim and run one due study, if any; returns whether one was claimed. ``woken``: a job
        was deferred (its transaction may not have committed yet: the claim waits for it); else
        an idle poll, which looks before it takes the write lock."""
        for stage in POOL_ORDER:
            if stage not in self.stages:
                continue
            claimed = self.store.claim_study(*STAGE_STATES[stage], look_first=not woken)
            if claimed is not None:
                with self._in_hand_lock:
                    self._in_hand += 1
                try:
                    self.stages[stage].run(claimed)
                finally:
                    with self._in_hand_lock:
                        self._in_hand -= 1
                return True
        return False

    def busy(self) -> bool:
        """Whether a pool thread is running a stage now."""
        return self._in_hand > 0

    def deliver_due(self, destination: str) -> int:
        """Claim and send every due delivery of ``destination``; returns how many were claimed."""
        claimed = 0
        for due in self.store.due_deliveries(destination):
            delivery = self.store.claim_delivery(due.id)
            if delivery is not None:
                self.stages["deliver"].run(delivery)
                claimed += 1
        return claimed

    def _loop(self) -> None:
        lower_priority(self.nice, "study workers")
        woken = True
        while not self.stopping.is_set():
            try:
                busy = self.run_next(woken)
            except Exception:  # a bug (or the database gone) must not kill the pool thread
                log.exception("worker error")
                busy = False
            self._wake_senders()  # the stage has committed: its deliveries go now, not at the next sweep
            woken = busy or self.deferrer.wakeup.wait(self.idle_s)
            if not busy:
                self.deferrer.wakeup.clear()

    def stop(self, timeout_s: float = 120.0) -> None:
        """Finish the studies in hand, then stop the periodic jobs."""
        self.stopping.set()
        self.deferrer.wakeup.set()
        for _thread, wake in self.senders.values():
            wake.set()
        for thread in self.threads + [thread for thread, _wake in self.senders.values()]:
            thread.join(timeout=timeout_s)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
