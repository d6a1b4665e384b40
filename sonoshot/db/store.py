"""store.py
========

The few named queries the pipeline stages need. Only this package touches SQLAlchemy; stages
get plain frozen dataclasses back. Writes on SQLite take the write lock up front
(``BEGIN IMMEDIATE``) so concurrent associations wait on the busy timeout instead of failing.
On other backends (PostgreSQL) each write that reads before it decides locks the study rows it
reads (``SELECT ... FOR UPDATE``, which SQLite leaves out), so the same races are closed there.

Stages claim a study by moving it into its running state and raising its ``lease``; each of their
writes names the lease it holds and is refused once another claim took the study over (a worker
that was paused past its stall timeout cannot overwrite the result of the retry). A move that
makes the next stage due hands its job to the :class:`~sonoshot.db.work.Deferrer` in the same
transaction.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import bindparam, case, create_engine, event, exists, func, insert, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from sonoshot.db.lifecycle import OUTBOX_WAITING, STAGE_STATES, OutboxState, StudyState, check_move
from sonoshot.db.models import Association, Delivery, Event, Instance, PeriodicRun, Result, Study, utcnow
from sonoshot.db.work import Deferrer, Job, Lane, WakeDeferrer

MIGRATIONS = Path(__file__).parent / "migrations"
READ_ONLY = "sonoshot_read_only"  # execution option: a plain (deferred) BEGIN, no write lock
MIGRATION_LOCK = 0x736F6E70  # pg_advisory_xact_lock key: processes starting together migrate in turn
#: The stage due when a study enters each state (the inverse of STAGE_STATES' first column).
DUE_STAGE = {due: stage for stage, (due, _running) in STAGE_STATES.items()}

# The two statements of an instance received into a study that is receiving (the common case),
# built once: building Core statements from values costs more than running them on SQLite.
_COUNT_INSTANCE = (update(Study)
                   .where(Study.study_instance_uid == bindparam("study_uid"), Study.state == StudyState.RECEIVING.value)
                   .values(instance_count=Study.instance_count + 1,
                           total_bytes=Study.total_bytes + bindparam("size_bytes", type_=Study.total_bytes.type),
                           last_received_at=bindparam("now", type_=Study.last_received_at.type))
                   .returning(Study.id, Study.generation))
_ADD_INSTANCE = insert(Instance)
_OPEN_ASSOCIATION = insert(Association).returning(Association.id)
_ADD_EVENT = insert(Event)
#: Whether any study waits in a state: the pool asks it several times a second while idle.
_ANY_IN_STATE = select(Study.id).where(Study.state == bindparam("state")).limit(1)
_RECEIVED = select(func.count()).where(Instance.association_id == Association.id).scalar_subquery()
_RECEIVED_BYTES = select(func.coalesce(func.sum(Instance.size_bytes), 0)) \
    .where(Instance.association_id == Association.id).scalar_subquery()
_CLOSE_ASSOCIATION = (update(Association)
                      .where(Association.id == bindparam("row_id"), Association.ended_at.is_(None))
                      .values(ended_at=bindparam("ended", type_=Association.ended_at.type), outcome=bindparam("how"),
                              instances_received=_RECEIVED, bytes_received=_RECEIVED_BYTES)
                      .returning(Association.calling_ae_title, Association.instances_received,
                                 Association.bytes_received))


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
    pending_upload: str | None = None  # cluster receivers: this node holds the only copy until uploaded
    lane: Lane = Lane.LIVE  # of a study this instance creates


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
    lease: int = 0  # the claim this reference holds (0: none)
    lane: Lane = Lane.LIVE


@dataclass(frozen=True)
class InstanceRef:
    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    path: str
    file_missing: bool
    deid_status: str | None = None  # ok, quarantined, out-of-scope
    deid_reason: str | None = None
    work_path: str | None = None  # key of the de-identified working copy
    not_analysed_reason: str | None = None  # the code of why it was left out


@dataclass(frozen=True)
class DeidRecord:
    """What de-identification made of one instance: a working copy (``work_path``), or left out
    (``status`` quarantined or out-of-scope) with a PHI-free ``reason`` and the "not analysed"
    reason ``code`` (:class:`sonoshot.dicom_io.not_analysed.NotAnalysedReason`)."""

    sop_instance_uid: str
    status: str  # ok, quarantined, out-of-scope
    work_path: str | None = None  # key of the working copy when ok
    reason: str | None = None
    code: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


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
        """The keys (in the reports store) of the documents the outbox sends, the SR first."""
        return [self.sr_path] + ([self.key_image_path] if self.key_image_path else [])


@dataclass(frozen=True)
class DeliveryRef:
    id: int
    destination: str
    attempts: int
    result: ResultRef
    lease: int = 0  # the send claim this reference holds (0: none)


def _result_ref(row: Result) -> ResultRef:
    return ResultRef(row.id, row.study.study_instance_uid, row.generation, row.sr_sop_instance_uid, row.sr_path,
                     row.kind, row.key_image_path)


def _study_ref(study: Study) -> StudyRef:
    return StudyRef(study.id, study.study_instance_uid, StudyState(study.state), study.generation,
                    study.calling_ae_title, study.called_ae_title, study.instance_count, study.lease,
                    Lane(study.lane))


def _delivery_ref(row: Delivery) -> DeliveryRef:
    return DeliveryRef(row.id, row.destination, row.attempts, _result_ref(row.result), row.lease)


def _held(study: StudyRef):
    """The WHERE clause of a write by the holder of ``study``'s claim: same state, generation, lease."""
    return (Study.id == study.id) & (Study.state == study.state.value) & (Study.generation == study.generation) \
        & (Study.lease == study.lease)


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

    def __init__(self, url: str, deferrer: Deferrer | None = None, connections: int = 5) -> None:
        """``connections``: the pool's steady size (10 more may open under load); a daemon sizes
        it to its concurrency, so that a flood of associations cannot leave a handler waiting
        for a connection."""
        self.deferrer: Deferrer = deferrer or WakeDeferrer()
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        sqlite = url.startswith("sqlite")
        self.engine = create_engine(url, pool_pre_ping=not sqlite,  # a file needs no liveness ping
                                    pool_size=connections, max_overflow=10)
        if sqlite:
            _sqlite_immediate(self.engine)
        # SQLite has one writer at a time, and its busy handler makes the others sleep and retry
        # (up to 100 ms a try, in no order): under a flood of associations one thread could lose
        # for seconds. Writers in this process queue on a lock instead; other processes still
        # meet the busy timeout.
        self._writer: contextlib.AbstractContextManager = threading.RLock() if sqlite else contextlib.nullcontext()
        self.reader = self.engine.execution_options(**{READ_ONLY: True})
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self.reader, expire_on_commit=False)

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.transaction() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A Core connection in a write transaction (committed on success), for prebuilt statements."""
        with self._writer, self.engine.begin() as connection:
            yield connection

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on error."""
        with self._writer, self._sessions() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for queries only: it never takes the SQLite write lock."""
        with self._read_sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()

    def _defer_due(self, connection: Connection, study: Study | StudyRef, to_state: StudyState) -> None:
        """Defer the stage job that ``to_state`` makes due, if any, in ``connection``'s transaction."""
        stage = DUE_STAGE.get(to_state)
        if stage is not None:
            self.deferrer.defer(connection, [Job(stage, study.study_instance_uid, study.generation,
                                                 Lane(study.lane))])

    # -- audit -----------------------------------------------------------------------------

    def record_event(self, kind: str, outcome: str, **fields: Any) -> None:
        """Append one audit event (UIDs, AE titles, sizes and a PHI-free ``detail`` dict)."""
        with self.session() as s:
            s.add(Event(kind=kind, outcome=outcome, **fields))

    # -- receiving -------------------------------------------------------------------------

    def open_association(self, calling: str, called: str, peer: str, node: str | None = None) -> int:
        """Record an accepted association and its audit event; returns the association's id.

        This and :meth:`close_association` run for every association, so a peer opening many
        costs two short transactions each: prebuilt statements, no ORM unit of work.
        """
        with self.transaction() as c:
            row_id = c.execute(_OPEN_ASSOCIATION, {"calling_ae_title": calling, "called_ae_title": called,
                                                   "peer_address": peer, "node": node}).scalar_one()
            c.execute(_ADD_EVENT, {"kind": "association", "outcome": "accepted", "association_id": row_id,
                                   "calling_ae_title": calling, "detail": {"peer": peer, "called": called}})
            return row_id

    def close_association(self, association_id: int, outcome: str) -> None:
        """Record how an association ended and what it stored (once; later calls do nothing)."""
        with self.transaction() as c:
            closed = c.execute(_CLOSE_ASSOCIATION, {"row_id": association_id, "ended": utcnow(),
                                                    "how": outcome}).first()
            if closed is None:
                return
            calling, count, size = closed
            c.execute(_ADD_EVENT, {"kind": "association", "outcome": outcome, "association_id": association_id,
                                   "calling_ae_title": calling,
                                   "detail": {"instances": int(count), "bytes": int(size)}})  # PostgreSQL: NUMERIC

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
        with self.transaction() as c:
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
                "generation": generation, "file_missing": False, "pending_upload": new.pending_upload})

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
                generation=1, instance_count=1, total_bytes=new.size_bytes, lane=Lane(new.lane).value,
                lease=0)).inserted_primary_key[0]
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

    def next_completion_at(self, quiet_period_s: float, max_wait_s: float) -> datetime | None:
        """When the next ``receiving`` study goes quiet or reaches ``max_wait_s``, if it stays as it
        is (None without such a study); a time in the past: one is due or held by an open association."""
        with self.reader.connect() as c:
            last, since = c.execute(select(func.min(Study.last_received_at), func.min(Study.receiving_since))
                                    .where(Study.state == StudyState.RECEIVING.value)).one()
        if last is None:
            return None
        return min(last + timedelta(seconds=quiet_period_s), since + timedelta(seconds=max_wait_s))

    def complete_quiet_studies(self, quiet_period_s: float, max_wait_s: float,
                               now: datetime | None = None) -> list[StudyRef]:
        """Move ``receiving`` studies that have gone quiet (or waited too long) to ``complete``.

        Quiet means: no instance for ``quiet_period_s`` and no open association has sent an
        instance of the study. ``max_wait_s`` after the study (re)opened, it completes anyway.
        Either way every instance must have reached the object store (no upload pending on a
        receiver). Each completed study's de-identification job is deferred with the move. A
        sweep that finds nothing due reads only (it runs every ``completion.sweep_interval_s``).
        """
        now = now or utcnow()
        still_sending = (
            select(Instance.id).join(Association, Instance.association_id == Association.id)
            .where(Instance.study_id == Study.id, Association.ended_at.is_(None)).exists()
        )
        uploading = select(Instance.id).where(Instance.study_id == Study.id,
                                              Instance.pending_upload.is_not(None)).exists()
        quiet = (Study.last_received_at <= now - timedelta(seconds=quiet_period_s)) & ~still_sending
        capped = Study.receiving_since <= now - timedelta(seconds=max_wait_s)
        due = (Study.state == StudyState.RECEIVING.value) & (quiet | capped) & ~uploading
        with self.read_session() as s:  # most sweeps find nothing: they need not take the write lock
            if s.scalar(select(Study.id).where(due).limit(1)) is None:
                return []
        with self.session() as s:
            studies = list(s.scalars(select(Study).where(due).with_for_update()))
            return [self._complete(s, study, now) for study in studies]

    def _complete(self, s: Session, study: Study, now: datetime) -> StudyRef:
        study.state, study.completed_at, study.state_changed_at = StudyState.COMPLETE.value, now, now
        s.add(Event(kind="study", outcome="complete", study_instance_uid=study.study_instance_uid,
                    detail={"instances": study.instance_count, "bytes": study.total_bytes,
                            "generation": study.generation, "lane": study.lane}))
        self._defer_due(s.connection(), study, StudyState.COMPLETE)
        return _study_ref(study)

    def complete_study(self, study_instance_uid: str) -> StudyRef | None:
        """Complete one ``receiving`` study now (an archive import: nothing more will arrive).

        Returns None when the study is unknown, not receiving (an import that was restarted
        finds it complete or further) or still has an upload pending.
        """
        now = utcnow()
        with self.session() as s:
            study = s.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid,
                                                 Study.state == StudyState.RECEIVING.value).with_for_update())
            if study is None or s.scalar(select(exists().where(Instance.study_id == study.id,
                                                               Instance.pending_upload.is_not(None)))):
                return None
            return self._complete(s, study, now)

    # -- stage moves -----------------------------------------------------------------------

    def claim_study(self, from_state: StudyState, to_state: StudyState, look_first: bool = False) -> StudyRef | None:
        """Atomically take the oldest study in ``from_state`` (live before archive), move it to
        ``to_state`` and raise its lease; the returned reference holds the claim. ``look_first``:
        return at once, without the write lock, when no study is in ``from_state`` (an idle pool's
        poll; a transaction still open that moves one there is not seen)."""
        check_move(from_state, to_state)
        if look_first:
            with self.reader.connect() as c:
                if c.execute(_ANY_IN_STATE, {"state": from_state.value}).first() is None:
                    return None
        with self.session() as s:
            study = s.scalar(select(Study).where(Study.state == from_state.value)
                             .order_by(case((Study.lane == Lane.ARCHIVE.value, 1), else_=0),
                                       Study.state_changed_at, Study.id).limit(1)
                             .with_for_update(skip_locked=True))  # PostgreSQL: no double claim
            if study is None:
                return None
            self._take(study, to_state)
            return _study_ref(study)

    @staticmethod
    def _take(study: Study, to_state: StudyState) -> None:
        study.state, study.state_changed_at, study.lease = to_state.value, utcnow(), study.lease + 1
        if to_state is STAGE_STATES["deid"][1]:
            study.timings = {}  # a new pass over this generation

    def claim_job(self, job: Job) -> StudyRef | None:
        """Claim the study revision a deid or detect job names, if that stage is still due for it.

        The study must be in the stage's waiting state and generation, or, for a takeover job,
        already in its running state (its previous holder stalled). The lease is raised, so the
        previous holder's writes are refused from now on. Returns None for an obsolete job (a
        late instance reopened the study, or another job got there first).

        Raises
        ------
        ValueError
            If ``job`` is a deliver job (see :meth:`claim_delivery`).
        """
        if job.stage not in STAGE_STATES:
            raise ValueError(f"a {job.stage} job does not claim a study")
        due, running = STAGE_STATES[job.stage]
        allowed = {due.value, running.value} if job.takeover else {due.value}
        with self.session() as s:
            study = s.scalar(select(Study).where(Study.study_instance_uid == job.study_instance_uid)
                             .with_for_update())
            if study is None or study.generation != job.generation or study.state not in allowed:
                return None
            if study.state == running.value:
                s.add(Event(kind="study", outcome="taken-over", study_instance_uid=study.study_instance_uid,
                            detail={"stage": job.stage, "generation": study.generation, "lease": study.lease + 1}))
            self._take(study, running)
            return _study_ref(study)

    def move_study(self, study: StudyRef, to_state: StudyState, detail: str | None = None,
                   route_rule: str | None = None) -> bool:
        """Move ``study`` on if it is still in the state and generation the caller saw.

        Returns False when a late instance reopened the study meanwhile, or another claim took it
        over (the lease moved on): the caller's work is then stale and is dropped. A move into a
        state that makes a stage due defers that stage's job with it.
        """
        check_move(study.state, to_state)
        with self.session() as s:
            values: dict[str, Any] = {"state": to_state.value, "state_changed_at": utcnow(), "detail": detail}
            if route_rule is not None:
                values["route_rule"] = route_rule
            moved = s.execute(update(Study).where(_held(study)).values(**values)).rowcount
            if moved:
                s.add(Event(kind="study", outcome=to_state.value, study_instance_uid=study.study_instance_uid,
                            detail={"generation": study.generation, **({"reason": detail} if detail else {})}))
                self._defer_due(s.connection(), study, to_state)
            return bool(moved)

    def finish_deid(self, study: StudyRef, outcomes: list[DeidRecord], seconds: float, route_rule: str,
                    ahead_seconds: float = 0.0) -> bool:
        """Record each instance's de-identification and move the claimed study to
        ``deidentified`` (deferring its detect job), atomically. Returns False, writing nothing,
        when the claim is stale (see :meth:`move_study`). ``seconds``: the stage's time (timings
        ``deidentify``); ``ahead_seconds``: the de-identification its instances had during the quiet
        period (``deidentify-ahead``, recorded when not 0).

        Raises
        ------
        ValueError
            If no outcome has a working copy (a study with none gets a "not analysed" result:
            :meth:`record_deid`, then :meth:`add_result`).
        """
        if not any(o.ok for o in outcomes):
            raise ValueError('Argument "outcomes" has no working copy to detect on.')
        check_move(study.state, StudyState.DEIDENTIFIED)
        with self.session() as s:
            row = self._record_deid(s, study, outcomes, seconds, route_rule, ahead_seconds)
            if row is None:
                return False
            row.state, row.state_changed_at, row.detail = StudyState.DEIDENTIFIED.value, utcnow(), None
            s.add(Event(kind="study", outcome=StudyState.DEIDENTIFIED.value, study_instance_uid=study.study_instance_uid,
                        detail={"generation": study.generation, "instances": len(outcomes),
                                "left_out": sum(not o.ok for o in outcomes)}))
            self._defer_due(s.connection(), study, StudyState.DEIDENTIFIED)
            return True

    def record_deid(self, study: StudyRef, outcomes: list[DeidRecord], seconds: float, route_rule: str,
                    ahead_seconds: float = 0.0) -> bool:
        """Record each instance's de-identification, the study staying where it is (nothing got a
        working copy; its "not analysed" result follows). False when the claim is stale."""
        with self.session() as s:
            return self._record_deid(s, study, outcomes, seconds, route_rule, ahead_seconds) is not None

    def _record_deid(self, s: Session, study: StudyRef, outcomes: list[DeidRecord], seconds: float,
                     route_rule: str, ahead_seconds: float) -> Study | None:
        row = s.scalar(select(Study).where(_held(study)).with_for_update())
        if row is None:
            return None
        for outcome in outcomes:
            s.execute(update(Instance).where(Instance.sop_instance_uid == outcome.sop_instance_uid).values(
                deid_status=outcome.status, deid_reason=outcome.reason, work_path=outcome.work_path,
                not_analysed_reason=outcome.code))
            if outcome.status != "out-of-scope":
                s.add(Event(kind="deid", outcome=outcome.status, study_instance_uid=study.study_instance_uid,
                            sop_instance_uid=outcome.sop_instance_uid,
                            detail={"reason": outcome.reason} if outcome.reason else None))
        row.route_rule = route_rule
        ahead = {"deidentify-ahead": ahead_seconds} if ahead_seconds else {}
        row.timings = {**(row.timings or {}), "deidentify": seconds, **ahead}
        return row

    def study(self, study_instance_uid: str) -> StudyRef | None:
        with self.read_session() as s:
            row = s.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
            return None if row is None else _study_ref(row)

    def instances_of(self, study: StudyRef) -> list[InstanceRef]:
        with self.read_session() as s:
            rows = s.scalars(select(Instance).where(Instance.study_id == study.id).order_by(Instance.id))
            return [InstanceRef(r.sop_instance_uid, r.series_instance_uid, r.sop_class_uid, r.path, r.file_missing,
                                r.deid_status, r.deid_reason, r.work_path, r.not_analysed_reason) for r in rows]

    # -- restart recovery ------------------------------------------------------------------

    def known_paths(self, paths: list[str]) -> set[str]:
        """Those of the spool-relative ``paths`` that an instance row names."""
        known: set[str] = set()
        with self.read_session() as s:
            for start in range(0, len(paths), 500):
                known.update(s.scalars(select(Instance.path).where(Instance.path.in_(paths[start:start + 500]))))
        return known

    def recover_after_restart(self, spool_root: Path) -> dict[str, int]:
        """One process owning the whole pipeline restarts: close associations left open, flag
        rows whose file is gone, and send studies caught mid-stage back to that stage's queue."""
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
            for due, running in STAGE_STATES.values():
                for study in s.scalars(select(Study).where(Study.state == running.value)):
                    study.state, study.state_changed_at = due.value, now
                    counts["studies_requeued"] += 1
                    s.add(Event(kind="study", outcome="requeued", study_instance_uid=study.study_instance_uid,
                                detail={"to": due.value}))
            s.add(Event(kind="service", outcome="recovered", detail=counts))
        return counts

    def close_node_associations(self, node: str) -> int:
        """A cluster receiver restarts: close the associations *it* left open (not its peers')."""
        with self.session() as s:
            closed = s.execute(update(Association).where(Association.ended_at.is_(None), Association.node == node)
                               .values(ended_at=utcnow(), outcome="interrupted")).rowcount
            if closed:
                s.add(Event(kind="service", outcome="recovered", detail={"node": node,
                                                                          "associations_interrupted": closed}))
            return closed

    # -- uploads from a receiver's local spool to the object store -----------------------------

    def pending_uploads(self, node: str, limit: int = 100) -> list[InstanceRef]:
        """Instances whose only copy is in ``node``'s local spool, oldest first."""
        with self.read_session() as s:
            rows = s.scalars(select(Instance).where(Instance.pending_upload == node).order_by(Instance.id)
                             .limit(limit))
            return [InstanceRef(r.sop_instance_uid, r.series_instance_uid, r.sop_class_uid, r.path, r.file_missing)
                    for r in rows]

    def mark_uploaded(self, sop_instance_uid: str, node: str, lost: bool = False) -> bool:
        """The object store has the instance (or, ``lost``, the node's copy is gone and never will).

        Returns False when the row was not pending on ``node``.
        """
        with self.session() as s:
            values: dict[str, Any] = {"pending_upload": None, **({"file_missing": True} if lost else {})}
            done = s.execute(update(Instance).where(Instance.sop_instance_uid == sop_instance_uid,
                                                    Instance.pending_upload == node).values(**values)).rowcount
            if done and lost:
                s.add(Event(kind="instance", outcome="file-missing", sop_instance_uid=sop_instance_uid,
                            detail={"node": node, "why": "not in the local spool before upload"}))
            return bool(done)

    def pending_on(self, path: str) -> str | None:
        """The receiver node whose local spool holds the only copy of the instance at ``path``;
        None when the object store has it or no row names the path."""
        with self.read_session() as s:
            return s.scalar(select(Instance.pending_upload).where(Instance.path == path))

    # -- results and the outbox ------------------------------------------------------------

    def latest_result(self, study: StudyRef) -> ResultRef | None:
        with self.read_session() as s:
            row = s.scalar(select(Result).where(Result.study_id == study.id).order_by(Result.id.desc()).limit(1))
            return None if row is None else _result_ref(row)

    def add_result(self, study: StudyRef, new: NewResult, destinations: list[str],
                   to_state: StudyState = StudyState.REPORTED, detail: str | None = None) -> ResultRef | None:
        """Store a result, queue it for each destination and move the study to ``to_state``
        (``reported`` for a scored result; ``out-of-scope``, ``quarantined`` or ``failed`` for a
        "not analysed" one, with ``detail`` as the study's reason).

        All or nothing, and only if the study is still in the state, generation and lease the
        worker claimed; returns None when a late instance reopened it or another claim took it
        over meanwhile. A result whose SR UID exists already (the same study, instances and
        bundle) is not queued twice. Each new outbox row's deliver job is deferred with it; the
        result's timings join those of the stages before (de-identification).
        """
        check_move(study.state, to_state)
        with self.session() as s:
            held = s.scalar(select(Study).where(_held(study)).with_for_update())
            if held is None:
                return None
            held.state, held.state_changed_at, held.detail = to_state.value, utcnow(), detail
            if to_state is not StudyState.REPORTED:
                s.add(Event(kind="study", outcome=to_state.value, study_instance_uid=study.study_instance_uid,
                            detail={"generation": study.generation, **({"reason": detail} if detail else {})}))
            timings = {**(held.timings or {}), **new.timings}
            row = s.scalar(select(Result).where(Result.sr_sop_instance_uid == new.sr_sop_instance_uid))
            if row is None:
                row = Result(study_id=study.id, generation=study.generation, attempt=study.lease,
                             **{**vars(new), "timings": timings})
                s.add(row)
                s.flush()
                outbox = [Delivery(result_id=row.id, destination=name, state=OutboxState.PENDING.value)
                          for name in destinations]
                s.add_all(outbox)
                s.flush()
                self.deferrer.defer(s.connection(), [
                    Job("deliver", study.study_instance_uid, study.generation, study.lane, delivery_id=d.id,
                        destination=d.destination) for d in outbox])
            s.add(Event(kind="result", outcome=new.verdict or new.kind, study_instance_uid=study.study_instance_uid,
                        sop_instance_uid=new.sr_sop_instance_uid,
                        detail={"score": new.score, "threshold": new.threshold, "bundle": new.bundle_sha256,
                                "generation": study.generation, "timings": timings,
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
            return [_delivery_ref(r) for r in rows]

    def claim_delivery(self, delivery_id: int, now: datetime | None = None) -> DeliveryRef | None:
        """Claim one pending, due outbox row for a send: its lease is raised, so a sender that
        stalled mid-send can no longer record an outcome. None when it is not pending or due."""
        now = now or utcnow()
        with self.session() as s:
            row = s.scalar(select(Delivery).where(Delivery.id == delivery_id, Delivery.state == OutboxState.PENDING.value,
                                                  Delivery.next_attempt_at <= now).with_for_update())
            if row is None:
                return None
            row.lease += 1
            return _delivery_ref(row)

    def record_attempt(self, delivery: DeliveryRef, delivered: bool, status: str, error: str | None,
                       retry_in_s: float | None) -> OutboxState | None:
        """Record one delivery attempt; ``retry_in_s`` None means give up (dead-letter).

        The study becomes ``delivered`` once every destination of its latest result has it, and
        ``dead-letter`` once none is pending and any gave up. A retry defers the next deliver
        job, due after the backoff. Returns None, recording nothing, when ``delivery`` holds a
        claim (``lease``) that another claim has replaced.
        """
        now = utcnow()
        with self.session() as s:
            # PostgreSQL: one destination's attempt at a time per study, so the last one to
            # finish sees every other destination's outcome when it settles the study.
            s.scalar(select(Study).join(Result).join(Delivery).where(Delivery.id == delivery.id)
                     .with_for_update(of=Study))
            row = s.get(Delivery, delivery.id)
            if delivery.lease and row.lease != delivery.lease:
                return None
            row.attempts += 1
            row.last_status, row.last_error = status, error
            if delivered:
                row.state, row.delivered_at = OutboxState.DELIVERED.value, now
            elif retry_in_s is None:
                row.state = OutboxState.DEAD_LETTER.value
            else:
                row.next_attempt_at = now + timedelta(seconds=retry_in_s)
            study = row.result.study
            if row.state == OutboxState.PENDING.value:
                self.deferrer.defer(s.connection(), [Job(
                    "deliver", study.study_instance_uid, row.result.generation, Lane(study.lane), delivery_id=row.id,
                    destination=row.destination, not_before=row.next_attempt_at)])
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
            jobs = []
            for row in rows:
                row.state, row.next_attempt_at = OutboxState.PENDING.value, now
                study = row.result.study
                if study.state == StudyState.DEAD_LETTER.value:
                    study.state, study.state_changed_at = StudyState.REPORTED.value, now
                s.add(Event(kind="delivery", outcome="requeued", study_instance_uid=study.study_instance_uid,
                            detail={"destination": row.destination}))
                jobs.append(Job("deliver", study.study_instance_uid, row.result.generation, Lane(study.lane),
                                delivery_id=row.id, destination=row.destination))
            self.deferrer.defer(s.connection(), jobs)
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
                self._defer_due(s.connection(), study, StudyState.COMPLETE)
            return len(studies)

    def requeue_awaiting_detector(self) -> int:
        """Send studies held for want of a detector back to ``deidentified`` (a detector is now
        loaded); their detect jobs are deferred with the move."""
        now = utcnow()
        with self.session() as s:
            held = list(s.scalars(select(Study).where(Study.state == StudyState.AWAITING_DETECTOR.value)
                                  .with_for_update()))
            for study in held:
                study.state, study.state_changed_at = StudyState.DEIDENTIFIED.value, now
                self._defer_due(s.connection(), study, StudyState.DEIDENTIFIED)
            return len(held)

    # -- periodic jobs (cluster mode) ------------------------------------------------------

    def claim_period(self, name: str, timestamp: int) -> bool:
        """Whether the periodic job ``name`` may run for the period scheduled at ``timestamp``:
        True once per period, and never for a period older than one that already ran (a worker
        that resumes after a pause proposes the periods it missed; they are past)."""
        now = utcnow()
        with self.session() as s:
            if s.execute(update(PeriodicRun).where(PeriodicRun.name == name, PeriodicRun.last_timestamp < timestamp)
                         .values(last_timestamp=timestamp, runs=PeriodicRun.runs + 1, last_run_at=now)).rowcount:
                return True
            if s.get(PeriodicRun, name) is not None:
                return False
        try:
            with self.session() as s:
                s.add(PeriodicRun(name=name, last_timestamp=timestamp, runs=1, last_run_at=now))
            return True
        except IntegrityError:  # another worker ran the first period of this job
            return False
