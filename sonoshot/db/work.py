"""work.py
=======

The unit of work the carriers move between stages, and how a store transaction hands one on.

A :class:`Job` names a study revision (study UID and generation) and the stage due for it
(``deid``, ``detect``), or one outbox row (``deliver``). The store *defers* the next job in the
same transaction that moves the study row (:class:`Deferrer`), so a committed move always has
its job and a rolled-back one never does. Two carriers implement the deferrer:

* in process (the embedded default): the study row's state *is* the job; deferring only wakes
  the pool, which claims due rows (:class:`WakeDeferrer`);
* procrastinate on PostgreSQL (cluster mode): a ``procrastinate_jobs`` row inserted by
  procrastinate's own ``procrastinate_defer_jobs_v1`` function on the caller's connection
  (:mod:`sonoshot.db.cluster`).

A job is a hint, never an authority: the stage's claim re-checks the study's state and
generation under a row lock, and every write of the stage carries the lease the claim took.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Protocol

from sqlalchemy.engine import Connection

#: Stages a job can be due for.
STAGES = ("deid", "detect", "deliver")
#: procrastinate task name per stage.
TASK_NAMES = {stage: f"sonoshot.{stage}" for stage in STAGES}
#: Queues of the archive studies' stages (``sonoshot import``): a worker without them never takes
#: archive work, so live studies keep capacity of their own.
ARCHIVE_QUEUE, ARCHIVE_DETECT_QUEUE = "archive", "archive-detect"
#: Job priorities (higher first): live studies jump any archive backlog.
LIVE_PRIORITY, ARCHIVE_PRIORITY = 0, -10


class Lane(str, Enum):
    """Where a study came from: sent live by a modality or PACS, or imported from an archive."""

    LIVE = "live"
    ARCHIVE = "archive"


def delivery_queue(destination: str) -> str:
    """The queue of one destination's deliveries (a dead PACS blocks no other)."""
    return f"deliver-{destination}"


@dataclass(frozen=True)
class Job:
    """One stage of work for one study revision, or one delivery.

    Raises
    ------
    ValueError
        If ``stage`` is unknown, a deliver job lacks ``delivery_id`` or ``destination``, or
        ``generation`` is below 1.
    """

    stage: str
    study_instance_uid: str
    generation: int
    lane: Lane = Lane.LIVE
    delivery_id: int | None = None  # deliver jobs: the outbox row
    destination: str | None = None  # deliver jobs: picks the queue
    not_before: datetime | None = None  # not to run earlier (a delivery's backoff)
    takeover: bool = False  # the previous holder stalled: the claim may take a running study over

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f'Argument "stage" must be one of {", ".join(STAGES)}; got {self.stage!r}.')
        if self.stage == "deliver" and (self.delivery_id is None or not self.destination):
            raise ValueError('A deliver job needs "delivery_id" and "destination".')
        if self.generation < 1:
            raise ValueError(f'Argument "generation" must be at least 1; got {self.generation!r}.')
        object.__setattr__(self, "lane", Lane(self.lane))

    @property
    def queue(self) -> str:
        if self.stage == "deliver":
            return delivery_queue(self.destination or "")
        if self.lane is Lane.ARCHIVE:
            return ARCHIVE_QUEUE if self.stage == "deid" else ARCHIVE_DETECT_QUEUE
        return self.stage

    @property
    def priority(self) -> int:
        return ARCHIVE_PRIORITY if self.lane is Lane.ARCHIVE else LIVE_PRIORITY

    @property
    def lock(self) -> str:
        """At most one running job per study (or per delivery)."""
        return f"delivery:{self.delivery_id}" if self.stage == "deliver" else f"study:{self.study_instance_uid}"

    @property
    def queueing_lock(self) -> str | None:
        """Archive studies queue once however often an import is restarted."""
        if self.stage == "deid" and self.lane is Lane.ARCHIVE and not self.takeover:
            return f"archive:{self.study_instance_uid}"
        return None

    def args(self) -> dict[str, Any]:
        """The job as task keyword arguments (JSON)."""
        args: dict[str, Any] = {"study_instance_uid": self.study_instance_uid, "generation": self.generation,
                                "lane": self.lane.value, "takeover": self.takeover}
        if self.stage == "deliver":
            args |= {"delivery_id": self.delivery_id, "destination": self.destination}
        return args

    @classmethod
    def from_args(cls, stage: str, args: dict[str, Any]) -> "Job":
        """The job a task received (the inverse of :meth:`args`)."""
        return cls(stage=stage, study_instance_uid=args["study_instance_uid"], generation=int(args["generation"]),
                   lane=Lane(args.get("lane", Lane.LIVE.value)), delivery_id=args.get("delivery_id"),
                   destination=args.get("destination"), takeover=bool(args.get("takeover", False)))


class Deferrer(Protocol):
    """Hands jobs on inside the caller's transaction (``connection`` is in it)."""

    def defer(self, connection: Connection, jobs: Sequence[Job]) -> None: ...


class WakeDeferrer:
    """The in-process carrier's deferrer: the state change is the job; ``wakeup`` is set so the
    pool claims due rows at once, and the destinations of deliveries a thread deferred are noted
    for that thread's :meth:`take_destinations` (an early or a lost wake-up costs only latency,
    never work: the outbox sweep finds every due delivery)."""

    def __init__(self) -> None:
        self.wakeup = threading.Event()
        self._noted = threading.local()

    def _destinations(self) -> set[str]:
        if not hasattr(self._noted, "destinations"):
            self._noted.destinations = set()
        return self._noted.destinations

    def defer(self, connection: Connection, jobs: Sequence[Job]) -> None:
        if jobs:
            self._destinations().update(j.destination for j in jobs if j.stage == "deliver" and j.destination)
            self.wakeup.set()

    def take_destinations(self) -> set[str]:
        """The destinations that this thread deferred deliveries to since its last call. Called by a
        pool thread once its stage has returned, so every transaction that deferred them has ended;
        another thread's, still open, cannot send a sender to look before its commit."""
        taken = self._destinations()
        self._noted.destinations = set()
        return taken
