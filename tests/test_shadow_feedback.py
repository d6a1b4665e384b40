"""Shadow mode's outbox (hold, release, discard), feedback (screening, CSV, the CLI) and console
accounts, on a real SQLite database driven through the store's own methods."""

from __future__ import annotations

import io
from datetime import timedelta

import pydicom
import pytest
from pydicom.uid import generate_uid

from sonoshot.cli import main
from sonoshot.console.auth import allowed, hash_password, verify_password
from sonoshot.db import users
from sonoshot.db.lifecycle import OutboxState, StudyState
from sonoshot.db.models import Result, utcnow
from sonoshot.db.outbox import discard_held, hold_pending, release_held
from sonoshot.db.queries import queue_depths
from sonoshot.db.validation import UnknownStudy, feedback_of, labelled_results
from sonoshot.dicom_io.deid.phi import PhiStrings
from sonoshot.dicom_io.spool import Spool
from sonoshot.validation.feedback import FeedbackError, parse_csv, screen_finding, submit
from tests.ops_rows import add_delivery, drive, new_store, receive, study_uid


@pytest.fixture
def store(tmp_path):
    store = new_store(tmp_path)
    yield store
    store.dispose()


def _sql(store, query: str) -> list[tuple]:
    with store.reader.connect() as connection:
        return [tuple(row) for row in connection.exec_driver_sql(query).all()]


def _states(store) -> list[str]:
    return [s for (s,) in _sql(store, "select state from deliveries order by id")]


def test_shadow_holds_then_release_sends_each_latest_result_once(store):
    for n in (1, 2):
        receive(store, study_uid(n))
        drive(store, study_uid(n), StudyState.REPORTED)  # one pending delivery each
    assert hold_pending(store, "pacs") == 2 and queue_depths(store)["held-deliveries"] == 2
    assert store.due_deliveries("pacs") == []  # nothing is due: nothing would be sent
    assert hold_pending(store, "pacs") == 0
    counts = release_held(store, "tester", until=utcnow() - timedelta(days=1))
    assert (counts.released, counts.withheld) == (0, 0)
    counts = release_held(store, "tester")
    assert (counts.released, counts.withheld) == (2, 0) and len(store.due_deliveries("pacs")) == 2
    assert release_held(store, "tester").released == 0  # a second release sends nothing again
    for item in store.due_deliveries("pacs"):
        store.record_attempt(item, True, "0x0000", None, None)
    assert {store.study(study_uid(n)).state for n in (1, 2)} == {StudyState.DELIVERED}


def test_release_withholds_a_superseded_result_and_discard_settles(store):
    uid = study_uid(3)
    receive(store, uid)
    drive(store, uid, StudyState.REPORTED)
    hold_pending(store, "pacs")
    with store.session() as s:  # a later generation's result, held too
        older = s.get(Result, 1)
        newer = Result(**{c: getattr(older, c) for c in ("study_id", "score", "verdict", "threshold", "bundle_sha256",
                                                        "backbone", "images_scored", "images_quarantined", "sr_path",
                                                        "timings")}, generation=2, sr_sop_instance_uid=uid + ".99.2")
        s.add(newer)
        s.flush()
        newer_id = newer.id
    add_delivery(store, newer_id, "pacs", OutboxState.HELD)
    counts = release_held(store, "tester")
    assert (counts.released, counts.withheld) == (1, 1)
    assert _states(store) == ["withheld", "pending"]
    (item,) = store.due_deliveries("pacs")
    assert item.result.generation == 2
    store.record_attempt(item, True, "0x0000", None, None)
    assert store.study(uid).state is StudyState.DELIVERED
    receive(store, study_uid(4))
    drive(store, study_uid(4), StudyState.REPORTED)
    hold_pending(store, "pacs")
    assert discard_held(store, "tester").withheld == 1
    assert store.study(study_uid(4)).state is StudyState.WITHHELD
    events = _sql(store, "select outcome, detail from events where kind = 'delivery' "
                         "and outcome in ('released', 'withheld')")
    assert {o for o, _ in events} == {"released", "withheld"} and all('"by": "tester"' in d for _, d in events)


def test_resend_of_a_study_leaves_held_deliveries_to_release(store):
    uid = study_uid(5)
    receive(store, uid)
    drive(store, uid, StudyState.REPORTED)
    hold_pending(store, "pacs")
    assert store.requeue_dead_letters(uid) == 0 and queue_depths(store)["held-deliveries"] == 1


PHI = PhiStrings(frozenset({"zwinglivarth", "hieronymus", "zwinglivarth^hieronymus"}), frozenset({"qx7734219k"}))


@pytest.mark.parametrize("text", ["mass near Zwinglivarth", "ZWINGLIVARTH", "Hieronimus was seen",
                                  "see QX7734219K", "born 12.03.1947", "MRN 4471234", "x" * 201])
def test_findings_with_phi_dates_or_ids_are_refused(text):
    with pytest.raises(FeedbackError, match="refused|at most"):
        screen_finding(text, PHI)


def test_findings_without_phi_pass_and_unscreenable_text_is_refused():
    assert screen_finding("  solid   mass, 12 mm, BI-RADS 4  ", PHI) == "solid mass, 12 mm, BI-RADS 4"
    assert screen_finding("", PHI) is None
    with pytest.raises(FeedbackError, match="no longer in the spool"):
        screen_finding("cyst", None)


