"""sonoshot.db.queries on a real, migrated SQLite database."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from sonoshot.db.lifecycle import StudyState
from sonoshot.db import queries
from sonoshot.db.models import Study, utcnow
from tests.ops_rows import BUNDLE, drive, new_store, receive, study_uid


@pytest.fixture
def store(tmp_path):
    store = new_store(tmp_path)
    yield store
    store.dispose()


def _pipeline(store) -> dict[StudyState, str]:
    """One study in each of several states, received in this order."""
    states = [StudyState.DELIVERED, StudyState.DEAD_LETTER, StudyState.REPORTED, StudyState.AWAITING_DETECTOR,
              StudyState.COMPLETE, StudyState.RECEIVING]
    uids = {}
    for n, state in enumerate(states):
        uids[state] = study_uid(n)
        receive(store, uids[state], count=n + 1)
        drive(store, uids[state], state, score=0.1 * (n + 1))
    return uids


def test_recent_studies_carry_latest_result_and_delivery(store):
    uids = _pipeline(store)
    recent = queries.recent_studies(store)
    assert [s.study_instance_uid for s in recent] == list(reversed(uids.values()))  # newest first
    by_uid = {s.study_instance_uid: s for s in recent}
    delivered = by_uid[uids[StudyState.DELIVERED]]
    assert (delivered.state, delivered.score, delivered.verdict, delivered.delivery) == (
        "delivered", pytest.approx(0.1), "abnormal", "pacs:delivered")
    assert by_uid[uids[StudyState.DEAD_LETTER]].delivery == "pacs:dead-letter"
    assert by_uid[uids[StudyState.REPORTED]].delivery == "pacs:pending"
    waiting = by_uid[uids[StudyState.AWAITING_DETECTOR]]
    assert (waiting.score, waiting.verdict, waiting.delivery, waiting.instance_count) == (None, None, None, 4)


def test_recent_studies_limit_state_and_since(store):
    uids = _pipeline(store)
    assert len(queries.recent_studies(store, limit=2)) == 2
    assert [s.study_instance_uid for s in queries.recent_studies(store, state="dead-letter")] == [
        uids[StudyState.DEAD_LETTER]]
    old = uids[StudyState.DELIVERED]
    with store.session() as s:
        s.execute(update(Study).where(Study.study_instance_uid == old).values(
            last_received_at=utcnow() - timedelta(days=3), state_changed_at=utcnow() - timedelta(days=2)))
    recent = {s.study_instance_uid for s in queries.recent_studies(store, since=utcnow() - timedelta(days=1))}
    assert old not in recent and len(recent) == len(uids) - 1
    assert not queries.recent_studies(store, since=utcnow() + timedelta(minutes=1))
    with pytest.raises(ValueError):
        queries.recent_studies(store, state="lost")


def test_latest_result_wins_after_a_study_is_reopened(store):
    uid = study_uid(7)
    receive(store, uid, count=1)
    drive(store, uid, StudyState.DELIVERED, score=0.2, verdict="normal")
    receive(store, f"{uid}", count=2)  # the second file is new: the study reopens
    assert store.study(uid).generation == 2
    drive(store, uid, StudyState.DELIVERED, score=0.9, verdict="abnormal")
    (summary,) = queries.recent_studies(store)
    assert (summary.score, summary.verdict, summary.instance_count) == (pytest.approx(0.9), "abnormal", 2)


def test_audit_rows_have_every_step_and_time(store):
    uids = _pipeline(store)
    rows = {r.study_instance_uid: r for r in queries.audit_rows(store)}
    assert list(rows) == list(uids.values())  # oldest first
    done = rows[uids[StudyState.DELIVERED]]
    assert done.outcome == "delivered" and done.patient_pseudonym == "PSEUDO-1"
    assert done.bundle_sha256 == BUNDLE and done.instance_count == 1
    times = [done.first_received_at, done.completed_at, done.deidentified_at, done.scored_at, done.delivered_at]
    assert None not in times and times == sorted(times)
    dead = rows[uids[StudyState.DEAD_LETTER]]
    assert dead.delivered_at is None and dead.delivery == "pacs:dead-letter" and dead.scored_at is not None
    pending = rows[uids[StudyState.RECEIVING]]
    assert (pending.completed_at, pending.deidentified_at, pending.scored_at, pending.outcome) == (
        None, None, None, "receiving")
    assert not queries.audit_rows(store, since=utcnow() + timedelta(minutes=1))


def test_counts_by_state_queues_and_associations(store):
    _pipeline(store)
    by_state = queries.studies_by_state(store)
    assert set(by_state) == {s.value for s in StudyState}
    assert by_state["delivered"] == by_state["complete"] == by_state["receiving"] == 1
    assert by_state["processing"] == by_state["failed"] == 0
    assert queries.queue_depths(store) == {"complete": 1, "processing": 0, "awaiting-detector": 1,
                                           "pending-deliveries": 1, "held-deliveries": 0}
    assert queries.open_associations(store) == 0
    first = store.open_association("MODALITY", "SONOSHOT", "127.0.0.1")
    store.open_association("MODALITY", "SONOSHOT", "127.0.0.1")
    store.close_association(first, "released")
    assert queries.open_associations(store) == 1


def test_open_existing_creates_nothing(tmp_path):
    missing = tmp_path / "nowhere" / "sonoshot.db"
    with pytest.raises(queries.DatabaseNotReady, match="no database"):
        queries.open_existing(f"sqlite:///{missing}")
    assert not missing.parent.exists()
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(queries.DatabaseNotReady, match="no sonoshot tables"):
        queries.open_existing(f"sqlite:///{empty}")
    new_store(tmp_path).dispose()
    store = queries.open_existing(f"sqlite:///{tmp_path / 'sonoshot.db'}")
    queries.ping(store)
    store.dispose()
