"""The Store's contract on every supported backend: SQLite and a real PostgreSQL server.

Each test runs twice, on a fresh SQLite file and on a fresh database of a throwaway PostgreSQL
cluster (``tests/postgres.py``), both brought to the newest Alembic revision by ``Store.migrate``.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.exc import StatementError

from sonoshot.db.lifecycle import OutboxState, StudyState
from sonoshot.db.models import Association, Delivery, Event, Instance, PeriodicRun, Result, Study, utcnow
from sonoshot.db.store import MIGRATIONS, DeidRecord, NewInstance, NewResult, Store, StudyRef
from sonoshot.db.work import Job, Lane
from tests.postgres import postgres_url  # noqa: F401  (the session-scoped server fixture)

PREFIX = "1.2.826.0.1.3680043.10.4321"
TABLES = {"associations", "studies", "instances", "events", "results", "deliveries", "periodic_runs",
          "alembic_version", "feedback", "scanners", "observations", "users"}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path: Path):
    """A migrated Store on a fresh, empty database of the backend named by the parameter."""
    admin = name = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'sonoshot.db'}"
    else:
        server = request.getfixturevalue("postgres_url")
        name = f"sonoshot_{uuid.uuid4().hex[:12]}"
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = f"{server.rsplit('/', 1)[0]}/{name}"
    store = Store(url)
    store.migrate()
    yield store
    store.dispose()
    if admin is not None:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()


_counter = iter(range(1, 10**9))


def _uid() -> str:
    return f"{PREFIX}.{next(_counter)}"


def _instance(study: str, sop: str | None = None, size: int = 100) -> NewInstance:
    return NewInstance(sop_instance_uid=sop or _uid(), study_instance_uid=study, series_instance_uid=f"{study}.1",
                       sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1", transfer_syntax_uid="1.2.840.10008.1.2.1",
                       modality="US", path=f"{study}/{sop or 'x'}.dcm", size_bytes=size,
                       calling_ae_title="MODALITY", called_ae_title="SONOSHOT", patient_pseudonym="PSEUDO-1")


def _result(study: str, generation: int) -> NewResult:
    return NewResult(score=0.8, verdict="anomalous", threshold=0.5, bundle_sha256="ab" * 32,
                     backbone="efficientnet-lite0", images_scored=1, images_quarantined=0,
                     sr_sop_instance_uid=f"{study}.99.{generation}", sr_path=f"{study}/sr{generation}.dcm",
                     predecessor_sr_uid=None, timings={"detect": 0.25})


def _complete(store: Store, study: str, sops: int = 1) -> None:
    for _ in range(sops):
        assert store.record_instance(_instance(study))
    assert study in {s.study_instance_uid for s in store.complete_quiet_studies(0, 3600)}


def _detecting(store: Store, study: str) -> StudyRef:
    """Claim a complete study through de-identification into the detect stage."""
    claimed = store.claim_study(StudyState.COMPLETE, StudyState.PROCESSING)
    assert claimed is not None and claimed.study_instance_uid == study
    sops = [i.sop_instance_uid for i in store.instances_of(claimed)]
    assert store.finish_deid(claimed, [DeidRecord(sop, "ok", f"{study}/g1/{sop}.dcm") for sop in sops], 0.5,
                             "ultrasound")
    detecting = store.claim_study(StudyState.DEIDENTIFIED, StudyState.DETECTING)
    assert detecting is not None and detecting.study_instance_uid == study
    return detecting


def _events(store: Store, kind: str, study: str) -> list[str]:
    with store.read_session() as s:
        return list(s.scalars(select(Event.outcome).where(Event.kind == kind, Event.study_instance_uid == study)
                              .order_by(Event.id)))


def test_migrate_creates_the_schema_and_is_idempotent(store):
    assert TABLES <= set(inspect(store.engine).get_table_names())
    store.migrate()  # already at head: nothing to do
    with store.engine.connect() as c:
        head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
        assert c.scalar(text("SELECT version_num FROM alembic_version")) == head
        assert {i["name"] for i in inspect(c).get_indexes("studies")} >= {"ix_studies_state"}


def test_record_instance_is_idempotent(store):
    study, sop = _uid(), _uid()
    assert store.record_instance(_instance(study, sop)) is True
    assert store.record_instance(_instance(study, sop)) is False
    assert store.has_instance(sop) and not store.has_instance(_uid())
    with store.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Instance).where(Instance.sop_instance_uid == sop)) == 1
    ref = store.study(study)
    assert (ref.state, ref.generation, ref.instance_count) == (StudyState.RECEIVING, 1, 1)


def test_late_instance_reopens_the_study_with_a_new_generation(store):
    study = _uid()
    _complete(store, study)
    assert store.study(study).state is StudyState.COMPLETE
    assert store.record_instance(_instance(study))
    ref = store.study(study)
    assert (ref.state, ref.generation, ref.instance_count) == (StudyState.RECEIVING, 2, 2)
    assert _events(store, "study", study) == ["complete", "reopened"]
    assert [i.path for i in store.instances_of(ref)] == [f"{study}/x.dcm"] * 2


def test_the_next_completion_is_when_the_first_receiving_study_goes_quiet(store):
    assert store.next_completion_at(10, 3600) is None
    first, second = _uid(), _uid()
    assert store.record_instance(_instance(first))
    assert store.record_instance(_instance(second))
    assert store.record_instance(_instance(first))  # the first study's last instance comes after the second's
    with store.read_session() as s:
        rows = {row.study_instance_uid: row for row in s.scalars(select(Study))}
    assert store.next_completion_at(10, 3600) == rows[second].last_received_at + timedelta(seconds=10)
    assert store.next_completion_at(3600, 5) == rows[first].receiving_since + timedelta(seconds=5)  # max wait first
    assert len(store.complete_quiet_studies(0, 3600)) == 2
    assert store.next_completion_at(10, 3600) is None  # nothing receiving


def test_an_open_association_holds_completion(store):
    association = store.open_association("MODALITY", "SONOSHOT", "127.0.0.1")
    study = _uid()
    assert store.record_instance(_instance(study, size=300), association)
    assert store.record_instance(_instance(study, size=200), association)
    assert store.complete_quiet_studies(0, 3600) == []  # quiet, but the association is still open
    store.close_association(association, "released")
    with store.read_session() as s:
        row = s.get(Association, association)
        assert (row.outcome, row.instances_received, row.bytes_received) == ("released", 2, 500)
        assert row.ended_at.tzinfo is timezone.utc
    (done,) = store.complete_quiet_studies(0, 3600)
    assert (done.study_instance_uid, done.state, done.instance_count) == (study, StudyState.COMPLETE, 2)


def test_max_wait_completes_a_study_despite_an_open_association(store):
    association = store.open_association("MODALITY", "SONOSHOT", "127.0.0.1")
    study = _uid()
    store.record_instance(_instance(study), association)
    assert store.complete_quiet_studies(0, 3600) == []
    (done,) = store.complete_quiet_studies(0, 3600, now=utcnow() + timedelta(hours=2))
    assert done.study_instance_uid == study


def test_claim_and_move_are_guarded_by_state_and_generation(store):
    first, second = _uid(), _uid()
    _complete(store, first)
    _complete(store, second)
    claimed = store.claim_study(StudyState.COMPLETE, StudyState.PROCESSING)
    assert (claimed.study_instance_uid, claimed.state) == (first, StudyState.PROCESSING)  # oldest first
    assert store.record_instance(_instance(first))  # a late instance: generation 2
    assert store.move_study(claimed, StudyState.DEIDENTIFIED) is False  # stale work
    assert store.finish_deid(claimed, [DeidRecord(_uid(), "ok", "k")], 0.1, "ultrasound") is False
    assert store.latest_result(store.study(first)) is None
    assert store.claim_study(StudyState.COMPLETE, StudyState.PROCESSING).study_instance_uid == second
    assert store.claim_study(StudyState.COMPLETE, StudyState.PROCESSING) is None
    store.complete_quiet_studies(0, 3600)
    again = store.claim_study(StudyState.COMPLETE, StudyState.PROCESSING)
    assert (again.study_instance_uid, again.generation) == (first, 2)
    assert store.move_study(again, StudyState.IGNORED, detail="no images", route_rule="skip") is True
    assert store.move_study(again, StudyState.IGNORED) is False  # no longer processing
    assert store.study(first).state is StudyState.IGNORED
    assert _events(store, "study", first)[-1] == "ignored"


def test_outbox_delivered_retry_dead_letter_and_requeue(store):
    study = _uid()
    _complete(store, study)
    claimed = _detecting(store, study)
    result = store.add_result(claimed, _result(study, 1), ["a", "b", "c"])
    assert (result.study_instance_uid, result.generation) == (study, 1)
    assert store.study(study).state is StudyState.REPORTED
    (a,), (b,), (c,) = (store.due_deliveries(name) for name in "abc")
    assert a.result == result and a.attempts == 0

    assert store.record_attempt(a, True, "0x0000", None, None) is OutboxState.DELIVERED
    assert store.record_attempt(c, False, "0xC000", "refused", None) is OutboxState.DEAD_LETTER
    assert store.study(study).state is StudyState.REPORTED  # b is still pending
    assert store.record_attempt(b, False, "0xA700", "out of resources", 3600) is OutboxState.PENDING
    assert store.due_deliveries("b") == []  # backing off
    (b,) = store.due_deliveries("b", now=utcnow() + timedelta(hours=2))
    assert b.attempts == 1
    assert store.record_attempt(b, False, "0xA700", "out of resources", None) is OutboxState.DEAD_LETTER
    assert store.study(study).state is StudyState.DEAD_LETTER

    assert store.requeue_dead_letters() == 2
    assert store.study(study).state is StudyState.REPORTED
    assert store.due_deliveries("a") == []
    (b,), (c,) = store.due_deliveries("b"), store.due_deliveries("c")
    assert (b.attempts, c.attempts) == (2, 1)
    assert store.record_attempt(b, True, "0x0000", None, None) is OutboxState.DELIVERED
    assert store.record_attempt(c, False, "0xA700", "busy", 60) is OutboxState.PENDING
    assert store.requeue_dead_letters(study) == 1  # one study: its undelivered rows, backoff or not
    (c,) = store.due_deliveries("c")
    assert store.record_attempt(c, True, "0x0000", None, None) is OutboxState.DELIVERED
    assert store.study(study).state is StudyState.DELIVERED
    assert _events(store, "study", study)[-1] == "delivered"
    with store.read_session() as s:
        rows = s.scalars(select(Delivery).order_by(Delivery.destination)).all()
        assert [(r.state, r.attempts) for r in rows] == [("delivered", 1), ("delivered", 3), ("delivered", 3)]
        assert all(r.delivered_at.tzinfo is timezone.utc for r in rows)


def test_a_result_without_destinations_is_recorded(store):
    study = _uid()
    _complete(store, study)
    claimed = _detecting(store, study)
    assert store.add_result(claimed, _result(study, 1), []) is not None
    assert store.latest_result(store.study(study)).sr_sop_instance_uid == f"{study}.99.1"
    assert _events(store, "delivery", study) == ["no-destination"]


def _not_analysed(study: str) -> NewResult:
    return NewResult(score=None, verdict=None, threshold=None, bundle_sha256="ab" * 32, backbone="efficientnet-lite0",
                     images_scored=0, images_quarantined=1, sr_sop_instance_uid=f"{study}.98",
                     sr_path=f"{study}/na.dcm", predecessor_sr_uid=None, timings={"report": 0.1},
                     kind="not-analysed", reason="pixels-unclean")


def test_not_analysed_result_keeps_the_state_and_a_reload_requeues(store, tmp_path):
    spool = tmp_path / "spool"
    kept, purged = _uid(), _uid()
    for study in (kept, purged):
        _complete(store, study)
        claimed = store.claim_study(StudyState.COMPLETE, StudyState.PROCESSING)
        ref = store.add_result(claimed, _not_analysed(claimed.study_instance_uid), ["pacs"],
                               StudyState.QUARANTINED, "1 instance(s), none could be de-identified safely")
        assert ref is not None and ref.kind == "not-analysed" and ref.paths == [ref.sr_path]
    assert store.study(kept).state is StudyState.QUARANTINED
    with store.read_session() as s:
        row = s.execute(text("SELECT kind, reason, score, verdict, threshold FROM results WHERE sr_path = :p"),
                        {"p": f"{kept}/na.dcm"}).one()
    assert tuple(row) == ("not-analysed", "pixels-unclean", None, None, None)
    assert _events(store, "study", kept)[-1] == "quarantined"
    for item in store.due_deliveries("pacs"):
        assert store.record_attempt(item, True, "0x0000", None, None) is OutboxState.DELIVERED
    assert store.study(kept).state is StudyState.QUARANTINED  # delivered, still not analysed
    (spool / store.instances_of(store.study(kept))[0].path).parent.mkdir(parents=True)
    (spool / store.instances_of(store.study(kept))[0].path).write_bytes(b"DICM")
    store.recover_after_restart(spool)  # the other study's files are gone: flagged missing
    assert store.requeue_for_reload(StudyState.OUT_OF_SCOPE) == 0
    assert store.requeue_for_reload(StudyState.QUARANTINED) == 1
    assert store.study(kept).state is StudyState.COMPLETE and store.study(purged).state is StudyState.QUARANTINED
    assert _events(store, "study", kept)[-1] == "requeued"
    claimed = _detecting(store, kept)
    scored = replace(_result(kept, 1), key_image_sop_instance_uid=f"{kept}.97", key_image_path=f"{kept}/ki.dcm",
                     predecessor_sr_uid=f"{kept}.98")
    ref = store.add_result(claimed, scored, ["pacs"])
    assert ref.paths == [f"{kept}/sr1.dcm", f"{kept}/ki.dcm"] and store.study(kept).state is StudyState.REPORTED
    assert store.latest_result(store.study(kept)).kind == "scored"


def test_migration_0003_keeps_earlier_results_scored(store, tmp_path):
    from alembic import command
    from alembic.config import Config as AlembicConfig

    from sonoshot.db.store import MIGRATIONS

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    study = _uid()
    _complete(store, study)
    store.add_result(_detecting(store, study), _result(study, 1), [])
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0002")
    assert "kind" not in {c["name"] for c in inspect(store.engine).get_columns("results")}
    store.migrate()
    with store.read_session() as s:
        assert s.execute(text("SELECT kind, score FROM results")).one() == ("scored", 0.8)


def test_recover_after_restart(store, tmp_path):
    spool = tmp_path / "spool"
    (spool / "kept").mkdir(parents=True)
    (spool / "kept" / "here.dcm").write_bytes(b"DICM")
    association = store.open_association("MODALITY", "SONOSHOT", "127.0.0.1")
    kept, gone, processing = _uid(), _uid(), _uid()
    store.record_instance(replace(_instance(kept), path="kept/here.dcm"), association)
    store.record_instance(_instance(gone))
    _complete(store, processing)
    store.claim_study(StudyState.COMPLETE, StudyState.PROCESSING)
    counts = store.recover_after_restart(spool)
    # the study 'processing' also has no file on disk: two rows are flagged
    assert counts == {"associations_interrupted": 1, "files_missing": 2, "studies_requeued": 1}
    assert store.study(processing).state is StudyState.COMPLETE
    assert [i.file_missing for i in store.instances_of(store.study(kept))] == [False]
    assert [i.file_missing for i in store.instances_of(store.study(gone))] == [True]
    assert store.recover_after_restart(spool) == {"associations_interrupted": 0, "files_missing": 0,
                                                  "studies_requeued": 0}


def test_utc_datetimes_round_trip_as_aware_utc(store):
    local = datetime(2031, 3, 30, 1, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    with store.session() as s:
        row = Association(calling_ae_title="A", called_ae_title="B", peer_address="127.0.0.1",
                          started_at=local, ended_at=None)
        s.add(row)
        s.flush()
        association = row.id
    with store.read_session() as s:
        back = s.get(Association, association).started_at
        stored = s.execute(select(text("started_at")).select_from(Association)
                           .where(Association.id == association)).scalar()
    assert back == local and back.tzinfo is timezone.utc
    assert back.replace(tzinfo=None) == datetime(2031, 3, 29, 23, 30, 15, 123456)
    if isinstance(stored, datetime):  # PostgreSQL: a timestamp without time zone, in UTC
        assert stored == datetime(2031, 3, 29, 23, 30, 15, 123456)
    else:  # SQLite: ISO text, in UTC
        assert str(stored).startswith("2031-03-29 23:30:15.123456")
    with pytest.raises(StatementError, match="naive datetime"), store.session() as s:
        s.add(Association(calling_ae_title="A", called_ae_title="B", peer_address="x",
                          started_at=datetime(2031, 1, 1)))
        s.flush()


def test_concurrent_record_instance(store):
    """Threads index the same and different SOP instances of new and shared studies at once."""
    threads_n, rounds = 6, 4
    fresh = [_uid() for _ in range(rounds)]  # studies none has seen: all threads race to create each
    siblings = [[_uid() for _ in range(threads_n)] for _ in range(rounds)]
    shared_study, shared_sop = _uid(), _uid()
    own = [(_uid(), _uid()) for _ in range(threads_n)]  # a new study and one instance per thread
    barrier = threading.Barrier(threads_n)
    outcomes: dict[int, list[bool]] = {}
    errors: list[BaseException] = []
    held = [store.engine.connect() for _ in range(threads_n)]  # warm the pool: no connect in the race
    for c in held:
        c.close()

    def work(n: int) -> None:
        try:
            done = []
            for r in range(rounds):
                barrier.wait(timeout=30)
                done.append(store.record_instance(_instance(fresh[r], siblings[r][n])))
            barrier.wait(timeout=30)
            outcomes[n] = [all(done), store.record_instance(_instance(shared_study, shared_sop)),
                           store.record_instance(_instance(*own[n]))]
        except BaseException as error:  # noqa: BLE001  (reported below)
            errors.append(error)
            barrier.abort()  # the others stop waiting

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sum(o[1] for o in outcomes.values()) == 1  # one thread indexed the shared SOP
    assert all(o[0] and o[2] for o in outcomes.values())
    with store.read_session() as s:
        counts = {sop: n for sop, n in s.execute(select(Instance.sop_instance_uid, func.count())
                                                 .group_by(Instance.sop_instance_uid))}
        studies = {uid: n for uid, n in s.execute(select(Study.study_instance_uid, Study.instance_count))}
    expected = {shared_sop, *(sop for r in siblings for sop in r), *(sop for _, sop in own)}
    assert counts == dict.fromkeys(expected, 1)
    assert studies == {**dict.fromkeys(fresh, threads_n), shared_study: 1, **{study: 1 for study, _ in own}}
    assert {store.study(uid).generation for uid in studies} == {1}


def test_concurrent_claims_take_distinct_studies(store):
    studies = [_uid() for _ in range(4)]
    for study in studies:
        store.record_instance(_instance(study))
    assert len(store.complete_quiet_studies(0, 3600)) == 4
    barrier = threading.Barrier(4)
    claimed: list[str] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait(timeout=30)
            ref = store.claim_study(StudyState.COMPLETE, StudyState.PROCESSING)
            claimed.append(ref.study_instance_uid if ref else "")
        except BaseException as error:  # noqa: BLE001
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(claimed) == sorted(studies)


def test_byte_counts_past_2_gib(store):
    """A study (or association) may pass 2 GiB: byte counts are BIGINT (migration 0002)."""
    study = _uid()
    assert store.record_instance(_instance(study, size=2**31 - 100))
    assert store.record_instance(_instance(study, size=1000))
    assert store.study(study).instance_count == 2
    with store.read_session() as s:
        assert s.scalar(select(Study.total_bytes).where(Study.study_instance_uid == study)) == 2**31 + 900


def test_a_takeover_fences_the_stalled_holder(store):
    """The claim a stalled worker held is taken over; its late writes are refused, the new ones land."""
    study = _uid()
    _complete(store, study)
    job = Job("deid", study, 1)
    stalled = store.claim_job(job)
    assert stalled is not None and stalled.lease == 1
    assert store.claim_job(job) is None  # the study is running: a plain (duplicate) job takes nothing
    retry = store.claim_job(replace(job, takeover=True))
    assert retry is not None and retry.lease == 2 and retry.state is StudyState.PROCESSING
    sop = store.instances_of(retry)[0].sop_instance_uid
    assert store.finish_deid(stalled, [DeidRecord(sop, "ok", "late")], 1.0, "r") is False
    assert store.move_study(stalled, StudyState.FAILED, detail="late") is False
    assert store.finish_deid(retry, [DeidRecord(sop, "ok", f"{study}/g1/x.dcm")], 1.0, "r") is True
    (instance,) = store.instances_of(store.study(study))
    assert instance.work_path == f"{study}/g1/x.dcm"
    detecting = store.claim_job(Job("detect", study, 1))
    assert store.add_result(replace(detecting, lease=detecting.lease - 1), _result(study, 1), ["pacs"]) is None
    result = store.add_result(detecting, _result(study, 1), ["pacs"])
    with store.read_session() as s:
        row = s.get(Result, result.id)
        assert row.attempt == detecting.lease and row.timings == {"deidentify": 1.0, "detect": 0.25}
    assert _events(store, "study", study).count("taken-over") == 1


def test_an_obsolete_job_claims_nothing(store):
    study = _uid()
    _complete(store, study)
    assert store.record_instance(_instance(study))  # reopened: generation 2
    assert store.claim_job(Job("deid", study, 1)) is None
    store.complete_quiet_studies(0, 3600)
    assert store.claim_job(Job("deid", study, 2)).generation == 2
    assert store.claim_job(Job("deid", _uid(), 1)) is None  # unknown study


def test_a_delivery_claim_fences_a_stalled_sender(store):
    study = _uid()
    _complete(store, study)
    store.add_result(_detecting(store, study), _result(study, 1), ["pacs"])
    (due,) = store.due_deliveries("pacs")
    stalled = store.claim_delivery(due.id)
    retry = store.claim_delivery(due.id)
    assert (stalled.lease, retry.lease) == (1, 2)
    assert store.record_attempt(stalled, True, "0x0000", None, None) is None  # the PACS answered too late
    assert store.record_attempt(retry, True, "0x0000", None, None) is OutboxState.DELIVERED
    assert store.claim_delivery(due.id) is None  # delivered: nothing left to claim
    assert store.study(study).state is StudyState.DELIVERED


def test_live_studies_are_claimed_before_archive_ones(store):
    archive = [_uid() for _ in range(3)]
    for uid in archive:
        assert store.record_instance(replace(_instance(uid), lane=Lane.ARCHIVE))
        assert store.complete_study(uid).lane is Lane.ARCHIVE
    live = _uid()
    _complete(store, live)
    order = [store.claim_study(StudyState.COMPLETE, StudyState.PROCESSING).study_instance_uid for _ in range(4)]
    assert order == [live, *archive]
    assert store.complete_study(live) is None  # not receiving any more


def test_completion_waits_for_pending_uploads(store):
    study, sop = _uid(), _uid()
    assert store.record_instance(replace(_instance(study, sop), pending_upload="rx-1"))
    assert store.complete_quiet_studies(0, 0) == []  # even past the maximum wait
    assert store.complete_study(study) is None
    assert [i.sop_instance_uid for i in store.pending_uploads("rx-1")] == [sop]
    assert store.pending_on(f"{study}/{sop}.dcm") == "rx-1"
    assert store.pending_uploads("rx-2") == []
    assert store.mark_uploaded(sop, "rx-2") is False
    assert store.mark_uploaded(sop, "rx-1") is True
    assert store.pending_on(f"{study}/{sop}.dcm") is None
    assert [s.study_instance_uid for s in store.complete_quiet_studies(0, 3600)] == [study]


def test_jobs_are_deferred_in_the_transaction_of_the_move(store):
    """A move that rolls back defers nothing; one that commits defers exactly its next job."""
    deferred: list[Job] = []

    class Failing:
        def defer(self, connection, jobs):
            deferred.extend(jobs)
            raise RuntimeError("the transaction fails after the defer")

    study = _uid()
    assert store.record_instance(_instance(study))
    real, store.deferrer = store.deferrer, Failing()
    with pytest.raises(RuntimeError):
        store.complete_quiet_studies(0, 3600)
    assert [j.study_instance_uid for j in deferred] == [study]
    assert store.study(study).state is StudyState.RECEIVING  # rolled back with the defer

    class Recording:
        def defer(self, connection, jobs):
            assert connection.in_transaction()
            deferred.extend(jobs)

    deferred.clear()
    store.deferrer = Recording()
    store.complete_quiet_studies(0, 3600)
    claimed = store.claim_study(StudyState.COMPLETE, StudyState.PROCESSING)
    store.finish_deid(claimed, [DeidRecord(store.instances_of(claimed)[0].sop_instance_uid, "ok", "k")], 0.1,
                      "r")
    store.add_result(store.claim_study(StudyState.DEIDENTIFIED, StudyState.DETECTING), _result(study, 1), ["a", "b"])
    assert [(j.stage, j.destination) for j in deferred] == [("deid", None), ("detect", None), ("deliver", "a"),
                                                            ("deliver", "b")]
    store.deferrer = real


def test_a_period_runs_once_and_never_after_a_later_one(store):
    assert store.claim_period("completion", 100)
    assert not store.claim_period("completion", 100)  # proposed again by another worker
    assert store.claim_period("completion", 102)
    assert not store.claim_period("completion", 101)  # a resumed worker's late proposal
    assert store.claim_period("retention", 101)
    with store.read_session() as s:
        assert s.get(PeriodicRun, "completion").runs == 2
def test_shadow_outbox_feedback_and_observations(store):
    from sonoshot.db import users
    from sonoshot.db.outbox import discard_held, hold_pending, release_held
    from sonoshot.db.validation import (Device, NewFeedback, NewObservation, labelled_results, observations,
                                        record_feedback, record_observations, scanners)

    kept, dropped = _uid(), _uid()
    for study in (kept, dropped):
        _complete(store, study)
        claimed = _detecting(store, study)
        device = Device("ACME", "Sono 1", "2.0", "L12")
        record_observations(store, claimed, [NewObservation(f"{study}.1.1", device, "BREAST", False, None, 0.7, 512,
                                                            512, 80.0)])
        assert store.add_result(claimed, _result(study, 1), ["pacs"]) is not None
    assert hold_pending(store, "pacs") == 2 and store.due_deliveries("pacs") == []
    assert discard_held(store, "tester", destination="pacs", since=utcnow() + timedelta(days=1)).withheld == 0  # none so new
    assert release_held(store, "tester").released == 2 and len(store.due_deliveries("pacs")) == 2
    record_feedback(store, NewFeedback(kept, "abnormal", "dr.who", "console", "127.0.0.1", "solid mass", "ris"))
    record_feedback(store, NewFeedback(kept, "normal", "dr.who", "cli", "host"))  # the latest label counts
    ((row,),) = [labelled_results(store)]
    assert (row.study_instance_uid, row.label, row.scanner, row.organ) == (kept, "normal",
                                                                           "ACME / Sono 1 / sw 2.0 / probe L12", "BREAST")
    assert len(scanners(store)) == 1 and len(observations(store)) == 2
    assert _events(store, "scanner", kept) == ["first-seen"] and _events(store, "scanner", dropped) == []
    users.add_user(store, "ann", "admin", "$argon2id$hash", "test")
    assert users.record_login(store, "ann", False, max_failed=1) is True
