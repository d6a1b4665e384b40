"""store.py
========

The few named queries the pipeline stages need. Only this package touches SQLAlchemy; stages
get plain frozen dataclasses back. Writes on SQLite take the write lock up front
(``BEGIN IMMEDIATE``) so concurrent associations wait on the busy timeout instead of failing.
On other backends (PostgreSQL) each write that reads before it decides locks the study rows it
reads (``SELECT ... FOR UPDATE``, which SQLite leaves out), so the same races are closed there.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import bindparam, create_engine, event, exists, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from sonoshot.db.lifecycle import OUTBOX_WAITING, OutboxState, StudyState, check_move
from sonoshot.db.models import Association, Delivery, Event, Instance, Result, Study, utcnow

MIGRATIONS = Path(__file__).parent / "migrations"
READ_ONLY = "sonoshot_read_only"  # execution option: a plain (deferred) BEGIN, no write lock

# The two statements of an instance received into a study that is receiving (the common case),
# built once: building Core statements from values costs more than running them on SQLite.
_COUNT_INSTANCE = (update(Study)
                   .where(Study.study_instance_uid == bindparam("study_uid"), Study.state == StudyState.RECEIVING.value)
                   .values(instance_count=Study.instance_count + 1,
                           total_bytes=Study.total_bytes + bindparam("size_bytes", type_=Study.total_bytes.type),
                           last_received_at=bindparam("now", type_=Study.last_received_at.type))
                   .returning(Study.id, Study.generation))
_ADD_INSTANCE = insert(Instance)


@dataclass(frozen=True)
class NewInstance:
    """What the receiver knows about an instance it has just made durable in the spool."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    path: str  # relative to the spool folder
    size_bytes: int
    calling_ae_title: str | None = None
    called_ae_title: str | None = None
    patient_pseudonym: str | None = None


@dataclass(frozen=True)
class StudyRef:
    """A study as a stage sees it: identifiers and state, never patient data."""

    id: int
    study_instance_uid: str
    state: StudyState
    generation: int
    calling_ae_title: str | None
    called_ae_title: str | None
    instance_count: int


@dataclass(frozen=True)
class InstanceRef:
    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    path: str
    file_missing: bool


@dataclass(frozen=True)
class NewResult:
    """A result ready for the outbox: its documents are already written to ``sr_path`` (and
    ``key_image_path``). ``kind`` is ``scored``, or ``not-analysed`` with no score, verdict or
    threshold and the study's coded ``reason``."""

    score: float | None
    verdict: str | None
    threshold: float | None
    bundle_sha256: str
    backbone: str
    images_scored: int
    images_quarantined: int
    sr_sop_instance_uid: str
    sr_path: str
    predecessor_sr_uid: str | None
    timings: dict[str, float]
    kind: str = "scored"
    reason: str | None = None
    key_image_sop_instance_uid: str | None = None
    key_image_path: str | None = None


@dataclass(frozen=True)
class ResultRef:
    id: int
    study_instance_uid: str
    generation: int
    sr_sop_instance_uid: str
    sr_path: str
    kind: str = "scored"
    key_image_path: str | None = None

    @property
    def paths(self) -> list[str]:
        """The spool-relative files the outbox sends for this result, the SR first."""
        return [self.sr_path] + ([self.key_image_path] if self.key_image_path else [])


@dataclass(frozen=True)
class DeliveryRef:
    id: int
    destination: str
    attempts: int
    result: ResultRef


def _result_ref(row: Result) -> ResultRef:
    return ResultRef(row.id, row.study.study_instance_uid, row.generation, row.sr_sop_instance_uid, row.sr_path,
                     row.kind, row.key_image_path)


def _study_ref(study: Study) -> StudyRef:
    return StudyRef(study.id, study.study_instance_uid, StudyState(study.state), study.generation,
                    study.calling_ae_title, study.called_ae_title, study.instance_count)


