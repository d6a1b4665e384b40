"""queries.py
==========

Read-only queries for the admin CLI, the audit export and the metrics, plus the two writes
retention needs (marking a study's files purged, under the database's write lock). Results are
plain frozen dataclasses and dicts; nothing here returns a patient name, ID or birth date (the
schema holds none, see :mod:`sonoshot.db.models`).

"Since" means: the study received an instance or changed state at or after that time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from sqlalchemy import ColumnElement, Subquery, func, inspect, or_, select, text
from sqlalchemy.orm import Session

from sonoshot.db.lifecycle import SETTLED, OutboxState, StudyState
from sonoshot.db.models import Association, Delivery, Event, Instance, Result, Study
from sonoshot.db.store import Store

#: Event kind the worker records (with ``study_instance_uid``) when it has de-identified a
#: study; the audit export takes the latest one as the study's de-identification time.
DEID_EVENT_KIND = "deid"
#: Event kind of the audit events retention writes.
RETENTION_EVENT_KIND = "retention"
#: Queues shown by ``sonoshot status`` and exported as ``sonoshot_queue_depth``.
QUEUES = ("complete", "processing", "awaiting-detector", "pending-deliveries", "held-deliveries")
#: ``results.kind`` of a detector result; the other kind is ``not-analysed``.
SCORED = "scored"
NOT_ANALYSED = "not-analysed"

_CHUNK = 500  # values per IN (...) list, well under SQLite's variable limit
_T = TypeVar("_T")


@dataclass(frozen=True)
class StudySummary:
    """One line of ``sonoshot status`` / ``sonoshot studies``: identifiers and outcomes only."""

    study_instance_uid: str
    state: str
    instance_count: int
    last_received_at: datetime
    state_changed_at: datetime
    score: float | None  # of the latest result, if any
    verdict: str | None  # normal, abnormal, or "not-analysed (<reason>)"
    delivery: str | None  # "destination:state" per outbox row of the latest result, comma separated


@dataclass(frozen=True)
class AuditRow:
    """One study in the audit export: what happened to it, when, and with which model."""

    study_instance_uid: str
    patient_pseudonym: str | None
    first_received_at: datetime
    last_received_at: datetime
    completed_at: datetime | None
    deidentified_at: datetime | None
    scored_at: datetime | None
    delivered_at: datetime | None  # the latest delivery of the latest result
    instance_count: int
    bundle_sha256: str | None
    score: float | None
    verdict: str | None
    delivery: str | None
    outcome: str  # the study's state


def _chunks(values: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start:start + _CHUNK]


class DatabaseNotReady(RuntimeError):
    """The configured database does not exist yet or has no sonoshot tables."""


def open_existing(url: str) -> Store:
    """A :class:`Store` on an existing, migrated database; unlike ``Store(url)`` it creates nothing.

    Raises
    ------
    DatabaseNotReady
        If the SQLite file is missing or the database has no sonoshot tables (the daemon
        creates them when it starts).
    """
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            raise DatabaseNotReady(f"no database at {path} (database.url); has the daemon run yet?")
    store = Store(url)
    if not inspect(store.engine).has_table(Study.__tablename__):
        store.dispose()
        raise DatabaseNotReady("the database (database.url) has no sonoshot tables; has the daemon run yet?")
    return store


def ping(store: Store) -> None:
    """Run ``SELECT 1``; raises whatever the driver raises when the database is unusable."""
    with store.read_session() as s:
        s.execute(text("SELECT 1"))


def _latest_results() -> Subquery:
    return select(Result.study_id, func.max(Result.id).label("result_id")).group_by(Result.study_id).subquery()


def _active_since(since: datetime) -> ColumnElement[bool]:
    return or_(Study.last_received_at >= since, Study.state_changed_at >= since)


def _filters(since: datetime | None, state: StudyState | str | None) -> list[ColumnElement[bool]]:
    filters: list[ColumnElement[bool]] = []
    if since is not None:
        filters.append(_active_since(since))
    if state is not None:
        filters.append(Study.state == StudyState(state).value)
    return filters


def _deliveries(s: Session, result_ids: Sequence[int]) -> dict[int, list[Delivery]]:
    out: dict[int, list[Delivery]] = {}
    for chunk in _chunks(result_ids):
        rows = s.scalars(select(Delivery).where(Delivery.result_id.in_(chunk)).order_by(Delivery.destination))
        for row in rows:
            out.setdefault(row.result_id, []).append(row)
    return out


def _verdict(result: Result | None) -> str | None:
    if result is None:
        return None
    return result.verdict if result.kind == SCORED else f"{result.kind} ({result.reason})"


def _describe_deliveries(rows: list[Delivery]) -> str | None:
    return ", ".join(f"{d.destination}:{d.state}" for d in rows) or None


def _study_rows(s: Session, filters: list[ColumnElement[bool]],
                limit: int | None) -> list[tuple[Study, Result | None]]:
    latest = _latest_results()
    query = (select(Study, Result).outerjoin(latest, latest.c.study_id == Study.id)
             .outerjoin(Result, Result.id == latest.c.result_id).where(*filters)
             .order_by(Study.last_received_at.desc(), Study.id.desc()))
    if limit is not None:
        query = query.limit(limit)
    return [(study, result) for study, result in s.execute(query).all()]


def recent_studies(store: Store, since: datetime | None = None, state: StudyState | str | None = None,
                   limit: int | None = 50) -> list[StudySummary]:
    """Studies, newest first, with their latest result and its delivery states.

    Parameters
    ----------
    store
        The state database.
    since
        Only studies that received an instance or changed state at or after this time.
    state
        Only studies in this state.
    limit
        At most this many studies; None for all.

    Raises
    ------
    ValueError
        If ``state`` is not a study state.
    """
    with store.read_session() as s:
        rows = _study_rows(s, _filters(since, state), limit)
        deliveries = _deliveries(s, [r.id for _, r in rows if r is not None])
        return [StudySummary(
            study.study_instance_uid, study.state, study.instance_count, study.last_received_at,
            study.state_changed_at, result.score if result else None, _verdict(result),
            _describe_deliveries(deliveries.get(result.id, [])) if result else None,
        ) for study, result in rows]


def _deid_times(s: Session, uids: Sequence[str]) -> dict[str, datetime]:
    out: dict[str, datetime] = {}
    for chunk in _chunks(uids):
        out.update(s.execute(
            select(Event.study_instance_uid, func.max(Event.at))
            .where(Event.kind == DEID_EVENT_KIND, Event.study_instance_uid.in_(chunk))
            .group_by(Event.study_instance_uid)).all())
    return out


def audit_rows(store: Store, since: datetime | None = None) -> list[AuditRow]:
    """Per study, oldest first: receipt, completion, de-identification, scoring and delivery."""
    with store.read_session() as s:
        rows = list(reversed(_study_rows(s, _filters(since, None), None)))
        deliveries = _deliveries(s, [r.id for _, r in rows if r is not None])
        deid = _deid_times(s, [study.study_instance_uid for study, _ in rows])
        out = []
        for study, result in rows:
            sent = deliveries.get(result.id, []) if result else []
            delivered = [d.delivered_at for d in sent if d.delivered_at is not None]
            out.append(AuditRow(
                study.study_instance_uid, study.patient_pseudonym, study.first_received_at,
                study.last_received_at, study.completed_at, deid.get(study.study_instance_uid),
                result.created_at if result else None, max(delivered, default=None), study.instance_count,
                result.bundle_sha256 if result else None, result.score if result else None,
                _verdict(result), _describe_deliveries(sent), study.state))
        return out


def studies_by_state(store: Store) -> dict[str, int]:
    """How many studies are in each state, every state named (zero included)."""
    with store.read_session() as s:
        counts = dict(s.execute(select(Study.state, func.count()).group_by(Study.state)).all())
    return {state.value: counts.get(state.value, 0) for state in StudyState}


def queue_depths(store: Store) -> dict[str, int]:
    """Work waiting in each queue of :data:`QUEUES` (studies per state, outbox rows pending or
    held in shadow mode)."""
    by_state = studies_by_state(store)
    with store.read_session() as s:
        outbox = dict(s.execute(select(Delivery.state, func.count()).where(
            Delivery.state.in_([OutboxState.PENDING.value, OutboxState.HELD.value])).group_by(Delivery.state)).all())
    depths = {**by_state, "pending-deliveries": outbox.get(OutboxState.PENDING.value, 0),
              "held-deliveries": outbox.get(OutboxState.HELD.value, 0)}
    return {queue: depths[queue] for queue in QUEUES}


def not_analysed_by_reason(store: Store) -> dict[str, int]:
    """How many "not analysed" results the database holds, by the study's reason code."""
    with store.read_session() as s:
        return dict(s.execute(select(Result.reason, func.count()).where(Result.kind == NOT_ANALYSED)
                              .group_by(Result.reason)).all())


