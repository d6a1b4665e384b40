"""Retention on a real database and real folders: only settled studies, only after their time."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from sonoshot.config import RetentionConfig
from sonoshot.db.lifecycle import OutboxState, StudyState
from sonoshot.daemon.retention import PurgeCounts, purge_expired
from sonoshot.db.models import Event, Instance, Result, utcnow
from sonoshot.db.store import NewInstance
from tests.ops_rows import add_delivery, drive, new_store, receive, study_uid

RETENTION = RetentionConfig(spool_days=30, work_days=1)


@pytest.fixture
def site(tmp_path):
    store = new_store(tmp_path)
    spool, work = tmp_path / "spool", tmp_path / "work"
    spool.mkdir()
    work.mkdir()
    yield store, spool, work
    store.dispose()


def _study(store, spool, work, n: int, state: StudyState) -> str:
    uid = study_uid(n)
    receive(store, uid, count=2, spool=spool)
    drive(store, uid, state)
    copy = work / uid / "deid"
    copy.mkdir(parents=True)
    (copy / "1.dcm").write_bytes(b"deidentified")
    if state in (StudyState.DELIVERED, StudyState.DEAD_LETTER, StudyState.REPORTED):
        sr = spool / uid / f"{uid}.99" / f"{uid}.99.1.dcm"
        sr.parent.mkdir(parents=True)
        sr.write_bytes(b"sr")
    return uid


def _retention_events(store) -> list[Event]:
    with store.session() as s:
        return list(s.scalars(select(Event).where(Event.kind == "retention").order_by(Event.id)))


def _after(days: float):
    return utcnow() + timedelta(days=days)


SETTLED_STATES = [StudyState.DELIVERED, StudyState.DEAD_LETTER, StudyState.IGNORED, StudyState.QUARANTINED,
                  StudyState.FAILED, StudyState.OUT_OF_SCOPE]


@pytest.mark.parametrize("state", SETTLED_STATES, ids=lambda s: s.value)
def test_settled_study_is_purged_after_its_time(site, state):
    store, spool, work = site
    uid = _study(store, spool, work, 1, state)
    sr_files = 1 if state in (StudyState.DELIVERED, StudyState.DEAD_LETTER) else 0
    counts = purge_expired(store, spool, work, RETENTION, now=_after(31))
    assert counts == PurgeCounts(spool_studies=1, spool_files=2 + sr_files, work_studies=1, work_files=1)
    assert not (spool / uid).exists() and not (work / uid).exists()
    assert spool.is_dir() and work.is_dir()
    assert all(i.file_missing for i in store.instances_of(store.study(uid)))
    events = _retention_events(store)
    assert [(e.outcome, e.study_instance_uid) for e in events] == [
        ("spool-purged", uid), ("work-purged", uid), ("purged", None)]
    assert events[0].detail == {"state": state.value, "instances": 2, "files_removed": 2 + sr_files}


@pytest.mark.parametrize("state", [StudyState.RECEIVING, StudyState.COMPLETE, StudyState.PROCESSING,
                                   StudyState.AWAITING_DETECTOR, StudyState.REPORTED], ids=lambda s: s.value)
def test_unsettled_study_is_never_touched(site, state):
    store, spool, work = site
    uid = _study(store, spool, work, 1, state)
    before = sorted(p for p in (spool / uid).rglob("*"))
    assert purge_expired(store, spool, work, RETENTION, now=_after(3650)) == PurgeCounts()
    assert sorted(p for p in (spool / uid).rglob("*")) == before
    assert (work / uid / "deid" / "1.dcm").is_file()
    assert not _retention_events(store)


def test_a_not_analysed_report_still_in_the_outbox_keeps_the_study(site):
    """A quarantined study whose "not analysed" SR (and a key image of an earlier result) is not
    delivered yet keeps its files; once delivered, they all go."""
    store, spool, work = site
    uid = _study(store, spool, work, 1, StudyState.QUARANTINED)
    reports = [f".reports/{uid}/{name}.dcm" for name in ("na", "ki")]
    for relative in reports:
        (spool / relative).parent.mkdir(parents=True, exist_ok=True)
        (spool / relative).write_bytes(b"report")
    with store.session() as s:
        row = Result(study_id=store.study(uid).id, generation=1, kind="not-analysed", reason="pixels-unclean",
                     bundle_sha256="ab" * 32, backbone="efficientnet-lite0", images_scored=0, images_quarantined=2,
                     sr_sop_instance_uid=f"{uid}.98", sr_path=reports[0], key_image_path=reports[1],
                     timings={"report": 0.1})
        s.add(row)
        s.flush()
        result_id = row.id
    add_delivery(store, result_id, "pacs", OutboxState.PENDING)
    assert purge_expired(store, spool, work, RETENTION, now=_after(3650)) == PurgeCounts()
    (pending,) = store.due_deliveries("pacs")
    store.record_attempt(pending, True, "0x0000", None, None)
    counts = purge_expired(store, spool, work, RETENTION, now=_after(3650))
    assert counts.spool_files == 2 + 2 and not (spool / ".reports" / uid).exists()


def test_work_copies_go_first_then_spool(site):
    store, spool, work = site
    uid = _study(store, spool, work, 1, StudyState.DELIVERED)
    assert purge_expired(store, spool, work, RETENTION, now=_after(0.5)) == PurgeCounts()
    assert purge_expired(store, spool, work, RETENTION, now=_after(2)) == PurgeCounts(work_studies=1, work_files=1)
    assert not (work / uid).exists() and len(list((spool / uid).rglob("*.dcm"))) == 3
    assert purge_expired(store, spool, work, RETENTION, now=_after(31)).spool_files == 3


def test_second_run_is_a_no_op(site):
    store, spool, work = site
    _study(store, spool, work, 1, StudyState.DELIVERED)
    _study(store, spool, work, 2, StudyState.QUARANTINED)
    first = purge_expired(store, spool, work, RETENTION, now=_after(31))
    assert (first.spool_studies, first.work_studies) == (2, 2)
    events = len(_retention_events(store))
    assert purge_expired(store, spool, work, RETENTION, now=_after(31)) == PurgeCounts()
    assert len(_retention_events(store)) == events


def test_reopened_study_keeps_its_files(site):
    store, spool, work = site
    uid = _study(store, spool, work, 1, StudyState.DELIVERED)
    receive(store, uid, count=3, spool=spool)  # a late third instance reopens the study
    assert store.study(uid).state is StudyState.RECEIVING
    assert purge_expired(store, spool, work, RETENTION, now=_after(365)) == PurgeCounts()
    assert len(list((spool / uid).rglob("*.dcm"))) == 4 and (work / uid).is_dir()


def test_only_indexed_files_leave_the_spool(site):
    """A file that arrived but is not in the database yet (the receiver's write-then-insert) stays."""
    store, spool, work = site
    uid = _study(store, spool, work, 1, StudyState.IGNORED)
    unindexed = spool / uid / f"{uid}.1" / f"{uid}.1.9.dcm"
    unindexed.write_bytes(b"just arrived")
    purge_expired(store, spool, work, RETENTION, now=_after(31))
    assert unindexed.read_bytes() == b"just arrived"
    assert [p.name for p in (spool / uid).rglob("*") if p.is_file()] == [unindexed.name]


def test_unknown_folders_and_paths_outside_the_spool_are_left_alone(site, tmp_path):
    store, spool, work = site
    (work / "not-a-uid").mkdir()
    (work / study_uid(404)).mkdir()  # a UID the database does not know
    outside = tmp_path / "outside.dcm"
    outside.write_bytes(b"keep")
    uid = study_uid(5)
    store.record_instance(NewInstance(
        sop_instance_uid=f"{uid}.1", study_instance_uid=uid, series_instance_uid=f"{uid}.2",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1", transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="US", path="../outside.dcm", size_bytes=4))
    drive(store, uid, StudyState.FAILED)
    assert purge_expired(store, spool, work, RETENTION, now=_after(31)) == PurgeCounts()
    assert outside.read_bytes() == b"keep"
    assert (work / "not-a-uid").is_dir() and (work / study_uid(404)).is_dir()
    with store.session() as s:
        assert s.scalar(select(Instance.file_missing).where(Instance.study_id == store.study(uid).id)) is False