def _sqlite_immediate(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # let us issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across process crashes
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


class Store:
    """The audit and state database behind one SQLAlchemy URL (SQLite by default)."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        sqlite = url.startswith("sqlite")
        self.engine = create_engine(url, pool_pre_ping=not sqlite)  # a file needs no liveness ping
        if sqlite:
            _sqlite_immediate(self.engine)
        self.reader = self.engine.execution_options(**{READ_ONLY: True})
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self.reader, expire_on_commit=False)

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on error."""
        with self._sessions() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for queries only: it never takes the SQLite write lock."""
        with self._read_sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()

    # -- audit -----------------------------------------------------------------------------

    def record_event(self, kind: str, outcome: str, **fields: Any) -> None:
        """Append one audit event (UIDs, AE titles, sizes and a PHI-free ``detail`` dict)."""
        with self.session() as s:
            s.add(Event(kind=kind, outcome=outcome, **fields))

    # -- receiving -------------------------------------------------------------------------

    def open_association(self, calling: str, called: str, peer: str) -> int:
        with self.session() as s:
            row = Association(calling_ae_title=calling, called_ae_title=called, peer_address=peer)
            s.add(row)
            s.flush()
            s.add(Event(kind="association", outcome="accepted", association_id=row.id,
                        calling_ae_title=calling, detail={"peer": peer, "called": called}))
            return row.id

    def close_association(self, association_id: int, outcome: str) -> None:
        with self.session() as s:
            row = s.get(Association, association_id)
            if row is None or row.ended_at is not None:
                return
            row.ended_at, row.outcome = utcnow(), outcome
            count, size = s.execute(select(func.count(), func.coalesce(func.sum(Instance.size_bytes), 0))
                                    .where(Instance.association_id == association_id)).one()
            row.instances_received, row.bytes_received = int(count), int(size)  # PostgreSQL sums are NUMERIC
            s.add(Event(kind="association", outcome=outcome, association_id=row.id,
                        calling_ae_title=row.calling_ae_title,
                        detail={"instances": row.instances_received, "bytes": row.bytes_received}))

    def has_instance(self, sop_instance_uid: str) -> bool:
        with self.reader.connect() as c:
            return bool(c.scalar(select(exists().where(Instance.sop_instance_uid == sop_instance_uid))))

    def record_instance(self, new: NewInstance, association_id: int | None = None) -> bool:
        """Index a durable spool file; returns False if the SOP Instance UID was already known.

        A study that was already complete (or further) is reopened: it goes back to
        ``receiving`` with its generation raised, so its next result supersedes the last.
        This runs once per received instance: for a study that is receiving (the common case) it
        is two prebuilt statements in one transaction, counting the instance in its study and
        inserting its row; the instance row itself is the audit record of the receipt.
        """
        retries = 2  # PostgreSQL: another association may create the study at the same moment
        while True:
            try:
                self._record_instance(new, association_id)
                return True
            except IntegrityError:
                if self.has_instance(new.sop_instance_uid):
                    return False
                if not retries:
                    raise
                retries -= 1  # the retry finds the study the other transaction created

    def _record_instance(self, new: NewInstance, association_id: int | None) -> None:
        now = utcnow()
        with self.engine.begin() as c:
            counted = c.execute(_COUNT_INSTANCE, {"study_uid": new.study_instance_uid, "size_bytes": new.size_bytes,
                                                  "now": now}).first()
            if counted is not None:
                study_id, generation = counted
            else:
                study_id, generation = self._open_study(c, new, now)
            c.execute(_ADD_INSTANCE, {
                "sop_instance_uid": new.sop_instance_uid, "study_id": study_id,
                "series_instance_uid": new.series_instance_uid, "sop_class_uid": new.sop_class_uid,
                "transfer_syntax_uid": new.transfer_syntax_uid, "modality": new.modality, "path": new.path,
                "size_bytes": new.size_bytes, "received_at": now, "association_id": association_id,
                "generation": generation, "file_missing": False})

    @staticmethod
    def _open_study(c: Any, new: NewInstance, now: datetime) -> tuple[int, int]:
        """The first instance of a study, or one that reopens a study past ``receiving``: create or
        reopen the study row, counting the instance; returns its id and generation."""
        study = c.execute(select(Study.id, Study.state, Study.generation)
                          .where(Study.study_instance_uid == new.study_instance_uid).with_for_update()).first()
        if study is None:
            study_id = c.execute(insert(Study).values(
                study_instance_uid=new.study_instance_uid, state=StudyState.RECEIVING.value,
                modality=new.modality, calling_ae_title=new.calling_ae_title,
                called_ae_title=new.called_ae_title, first_received_at=now, receiving_since=now,
                last_received_at=now, state_changed_at=now, patient_pseudonym=new.patient_pseudonym,
                generation=1, instance_count=1, total_bytes=new.size_bytes)).inserted_primary_key[0]
            return study_id, 1
        generation = study.generation
        values: dict[str, Any] = {"instance_count": Study.instance_count + 1,
                                  "total_bytes": Study.total_bytes + new.size_bytes, "last_received_at": now}
        if study.state != StudyState.RECEIVING.value:
            generation += 1
            values.update(state=StudyState.RECEIVING.value, generation=generation, receiving_since=now,
                          state_changed_at=now, completed_at=None)
            c.execute(insert(Event).values(
                kind="study", outcome="reopened", study_instance_uid=new.study_instance_uid,
                sop_instance_uid=new.sop_instance_uid, at=now, detail={"from": study.state, "generation": generation}))
        c.execute(update(Study).where(Study.id == study.id).values(**values))
        return study.id, generation

    # -- completion ------------------------------------------------------------------------

    def complete_quiet_studies(self, quiet_period_s: float, max_wait_s: float,
                               now: datetime | None = None) -> list[StudyRef]:
        """Move ``receiving`` studies that have gone quiet (or waited too long) to ``complete``.

        Quiet means: no instance for ``quiet_period_s`` and no open association has sent an
        instance of the study. ``max_wait_s`` after the study (re)opened, it completes anyway.
        """
        now = now or utcnow()
        still_sending = (
            select(Instance.id).join(Association, Instance.association_id == Association.id)
            .where(Instance.study_id == Study.id, Association.ended_at.is_(None)).exists()
        )
        quiet = (Study.last_received_at <= now - timedelta(seconds=quiet_period_s)) & ~still_sending
        capped = Study.receiving_since <= now - timedelta(seconds=max_wait_s)
        done: list[StudyRef] = []
        with self.session() as s:
            for study in s.scalars(select(Study).where(Study.state == StudyState.RECEIVING.value, quiet | capped)
                                   .with_for_update()):
                study.state, study.completed_at, study.state_changed_at = StudyState.COMPLETE.value, now, now
                s.add(Event(kind="study", outcome="complete", study_instance_uid=study.study_instance_uid,
                            detail={"instances": study.instance_count, "bytes": study.total_bytes,
                                    "generation": study.generation}))
                done.append(_study_ref(study))
        return done

    # -- stage moves -----------------------------------------------------------------------

    def claim_study(self, from_state: StudyState, to_state: StudyState) -> StudyRef | None:
        """Atomically take the oldest study in ``from_state`` and move it to ``to_state``."""
        check_move(from_state, to_state)
        with self.session() as s:
            study = s.scalar(select(Study).where(Study.state == from_state.value)
                             .order_by(Study.state_changed_at, Study.id).limit(1)
                             .with_for_update(skip_locked=True))  # PostgreSQL: no double claim
            if study is None:
                return None
            study.state, study.state_changed_at = to_state.value, utcnow()
            return _study_ref(study)

    def move_study(self, study: StudyRef, to_state: StudyState, detail: str | None = None,
                   route_rule: str | None = None) -> bool:
        """Move ``study`` on if it is still in the state and generation the caller saw.

        Returns False when a late instance reopened the study meanwhile: the caller's work is
        then stale and the next generation will redo it.
        """
        check_move(study.state, to_state)
        with self.session() as s:
            values: dict[str, Any] = {"state": to_state.value, "state_changed_at": utcnow(), "detail": detail}
            if route_rule is not None:
                values["route_rule"] = route_rule
            moved = s.execute(update(Study).where(
                Study.id == study.id, Study.state == study.state.value, Study.generation == study.generation,
            ).values(**values)).rowcount
            if moved:
                s.add(Event(kind="study", outcome=to_state.value, study_instance_uid=study.study_instance_uid,
                            detail={"generation": study.generation, **({"reason": detail} if detail else {})}))
            return bool(moved)

    def study(self, study_instance_uid: str) -> StudyRef | None:
        with self.read_session() as s:
            row = s.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
            return None if row is None else _study_ref(row)

    def instances_of(self, study: StudyRef) -> list[InstanceRef]:
        with self.read_session() as s:
            rows = s.scalars(select(Instance).where(Instance.study_id == study.id).order_by(Instance.id))
            return [InstanceRef(r.sop_instance_uid, r.series_instance_uid, r.sop_class_uid, r.path, r.file_missing)
                    for r in rows]

    # -- restart recovery ------------------------------------------------------------------

    def known_paths(self) -> set[str]:
        with self.read_session() as s:
            return set(s.scalars(select(Instance.path)))

    def recover_after_restart(self, spool_root: Path) -> dict[str, int]:
        """Close associations left open, flag rows whose file is gone, requeue interrupted work."""
        now = utcnow()
        counts = {"associations_interrupted": 0, "files_missing": 0, "studies_requeued": 0}
        with self.session() as s:
            counts["associations_interrupted"] = s.execute(
                update(Association).where(Association.ended_at.is_(None))
                .values(ended_at=now, outcome="interrupted")).rowcount
            for row in s.scalars(select(Instance).where(Instance.file_missing.is_(False))):
                if not (spool_root / row.path).is_file():
                    row.file_missing = True
                    counts["files_missing"] += 1
                    s.add(Event(kind="instance", outcome="file-missing", sop_instance_uid=row.sop_instance_uid,
                                detail={"path": row.path}))
            for study in s.scalars(select(Study).where(Study.state == StudyState.PROCESSING.value)):
                study.state, study.state_changed_at = StudyState.COMPLETE.value, now
                counts["studies_requeued"] += 1
                s.add(Event(kind="study", outcome="requeued", study_instance_uid=study.study_instance_uid))
            s.add(Event(kind="service", outcome="recovered", detail=counts))
        return counts

    # -- de-identification, results and the outbox -----------------------------------------

    def record_deid(self, study: StudyRef, sop_instance_uid: str, ok: bool, reason: str | None) -> None:
        """Note whether an instance was de-identified or quarantined (``reason`` holds no PHI)."""
        with self.session() as s:
            s.execute(update(Instance).where(Instance.sop_instance_uid == sop_instance_uid).values(
                deid_status="ok" if ok else "quarantined", deid_reason=reason))
            s.add(Event(kind="deid", outcome="ok" if ok else "quarantined", study_instance_uid=study.study_instance_uid,
                        sop_instance_uid=sop_instance_uid, detail={"reason": reason} if reason else None))

    def latest_result(self, study: StudyRef) -> ResultRef | None:
        with self.read_session() as s:
            row = s.scalar(select(Result).where(Result.study_id == study.id).order_by(Result.id.desc()).limit(1))
            return None if row is None else _result_ref(row)

    def add_result(self, study: StudyRef, new: NewResult, destinations: list[str],
                   to_state: StudyState = StudyState.REPORTED, detail: str | None = None) -> ResultRef | None:
        """Store a result, queue it for each destination and move the study to ``to_state``
        (``reported`` for a scored result; ``out-of-scope``, ``quarantined`` or ``failed`` for a
        "not analysed" one, with ``detail`` as the study's reason).

        All or nothing, and only if the study is still in the state and generation the worker
        claimed; returns None when a late instance reopened it meanwhile. A result whose SR UID
        exists already (the same study, instances and bundle) is not queued twice.
        """
        check_move(study.state, to_state)
        with self.session() as s:
            moved = s.execute(update(Study).where(
                Study.id == study.id, Study.state == study.state.value, Study.generation == study.generation,
            ).values(state=to_state.value, state_changed_at=utcnow(), detail=detail)).rowcount
            if not moved:
                return None
            if to_state is not StudyState.REPORTED:
                s.add(Event(kind="study", outcome=to_state.value, study_instance_uid=study.study_instance_uid,
                            detail={"generation": study.generation, **({"reason": detail} if detail else {})}))
            row = s.scalar(select(Result).where(Result.sr_sop_instance_uid == new.sr_sop_instance_uid))
            if row is None:
                row = Result(study_id=study.id, generation=study.generation, **vars(new))
                s.add(row)
                s.flush()
                for name in destinations:
                    s.add(Delivery(result_id=row.id, destination=name, state=OutboxState.PENDING.value))
            s.add(Event(kind="result", outcome=new.verdict or new.kind, study_instance_uid=study.study_instance_uid,
                        sop_instance_uid=new.sr_sop_instance_uid,
                        detail={"score": new.score, "threshold": new.threshold, "bundle": new.bundle_sha256,
                                "generation": study.generation, "timings": new.timings,
                                **({"reason": new.reason} if new.reason else {}),
                                **({"key_image": new.key_image_sop_instance_uid}
                                   if new.key_image_sop_instance_uid else {})}))
            s.flush()
            if not destinations:
                s.add(Event(kind="delivery", outcome="no-destination", study_instance_uid=study.study_instance_uid))
            return _result_ref(row)

    def due_deliveries(self, destination: str, now: datetime | None = None, limit: int = 20) -> list[DeliveryRef]:
        now = now or utcnow()
        with self.read_session() as s:
            rows = s.scalars(select(Delivery).where(
                Delivery.destination == destination, Delivery.state == OutboxState.PENDING.value,
                Delivery.next_attempt_at <= now).order_by(Delivery.next_attempt_at, Delivery.id).limit(limit))
            return [DeliveryRef(r.id, r.destination, r.attempts, _result_ref(r.result)) for r in rows]

    def record_attempt(self, delivery: DeliveryRef, delivered: bool, status: str, error: str | None,
                       retry_in_s: float | None) -> OutboxState:
        """Record one delivery attempt; ``retry_in_s`` None means give up (dead-letter).

        The study becomes ``delivered`` once every destination of its latest result has it, and
        ``dead-letter`` once none is pending and any gave up.
        """
        now = utcnow()
        with self.session() as s:
            # PostgreSQL: one destination's attempt at a time per study, so the last one to
            # finish sees every other destination's outcome when it settles the study.
            s.scalar(select(Study).join(Result).join(Delivery).where(Delivery.id == delivery.id)
                     .with_for_update(of=Study))
            row = s.get(Delivery, delivery.id)
            row.attempts += 1
            row.last_status, row.last_error = status, error
            if delivered:
                row.state, row.delivered_at = OutboxState.DELIVERED.value, now
            elif retry_in_s is None:
                row.state = OutboxState.DEAD_LETTER.value
            else:
                row.next_attempt_at = now + timedelta(seconds=retry_in_s)
            study = row.result.study
            s.add(Event(kind="delivery", outcome=row.state if row.state != OutboxState.PENDING.value else "retry",
                        study_instance_uid=study.study_instance_uid, sop_instance_uid=row.result.sr_sop_instance_uid,
                        detail={"destination": row.destination, "attempt": row.attempts, "status": status,
                                **({"error": error} if error else {})}))
            s.flush()
            latest = s.scalar(select(Result.id).where(Result.study_id == study.id).order_by(Result.id.desc()).limit(1))
            states = set(s.scalars(select(Delivery.state).where(Delivery.result_id == latest)))
            if study.state in (StudyState.REPORTED.value, StudyState.DEAD_LETTER.value) and row.result_id == latest \
                    and not states & {w.value for w in OUTBOX_WAITING}:
                final = StudyState.DEAD_LETTER if OutboxState.DEAD_LETTER.value in states else StudyState.DELIVERED
                if final.value != study.state:
                    study.state, study.state_changed_at = final.value, now
                    s.add(Event(kind="study", outcome=final.value, study_instance_uid=study.study_instance_uid))
            return OutboxState(row.state)

    def requeue_dead_letters(self, study_instance_uid: str | None = None) -> int:
        """Put dead-letter deliveries back in the outbox, due now: all of them, or every
        undelivered one (dead-letter or waiting on backoff) of one study."""
        now = utcnow()
        with self.session() as s:
            query = select(Delivery).join(Result).join(Study)
            if study_instance_uid:
                query = query.where(Study.study_instance_uid == study_instance_uid,  # held: `sonoshot release`
                                    Delivery.state.in_([OutboxState.PENDING.value, OutboxState.DEAD_LETTER.value]))
            else:
                query = query.where(Delivery.state == OutboxState.DEAD_LETTER.value)
            rows = list(s.scalars(query))
            for row in rows:
                row.state, row.next_attempt_at = OutboxState.PENDING.value, now
                study = row.result.study
                if study.state == StudyState.DEAD_LETTER.value:
                    study.state, study.state_changed_at = StudyState.REPORTED.value, now
                s.add(Event(kind="delivery", outcome="requeued", study_instance_uid=study.study_instance_uid,
                            detail={"destination": row.destination}))
            return len(rows)

    def requeue_for_reload(self, state: StudyState) -> int:
        """Send studies that ended in ``state`` (``quarantined`` or ``out-of-scope``) back to
        ``complete``, those whose received files are still in the spool: a reload changed what
        decided them. Each gets a ``study/requeued`` audit event."""
        check_move(state, StudyState.COMPLETE)
        now = utcnow()
        live = select(Instance.id).where(Instance.study_id == Study.id, Instance.file_missing.is_(False)).exists()
        with self.session() as s:
            studies = list(s.scalars(select(Study).where(Study.state == state.value, live).with_for_update()))
            for study in studies:
                study.state, study.state_changed_at = StudyState.COMPLETE.value, now
                s.add(Event(kind="study", outcome="requeued", study_instance_uid=study.study_instance_uid,
                            detail={"from": state.value, "why": "reload"}))
            return len(studies)

    def requeue_awaiting_detector(self) -> int:
        """Send studies held for want of a detector back to ``complete`` (a detector is now loaded)."""
        now = utcnow()
        with self.session() as s:
            return s.execute(update(Study).where(Study.state == StudyState.AWAITING_DETECTOR.value)
                             .values(state=StudyState.COMPLETE.value, state_changed_at=now)).rowcount
