"""cluster.py
==========

The procrastinate carrier (cluster mode): the same stages and periodic jobs as
:class:`~sonoshot.daemon.stages.InProcessCarrier`, carried by procrastinate on PostgreSQL across
any number of processes and machines.

* Each stage is a procrastinate task (``sonoshot.deid``, ``sonoshot.detect``,
  ``sonoshot.deliver``) whose job names a study revision or an outbox row; the store defers it
  in the transaction that made it due (:mod:`sonoshot.db.cluster`). The task claims what the
  job names and runs the stage (:func:`~sonoshot.daemon.stages.run_job`), so a duplicate or
  obsolete job does nothing.
* Queues: ``deid``, ``detect``, ``archive`` and ``archive-detect`` (the stages of imported
  studies, lowest priority), ``deliver-<destination>`` (one per destination), ``maintenance``
  (periodic jobs).
  A process runs one procrastinate worker per queue group it was given, plus one on
  ``maintenance``, so a slow PACS or a long retention run holds up nothing else.
* Periodic jobs are procrastinate periodic tasks: every worker's deferrer proposes each
  period, the database keeps one job per period (``procrastinate_periodic_defers``), and one
  worker runs it; :meth:`~sonoshot.db.store.Store.claim_period` turns away a period proposed again
  late (procrastinate's dedupe forgets a period once the next one is deferred, so a worker that
  resumes after a pause would otherwise run the periods it missed). The carrier adds two of its own: ``takeover`` gives the running jobs of
  workers without a heartbeat for ``cluster.stall_timeout_s`` to new jobs, and defers a job for
  any study or delivery left without one (:mod:`sonoshot.db.cluster`); ``prune-jobs`` deletes
  finished jobs after ``cluster.keep_finished_jobs_h``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from sonoshot.config import ClusterConfig
from sonoshot.daemon.stages import Periodic, Stage, run_job
from sonoshot.db import cluster as db_cluster
from sonoshot.db.store import Store
from sonoshot.db.work import TASK_NAMES, Job

log = logging.getLogger(__name__)

MAINTENANCE_QUEUE = "maintenance"
#: Pause before a worker that stopped on an error (the database went away) starts again.
RESTART_DELAY_S = 2.0
#: How often finished jobs older than ``cluster.keep_finished_jobs_h`` are deleted.
PRUNE_INTERVAL_S = 3600.0


def libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as the libpq URL procrastinate's psycopg pool takes."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith("postgresql"):
        raise ValueError(f"not a PostgreSQL URL: {scheme or url!r}")
    return f"postgresql://{rest}"


def cron_every(seconds: float) -> str:
    """A cron line (with procrastinate's seconds column) firing about every ``seconds``."""
    whole = max(1, round(seconds))
    if whole < 60:
        return f"* * * * * */{whole}"
    if whole < 3600:
        return f"*/{max(1, whole // 60)} * * * *"
    return f"0 */{min(24, whole // 3600)} * * *"


class ProcrastinateCarrier:
    """procrastinate workers for ``queue_groups`` (each group one worker of ``concurrency``
    jobs at a time) on an event loop in a background thread. With ``periodic`` jobs (a worker
    process; deliverers have none) one more worker takes the ``maintenance`` queue, and the
    carrier's own ``takeover`` and ``prune-jobs`` join them."""

    def __init__(self, database_url: str, cluster: ClusterConfig, store: Store, stages: Mapping[str, Stage],
                 periodic: Sequence[Periodic], queue_groups: Sequence[Sequence[str]], concurrency: int = 1,
                 name: str = "sonoshot") -> None:
        from procrastinate import App, PsycopgConnector

        self.cluster = cluster
        self.store = store
        self.stages = dict(stages)
        self.queue_groups = [list(group) for group in queue_groups if group]
        self.concurrency = concurrency
        self.name = name
        self.app = App(connector=PsycopgConnector(conninfo=libpq_url(database_url), min_size=1,
                                                  max_size=4 + 2 * len(self.queue_groups) + concurrency))
        for stage in self.stages:
            self.app.task(name=TASK_NAMES[stage])(self._stage_task(stage))
        stall = cluster.stall_timeout_s
        own = [Periodic("takeover", max(1.0, stall / 3), lambda: self._take_over(stall)),
               Periodic("prune-jobs", PRUNE_INTERVAL_S, functools.partial(
                   db_cluster.prune_finished_jobs, store.engine, cluster.keep_finished_jobs_h))] if periodic else []
        self.maintenance = bool(periodic)
        for job in [*periodic, *own]:
            task = self.app.task(name=f"sonoshot.periodic.{job.name}", queue=MAINTENANCE_QUEUE,
                                 queueing_lock=f"periodic:{job.name}")(self._periodic_task(job))
            self.app.periodic(cron=cron_every(job.interval_s), periodic_id=job.name)(task)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Event | None = None
        self.thread: threading.Thread | None = None
        self.ready = threading.Event()

    def _take_over(self, stall_timeout_s: float) -> None:
        db_cluster.take_over_stalled(self.store.engine, stall_timeout_s)
        db_cluster.requeue_unqueued(self.store.engine, stall_timeout_s)

    def _stage_task(self, stage: str):
        def run(**args: Any) -> bool:
            return run_job(self.store, self.stages, Job.from_args(stage, args))
        run.__name__ = run.__qualname__ = f"sonoshot_{stage}"
        return run

    def _periodic_task(self, job: Periodic):
        def run(timestamp: int) -> None:
            if self.store.claim_period(job.name, timestamp):
                job.run()
            else:
                log.debug("periodic %s for %d: that period (or a later one) already ran", job.name, timestamp)
        run.__name__ = run.__qualname__ = f"sonoshot_periodic_{job.name.replace('-', '_')}"
        return run

    def start(self) -> None:
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="procrastinate", daemon=True)
        self.thread.start()
        self.ready.wait(timeout=60)

    async def _main(self) -> None:
        self.loop, self.stopping = asyncio.get_running_loop(), asyncio.Event()
        async with self.app.open_async():
            groups = [*self.queue_groups, *([[MAINTENANCE_QUEUE]] if self.maintenance else [])]
            workers = [asyncio.create_task(self._supervise(group, self.concurrency if group in self.queue_groups
                                                           else 1)) for group in groups]
            self.ready.set()
            await self.stopping.wait()
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _supervise(self, queues: list[str], concurrency: int) -> None:
        """Run one worker on ``queues`` until the carrier stops. A worker stops by itself when its
        database connection fails (procrastinate ends the worker when its listener dies); it is
        started again, registered anew, so it also comes back after a stall as a live worker."""
        assert self.stopping is not None
        while not self.stopping.is_set():
            try:
                await self.app.run_worker_async(
                    queues=queues, concurrency=concurrency, name=f"{self.name}:{','.join(queues)}",
                    install_signal_handlers=False, update_heartbeat_interval=self.cluster.heartbeat_interval_s,
                    stalled_worker_timeout=self.cluster.stall_timeout_s,
                    fetch_job_polling_interval=self.cluster.poll_interval_s, shutdown_graceful_timeout=120)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker on %s failed", ",".join(queues))
            if not self.stopping.is_set():
                log.warning("worker on %s stopped (database connection lost?); starting it again in %.0f s",
                            ",".join(queues), RESTART_DELAY_S)
                await asyncio.sleep(RESTART_DELAY_S)

    def stop(self, timeout_s: float = 150.0) -> None:
        """Let the jobs in hand finish (``shutdown_graceful_timeout``), then close the pool."""
        if self.loop is not None and self.stopping is not None:
            self.loop.call_soon_threadsafe(self.stopping.set)
        if self.thread is not None:
            self.thread.join(timeout=timeout_s)
