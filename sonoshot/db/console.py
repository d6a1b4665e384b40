"""console.py
==========

Read queries behind the web console's pages: a study's timeline, results and observations, the
failed deliveries and studies an admin acts on. Like :mod:`sonoshot.db.queries` they return
plain dataclasses holding only what the database holds: UIDs, pseudonyms, states, scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from sonoshot.db.lifecycle import OutboxState, StudyState
from sonoshot.db.models import Delivery, Event, Observation, Result, Scanner, Study
from sonoshot.db.store import Store


@dataclass(frozen=True)
class TimelineEvent:
    at: datetime
    kind: str
    outcome: str
    study_instance_uid: str | None
    sop_instance_uid: str | None
    detail: dict | None


@dataclass(frozen=True)
class ResultRow:
    id: int
    generation: int
    created_at: datetime
    kind: str  # scored or not-analysed
    reason: str | None  # why nothing was analysed (a coded, PHI-free reason)
    score: float | None  # None for a "not analysed" report
    verdict: str | None
    threshold: float | None
    bundle_sha256: str
    images_scored: int
    images_quarantined: int
    sr_sop_instance_uid: str
    key_image_path: str | None  # the key image's spool-relative path, when the result has one
    deliveries: tuple[tuple[str, str, int, str | None], ...]  # destination, state, attempts, last error


@dataclass(frozen=True)
class ObservedInstance:
    sop_instance_uid: str
    scanner_id: int
    device: str
    body_part: str
    quarantined: bool
    reason: str | None
    score: float | None
    rows: int | None
    columns: int | None
    brightness: float | None


@dataclass(frozen=True)
class StudyDetail:
    study_instance_uid: str
    patient_pseudonym: str | None
    state: str
    generation: int
    instance_count: int
    calling_ae_title: str | None
    first_received_at: datetime
    last_received_at: datetime
    detail: str | None
    results: tuple[ResultRow, ...]  # newest first
    observations: tuple[ObservedInstance, ...]  # highest score first
    timeline: tuple[TimelineEvent, ...]  # oldest first


@dataclass(frozen=True)
class FailedDelivery:
    study_instance_uid: str
    destination: str
    attempts: int
    last_status: str | None
    last_error: str | None
    since: datetime


@dataclass(frozen=True)
class ProblemStudy:
    study_instance_uid: str
    state: str
    state_changed_at: datetime
    detail: str | None


def _describe(row: Scanner) -> str:
    return " / ".join(v for v in (row.manufacturer, row.model, row.software_versions, row.probe) if v) or "unknown"


def study_detail(store: Store, study_instance_uid: str) -> StudyDetail | None:
    """Everything the console shows of one study; None when it is unknown."""
    with store.read_session() as s:
        study = s.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
        if study is None:
            return None
        results = []
        for result in s.scalars(select(Result).where(Result.study_id == study.id).order_by(Result.id.desc())):
            deliveries = tuple((d.destination, d.state, d.attempts, d.last_error) for d in
                               s.scalars(select(Delivery).where(Delivery.result_id == result.id)
                                         .order_by(Delivery.destination)))
            results.append(ResultRow(result.id, result.generation, result.created_at, result.kind, result.reason,
                                     result.score, result.verdict, result.threshold, result.bundle_sha256,
                                     result.images_scored, result.images_quarantined, result.sr_sop_instance_uid,
                                     result.key_image_path, deliveries))
        observed = [ObservedInstance(o.sop_instance_uid, o.scanner_id, _describe(scanner), o.body_part,
                                     o.quarantined, o.reason, o.score, o.rows, o.columns, o.brightness)
                    for o, scanner in s.execute(select(Observation, Scanner).join(Scanner)
                                                .where(Observation.study_id == study.id))]
        observed.sort(key=lambda o: -1.0 if o.score is None else o.score, reverse=True)
        timeline = tuple(TimelineEvent(e.at, e.kind, e.outcome, e.study_instance_uid, e.sop_instance_uid, e.detail)
                         for e in s.scalars(
            select(Event).where(Event.study_instance_uid == study_instance_uid).order_by(Event.at, Event.id)))
        return StudyDetail(study.study_instance_uid, study.patient_pseudonym, study.state, study.generation,
                           study.instance_count, study.calling_ae_title, study.first_received_at,
                           study.last_received_at, study.detail, tuple(results), tuple(observed), timeline)


def failed_deliveries(store: Store, limit: int = 200) -> list[FailedDelivery]:
    """Dead-letter outbox rows, newest first."""
    with store.read_session() as s:
        rows = s.execute(select(Delivery, Study.study_instance_uid).select_from(Delivery)
                         .join(Result, Result.id == Delivery.result_id).join(Study, Study.id == Result.study_id)
                         .where(Delivery.state == OutboxState.DEAD_LETTER.value)
                         .order_by(Delivery.id.desc()).limit(limit))
        return [FailedDelivery(uid, d.destination, d.attempts, d.last_status, d.last_error, d.next_attempt_at)
                for d, uid in rows]


def problem_studies(store: Store, limit: int = 200) -> list[ProblemStudy]:
    """Studies that failed, were quarantined or wait for a detector, newest first."""
    states = [StudyState.FAILED.value, StudyState.QUARANTINED.value, StudyState.AWAITING_DETECTOR.value]
    with store.read_session() as s:
        rows = s.scalars(select(Study).where(Study.state.in_(states))
                         .order_by(Study.state_changed_at.desc()).limit(limit))
        return [ProblemStudy(r.study_instance_uid, r.state, r.state_changed_at, r.detail) for r in rows]


def audit_events(store: Store, since: datetime | None = None, kinds: tuple[str, ...] = ()) -> list[TimelineEvent]:
    """Audit events (optionally of some kinds) since a time, newest first, for the audit page."""
    query = select(Event)
    if since is not None:
        query = query.where(Event.at >= since)
    if kinds:
        query = query.where(Event.kind.in_(kinds))
    with store.read_session() as s:
        return [TimelineEvent(e.at, e.kind, e.outcome, e.study_instance_uid, e.sop_instance_uid, e.detail)
                for e in s.scalars(query.order_by(Event.id.desc()).limit(500))]