def test_csv_import_is_all_or_nothing_with_every_bad_line_named():
    rows = parse_csv("study_instance_uid,label,source\n1.2.3,Abnormal,ris\n1.2.4,normal\n\n")
    assert [(r.line, r.study_instance_uid, r.label, r.source) for r in rows] == [
        (2, "1.2.3", "abnormal", "ris"), (3, "1.2.4", "normal", None)]
    with pytest.raises(FeedbackError) as raised:
        parse_csv("1.2.3,maybe\n1.2.4\n1.2.5,normal,not a token!\n")
    assert all(f"line {n}" in str(raised.value) for n in (1, 2, 3))


def _spooled_study(tmp_path, store, shared_dicom) -> tuple[str, Spool]:
    """A received instance with a patient name, written into a real spool and indexed."""
    from sonoshot.db.store import NewInstance
    from tests.scenarios import SMALL_US

    spool = Spool(tmp_path / "spool")
    ds = pydicom.dcmread(shared_dicom / SMALL_US)
    ds.PatientName, ds.PatientID = "Quastorius^Amalia", "ID99812"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    relative = spool.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    (spool.root / relative).parent.mkdir(parents=True)
    ds.save_as(spool.root / relative)
    store.record_instance(NewInstance(ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID,
                                      ds.file_meta.TransferSyntaxUID, "US", relative, 10))
    return ds.StudyInstanceUID, spool


def test_submit_screens_against_the_studys_own_header(tmp_path, store, shared_dicom):
    uid, spool = _spooled_study(tmp_path, store, shared_dicom)
    with pytest.raises(FeedbackError, match="identifying string"):
        submit(store, spool, uid, "abnormal", "dr.who", "console", "127.0.0.1", "lesion, Mrs Quastorius")
    with pytest.raises(UnknownStudy):
        submit(store, spool, "1.2.3.999", "normal", "dr.who", "cli", "host")
    submit(store, spool, uid, "ABNORMAL", "dr.who", "console", "127.0.0.1", "lesion at 3 o'clock", "radiologist")
    (row,) = feedback_of(store, uid)
    assert (row.label, row.finding, row.source, row.recorded_by, row.channel, row.origin) == (
        "abnormal", "lesion at 3 o'clock", "radiologist", "dr.who", "console", "127.0.0.1")


def test_the_feedback_command_and_labelled_results(tmp_path, store, capsys):
    config = tmp_path / "sonoshot.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "sonoshot.db"}"\n'
                      f'[storage]\nspool_dir = "{tmp_path / "spool"}"\n')
    for n, score in ((6, 0.9), (7, 0.2)):
        receive(store, study_uid(n))
        drive(store, study_uid(n), StudyState.DELIVERED, score=score)
    assert main(["--config", str(config), "feedback", study_uid(6), "--label", "abnormal", "--source", "pathology"]) \
        == 0
    labels = tmp_path / "labels.csv"
    labels.write_text(f"{study_uid(7)},normal\n{study_uid(99)},normal\n")
    assert main(["--config", str(config), "feedback", "--csv", str(labels)]) == 1
    assert "unknown studies, nothing imported: line 2" in capsys.readouterr().err
    labels.write_text(f"{study_uid(7)},normal\n")
    assert main(["--config", str(config), "feedback", "--csv", str(labels), "--source", "ris"]) == 0
    rows = labelled_results(store)
    assert [(r.study_instance_uid, r.label, r.score) for r in rows] == [(study_uid(6), "abnormal", 0.9),
                                                                         (study_uid(7), "normal", 0.2)]
    channels = _sql(store, "select channel, source from feedback order by id")
    assert channels == [("cli", "pathology"), ("csv", "ris")]
    assert main(["--config", str(config), "performance", "--format", "json"]) == 0
    assert '"auroc": 1.0' in capsys.readouterr().out


def test_console_accounts_hashes_roles_and_lockout(tmp_path, store, capsys, monkeypatch):
    config = tmp_path / "sonoshot.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "sonoshot.db"}"\n')
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["--config", str(config), "users", "add", "ann", "--role", "admin", "--password-stdin"]) == 1
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert main(["--config", str(config), "users", "add", "ann", "--role", "admin", "--password-stdin"]) == 0
    account = users.get_user(store, "ann")
    assert account.password_hash.startswith("$argon2id$") and "long enough" not in account.password_hash
    assert verify_password(account.password_hash, "a long enough password")
    assert not verify_password(account.password_hash, "wrong") and not verify_password(None, "anything")
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert main(["--config", str(config), "users", "add", "ann", "--role", "admin", "--password-stdin"]) == 1
    assert "exists already" in capsys.readouterr().err
    for _ in range(4):
        assert users.record_login(store, "ann", False, max_failed=5) is False
    assert users.record_login(store, "ann", False, max_failed=5) is True
    assert users.get_user(store, "ann").locked_until > utcnow()
    users.set_password(store, "ann", hash_password("another long password"), "admin")
    assert users.get_user(store, "ann").locked_until is None
    assert allowed("admin", "resend") and not allowed("auditor", "resend") and not allowed("clinician", "audit")
    assert main(["--config", str(config), "users", "remove", "ann"]) == 0 and users.list_users(store) == []
