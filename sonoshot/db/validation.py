"""validation.py
=============

The database side of validating and watching the detector at a site: ground-truth feedback
per study, the scanners seen and what the detector observed of each instance (device, image
statistics, score, quarantine), and the joins ``sonoshot performance`` and the drift job read.
Nothing here holds a patient name, ID or birth date: device attributes are PHI-screened before
they arrive (:mod:`sonoshot.validation.observe`) and finding text before it is stored
(:mod:`sonoshot.validation.feedback`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sonoshot.db.models import Event, Feedback, Observation, Result, Scanner, Study, utcnow
from sonoshot.db.store import Store, StudyRef

LABELS = ("normal", "abnormal")
CHANNELS = ("cli", "csv", "console")


class UnknownStudy(LookupError):
    """Feedback names a Study Instance UID the database has never seen."""


@dataclass(frozen=True)
class Device:
    """PHI-free device attributes of a received instance; empty strings when absent."""

    manufacturer: str
    model: str
    software_versions: str
    probe: str

    def describe(self) -> str:
        parts = [self.manufacturer or "?", self.model or "?"]
        if self.software_versions:
            parts.append(f"sw {self.software_versions}")
        if self.probe:
            parts.append(f"probe {self.probe}")
        return " / ".join(parts)


@dataclass(frozen=True)
class NewObservation:
    """One instance as the detector saw it (``score`` None when it was quarantined or unscored)."""

    sop_instance_uid: str
    device: Device
    body_part: str
    quarantined: bool
    reason: str | None
    score: float | None
    rows: int | None
    columns: int | None
    brightness: float | None


@dataclass(frozen=True)
class NewFeedback:
    """A label for a study, already validated and screened, with who gave it and from where."""

    study_instance_uid: str
    label: str
    recorded_by: str
    channel: str
    origin: str
    finding: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(f'Argument "label" must be one of {", ".join(LABELS)}; got {self.label!r}.')
        if self.channel not in CHANNELS:
            raise ValueError(f'Argument "channel" must be one of {", ".join(CHANNELS)}; got {self.channel!r}.')
        if not self.recorded_by:
            raise ValueError('Argument "recorded_by" must not be empty.')


@dataclass(frozen=True)
class ScannerRef:
    id: int
    device: Device
    first_seen_at: datetime


@dataclass(frozen=True)
class ObservationRow:
    """An observation with its scanner and study, for drift."""

    scanner_id: int
    study_instance_uid: str
    at: datetime
    quarantined: bool
    reason: str | None
    score: float | None
    rows: int | None
    columns: int | None
    brightness: float | None


@dataclass(frozen=True)
class LabelledResult:
    """The latest result of a study that has a label: what ``sonoshot performance`` scores."""

    study_instance_uid: str
    scored_at: datetime
    score: float
    threshold: float
    verdict: str
    bundle_sha256: str
    label: str
    scanner: str  # the study's most frequent scanner, described; "unknown" without observations
    organ: str  # the study's most frequent BodyPartExamined; "unknown" when absent


@dataclass(frozen=True)
class FeedbackRow:
    at: datetime
    label: str
    finding: str | None
    source: str | None
    recorded_by: str
    channel: str
    origin: str


def _device(row: Scanner) -> Device:
    return Device(row.manufacturer, row.model, row.software_versions, row.probe)


def _scanner(s: Session, device: Device, study_uid: str) -> int:
    row = s.scalar(select(Scanner).where(Scanner.manufacturer == device.manufacturer, Scanner.model == device.model,
                                         Scanner.software_versions == device.software_versions,
                                         Scanner.probe == device.probe))
    if row is not None:
        return row.id
    row = Scanner(manufacturer=device.manufacturer, model=device.model,
                  software_versions=device.software_versions, probe=device.probe)
    s.add(row)
    s.flush()
    s.add(Event(kind="scanner", outcome="first-seen", study_instance_uid=study_uid,
                detail={"scanner": row.id, "manufacturer": device.manufacturer, "model": device.model,
                        "software_versions": device.software_versions, "probe": device.probe}))
    return row.id


def record_observations(store: Store, study: StudyRef, observations: Sequence[NewObservation]) -> None:
    """Replace the study's observations with those of its current generation; a device never seen
    before becomes a scanner and an audit event ``scanner/first-seen``.

    On PostgreSQL two workers may meet the same new device at once: the loser of the insert
    retries once and finds the winner's scanner.
    """
    try:
        _record_observations(store, study, observations)
    except IntegrityError:
        _record_observations(store, study, observations)


def _record_observations(store: Store, study: StudyRef, observations: Sequence[NewObservation]) -> None:
    with store.session() as s:
        s.execute(delete(Observation).where(Observation.study_id == study.id))
        for new in observations:
            s.add(Observation(
                study_id=study.id, generation=study.generation, sop_instance_uid=new.sop_instance_uid,
                scanner_id=_scanner(s, new.device, study.study_instance_uid), body_part=new.body_part,
                quarantined=new.quarantined, reason=new.reason, score=new.score, rows=new.rows,
                columns=new.columns, brightness=new.brightness))


def scanners(store: Store) -> list[ScannerRef]:
    with store.read_session() as s:
        return [ScannerRef(r.id, _device(r), r.first_seen_at) for r in s.scalars(select(Scanner).order_by(Scanner.id))]


def observations(store: Store, since: datetime | None = None, until: datetime | None = None) -> list[ObservationRow]:
    """Observations made in ``[since, until)``, oldest first."""
    query = select(Observation, Study.study_instance_uid).join(Study, Study.id == Observation.study_id)
    if since is not None:
        query = query.where(Observation.at >= since)
    if until is not None:
        query = query.where(Observation.at < until)
    with store.read_session() as s:
        return [ObservationRow(o.scanner_id, uid, o.at, o.quarantined, o.reason, o.score, o.rows, o.columns,
                               o.brightness)
                for o, uid in s.execute(query.order_by(Observation.at, Observation.id))]


def record_feedback(store: Store, new: NewFeedback) -> None:
    """Store a label and its audit event (who, through which door, from where).

    Raises
    ------
    UnknownStudy
        If the study has never been received.
    """
    with store.session() as s:
        study_id = s.scalar(select(Study.id).where(Study.study_instance_uid == new.study_instance_uid))
        if study_id is None:
            raise UnknownStudy(f"no study {new.study_instance_uid} in the database")
        s.add(Feedback(study_id=study_id, at=utcnow(), label=new.label, finding=new.finding, source=new.source,
                       recorded_by=new.recorded_by, channel=new.channel, origin=new.origin))
        s.add(Event(kind="feedback", outcome=new.label, study_instance_uid=new.study_instance_uid,
                    detail={"by": new.recorded_by, "channel": new.channel, "origin": new.origin,
                            "source": new.source, "finding": new.finding is not None}))


def feedback_of(store: Store, study_instance_uid: str) -> list[FeedbackRow]:
    """Every label given for a study, oldest first (the last one counts)."""
    with store.read_session() as s:
        rows = s.scalars(select(Feedback).join(Study).where(Study.study_instance_uid == study_instance_uid)
                         .order_by(Feedback.id))
        return [FeedbackRow(r.at, r.label, r.finding, r.source, r.recorded_by, r.channel, r.origin) for r in rows]


def _most_common(values: list[str]) -> str:
    values = [v for v in values if v]
    return Counter(values).most_common(1)[0][0] if values else "unknown"


def labelled_results(store: Store, since: datetime | None = None, until: datetime | None = None
                     ) -> list[LabelledResult]:
    """Each labelled study's latest result made in ``[since, until)``, with its latest label
    (a study whose latest result is a "not analysed" report has no score to judge)."""
    latest_result = select(func.max(Result.id)).group_by(Result.study_id).scalar_subquery()
    latest_label = select(func.max(Feedback.id)).group_by(Feedback.study_id).scalar_subquery()
    query = (select(Result, Feedback.label, Study.study_instance_uid)
             .join(Study, Study.id == Result.study_id).join(Feedback, Feedback.study_id == Study.id)
             .where(Result.id.in_(latest_result), Feedback.id.in_(latest_label)))
    if since is not None:
        query = query.where(Result.created_at >= since)
    if until is not None:
        query = query.where(Result.created_at < until)
    with store.read_session() as s:
        rows = s.execute(query.order_by(Result.created_at, Result.id)).all()
        devices = {r.id: _device(r).describe() for r in s.scalars(select(Scanner))}
        seen: dict[int, tuple[list[str], list[str]]] = {}
        for study_id, scanner_id, body_part in s.execute(
                select(Observation.study_id, Observation.scanner_id, Observation.body_part)
                .where(Observation.study_id.in_(select(Feedback.study_id)))):
            scan, organ = seen.setdefault(study_id, ([], []))
            scan.append(devices[scanner_id])
            organ.append(body_part)
        out = []
        for result, label, uid in rows:
            if result.score is None:  # the study's latest result says it was not analysed
                continue
            scan, organ = seen.get(result.study_id, ([], []))
            out.append(LabelledResult(uid, result.created_at, result.score, result.threshold, result.verdict,
                                      result.bundle_sha256, label, _most_common(scan), _most_common(organ)))
        return out


DRIFT_EVENT_KIND = "drift"


def drift_flags(store: Store) -> dict[int, bool]:
    """Each scanner's last recorded drift state (``drift/flagged`` or ``drift/cleared`` event)."""
    with store.read_session() as s:
        rows = s.scalars(select(Event).where(Event.kind == DRIFT_EVENT_KIND).order_by(Event.id))
        return {int(e.detail["scanner"]): e.outcome == "flagged" for e in rows if e.detail and "scanner" in e.detail}
