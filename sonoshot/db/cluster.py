"""cluster.py
==========

The SQL that ties the store to procrastinate's tables on PostgreSQL (cluster mode):

* :class:`ProcrastinateDeferrer` inserts jobs with procrastinate's own
  ``procrastinate_defer_jobs_v1`` function *on the caller's connection*, so a stage's next job
  commits or rolls back with the study-row update that made it due (procrastinate's connectors
  open connections of their own and could not join that transaction);
* :func:`take_over_stalled` finds running jobs whose worker stopped sending heartbeats, marks
  each ``failed`` and defers a takeover job in its place, in one transaction; the stalled
  worker, should it wake up, is fenced off by the study lease (:mod:`sonoshot.db.store`);
* :func:`requeue_unqueued` gives every study or delivery that waits (or runs) without any job a
  job again, which covers jobs lost to a database restore or an operator's ``DELETE``;
* :func:`apply_schema` creates procrastinate's schema once, under an advisory lock.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from sonoshot.db.lifecycle import STAGE_STATES, OutboxState
from sonoshot.db.work import TASK_NAMES, Job, Lane

log = logging.getLogger(__name__)

#: pg_advisory_xact_lock key serialising schema creation across processes that start together.
SCHEMA_LOCK = 0x736F6E6F  # "sono"

_DEFER = text(
    "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW(:queue, :task, :priority, :lock, :queueing_lock, "
    "CAST(:args AS jsonb), CAST(:scheduled_at AS timestamptz))]::procrastinate_job_to_defer_v1[])")

_STALLED = text(
    "SELECT job.id, job.task_name, job.args FROM procrastinate_jobs job "
    "LEFT JOIN procrastinate_workers worker ON worker.id = job.worker_id "
    "WHERE job.status = 'doing' "
    "AND (worker.id IS NULL OR worker.last_heartbeat < NOW() - make_interval(secs => :seconds)) "
    "ORDER BY job.id FOR UPDATE OF job SKIP LOCKED")

_FAIL = text("SELECT procrastinate_finish_job_v1(:id, 'failed', false)")

_UNQUEUED_STUDIES = text(
    "SELECT s.study_instance_uid, s.generation, s.lane, s.state FROM studies s "
    "WHERE s.state = ANY(:states) AND s.state_changed_at < :cutoff AND NOT EXISTS ("
    "SELECT 1 FROM procrastinate_jobs job WHERE job.lock = 'study:' || s.study_instance_uid "
    "AND job.status IN ('todo', 'doing')) "
    "ORDER BY s.id FOR UPDATE OF s SKIP LOCKED")

_UNQUEUED_DELIVERIES = text(
    "SELECT d.id, d.destination, d.next_attempt_at, s.study_instance_uid, s.generation, s.lane "
    "FROM deliveries d JOIN results r ON r.id = d.result_id JOIN studies s ON s.id = r.study_id "
    "WHERE d.state = :pending AND d.created_at < :cutoff AND NOT EXISTS ("
    "SELECT 1 FROM procrastinate_jobs job WHERE job.lock = 'delivery:' || d.id "
    "AND job.status IN ('todo', 'doing')) "
    "ORDER BY d.id FOR UPDATE OF d SKIP LOCKED")


def _naive_utc(moment: datetime) -> datetime:
    """The store keeps UTC as ``timestamp without time zone`` (:class:`sonoshot.db.models.UTCDateTime`)."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


class ProcrastinateDeferrer:
    """Defers jobs as procrastinate rows in the caller's transaction."""

    def defer(self, connection: Connection, jobs: Sequence[Job]) -> None:
        for job in jobs:
            connection.execute(_DEFER, {
                "queue": job.queue, "task": TASK_NAMES[job.stage], "priority": job.priority, "lock": job.lock,
                "queueing_lock": job.queueing_lock, "args": json.dumps(job.args()),
                "scheduled_at": job.not_before})


def take_over_stalled(engine: Engine, stall_timeout_s: float) -> list[Job]:
    """Fail the running jobs of workers silent for ``stall_timeout_s``; defer a takeover job for
    each stage job among them (a periodic one simply runs again next period).

    Returns
    -------
    list of Job
        The takeover jobs deferred (``takeover=True``: their claim may take the running study).
    """
    stage_of = {task: stage for stage, task in TASK_NAMES.items()}
    deferred: list[Job] = []
    with engine.begin() as c:
        for row in c.execute(_STALLED, {"seconds": stall_timeout_s}).all():
            c.execute(_FAIL, {"id": row.id})
            if row.task_name not in stage_of:
                log.warning("job %d (%s) stalled: its worker sent no heartbeat for %.0f s", row.id, row.task_name,
                            stall_timeout_s)
                continue
            job = Job.from_args(stage_of[row.task_name], {**row.args, "takeover": True})
            ProcrastinateDeferrer().defer(c, [job])
            log.warning("job %d (%s of study %s) stalled: its worker sent no heartbeat for %.0f s; taken over",
                        row.id, job.stage, job.study_instance_uid, stall_timeout_s)
            deferred.append(job)
    return deferred


def requeue_unqueued(engine: Engine, older_than_s: float, now: datetime | None = None) -> list[Job]:
    """Defer a job for each study waiting or running, and each pending delivery, that has none.

    Only rows unchanged for ``older_than_s`` count, so a transaction committing its job right
    now is never doubled (a doubled job would find nothing to claim anyway).
    """
    cutoff = _naive_utc((now or datetime.now(timezone.utc)) - timedelta(seconds=older_than_s))
    stage_due = {due.value: stage for stage, (due, _running) in STAGE_STATES.items()}
    stage_running = {running.value: stage for stage, (_due, running) in STAGE_STATES.items()}
    jobs: list[Job] = []
    with engine.begin() as c:
        states = [*stage_due, *stage_running]
        for row in c.execute(_UNQUEUED_STUDIES, {"states": states, "cutoff": cutoff}).all():
            running = row.state in stage_running
            jobs.append(Job(stage_running[row.state] if running else stage_due[row.state], row.study_instance_uid,
                            row.generation, Lane(row.lane), takeover=running))
        for row in c.execute(_UNQUEUED_DELIVERIES, {"pending": OutboxState.PENDING.value, "cutoff": cutoff}).all():
            jobs.append(Job("deliver", row.study_instance_uid, row.generation, Lane(row.lane), delivery_id=row.id,
                            destination=row.destination,
                            not_before=row.next_attempt_at.replace(tzinfo=timezone.utc)))
        ProcrastinateDeferrer().defer(c, jobs)
    for job in jobs:
        log.warning("%s job for study %s had no queued job; deferred again", job.stage, job.study_instance_uid)
    return jobs


def apply_schema(engine: Engine) -> bool:
    """Create procrastinate's tables and functions unless they exist; returns whether it did."""
    from procrastinate.schema import SchemaManager

    with engine.begin() as c:
        c.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        if c.scalar(text("SELECT to_regclass('procrastinate_jobs')")) is not None:
            return False
        with c.connection.dbapi_connection.cursor() as cursor:  # no parameters: the '%' in it stay literal
            cursor.execute(SchemaManager.get_schema())
    return True


def prune_finished_jobs(engine: Engine, keep_hours: int) -> None:
    """Delete jobs that succeeded, failed or were cancelled more than ``keep_hours`` ago
    (procrastinate's own ``delete_old_jobs`` query)."""
    from procrastinate import sql

    with engine.begin() as c:
        c.exec_driver_sql(sql.queries["delete_old_jobs"], {
            "nb_hours": keep_hours, "queue": None, "statuses": ["succeeded", "failed", "cancelled", "aborted"]})