def open_associations(store: Store) -> int:
    """Associations accepted and not yet ended."""
    with store.read_session() as s:
        return s.scalar(select(func.count()).select_from(Association).where(Association.ended_at.is_(None))) or 0


# -- retention ---------------------------------------------------------------------------------

_SETTLED_VALUES = sorted(state.value for state in SETTLED)


def _settled_before(cutoff: datetime) -> ColumnElement[bool]:
    pending = (select(Delivery.id).join(Result, Delivery.result_id == Result.id)
               .where(Result.study_id == Study.id, Delivery.state == OutboxState.PENDING.value).exists())
    return Study.state.in_(_SETTLED_VALUES) & (Study.state_changed_at <= cutoff) & ~pending


def spool_purge_candidates(store: Store, settled_before: datetime) -> list[str]:
    """Study UIDs settled at or before ``settled_before`` that still have spool files indexed."""
    live = select(Instance.id).where(Instance.study_id == Study.id, Instance.file_missing.is_(False)).exists()
    with store.read_session() as s:
        return list(s.scalars(select(Study.study_instance_uid).where(_settled_before(settled_before), live)
                              .order_by(Study.state_changed_at)))


def settled_studies(store: Store, study_uids: Iterable[str], settled_before: datetime) -> list[str]:
    """Those of ``study_uids`` whose study has been settled since ``settled_before`` or longer."""
    uids = sorted(set(study_uids))
    out: list[str] = []
    with store.read_session() as s:
        for chunk in _chunks(uids):
            out += s.scalars(select(Study.study_instance_uid)
                             .where(Study.study_instance_uid.in_(chunk), _settled_before(settled_before)))
    return out


def _lock_settled(s: Session, study_uid: str, settled_before: datetime) -> Study | None:
    # SQLite: the session began with BEGIN IMMEDIATE, so no receiver or worker can move the study
    # until we commit. Other backends: the row lock does the same for this study.
    return s.scalar(select(Study).where(Study.study_instance_uid == study_uid, _settled_before(settled_before))
                    .with_for_update())


def mark_spool_purged(store: Store, study_uid: str, settled_before: datetime,
                      delete: Callable[[list[str]], int]) -> int | None:
    """Delete a settled study's spool files and flag its instances ``file_missing``, atomically.

    While the study row is locked, ``delete`` gets the spool-relative paths of its instances
    (those not yet flagged missing) and of its SR documents and key images, and returns how many files it
    removed. An audit event ``retention/spool-purged`` is recorded when files were indexed.

    Returns
    -------
    int or None
        Files removed; None when the study is unknown or no longer settled that long (a late
        instance reopened it), in which case ``delete`` is not called.
    """
    with store.session() as s:
        study = _lock_settled(s, study_uid, settled_before)
        if study is None:
            return None
        instances = list(s.scalars(select(Instance).where(Instance.study_id == study.id,
                                                          Instance.file_missing.is_(False))))
        reports = [path for row in s.execute(select(Result.sr_path, Result.key_image_path)
                                             .where(Result.study_id == study.id)) for path in row if path]
        removed = delete([i.path for i in instances] + reports)
        for instance in instances:
            instance.file_missing = True
        if instances:
            s.add(Event(kind=RETENTION_EVENT_KIND, outcome="spool-purged", study_instance_uid=study_uid,
                        detail={"state": study.state, "instances": len(instances), "files_removed": removed}))
        return removed


def mark_work_purged(store: Store, study_uid: str, settled_before: datetime, delete: Callable[[], int]) -> int | None:
    """Delete a settled study's de-identified copies (``delete``) while its row is locked.

    Records ``retention/work-purged`` when ``delete`` removed anything.

    Returns
    -------
    int or None
        What ``delete`` returned (files removed); None when the study is unknown or no longer
        settled that long, in which case ``delete`` is not called.
    """
    with store.session() as s:
        study = _lock_settled(s, study_uid, settled_before)
        if study is None:
            return None
        removed = delete()
        if removed:
            s.add(Event(kind=RETENTION_EVENT_KIND, outcome="work-purged", study_instance_uid=study_uid,
                        detail={"state": study.state, "files_removed": removed}))
        return removed
