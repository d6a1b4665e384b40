"""sonoshot status, studies and audit export, in-process through main(argv), on a real database."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from sqlalchemy import update

from sonoshot.cli import main
from sonoshot.db.lifecycle import StudyState
from sonoshot.db.models import Study, utcnow
from tests.ops_rows import BUNDLE, drive, new_store, receive, study_uid

STATES = [StudyState.DELIVERED, StudyState.DEAD_LETTER, StudyState.AWAITING_DETECTOR, StudyState.RECEIVING]


@pytest.fixture
def site(tmp_path):
    """A config file and a database with one study in each of :data:`STATES`."""
    db = tmp_path / "var" / "sonoshot.db"
    config = tmp_path / "sonoshot.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{db}"\n')
    store = new_store(db.parent)
    uids = {}
    for n, state in enumerate(STATES):
        uids[state] = study_uid(n)
        receive(store, uids[state], count=n + 1, pseudonym=f"PSEUDO-{n}")
        drive(store, uids[state], state, score=0.25 * (n + 1))
    yield config, store, uids
    store.dispose()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_lists_studies_and_queues(site, capsys):
    config, _store, uids = site
    code, out, _ = run(capsys, "--config", str(config), "status")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["STUDY", "INSTANCE", "UID", "STATE", "INSTANCES", "LAST", "RECEIVED", "SCORE",
                                "VERDICT", "DELIVERY"]
    delivered = next(line for line in lines if line.startswith(uids[StudyState.DELIVERED] + " "))
    assert delivered.split()[1:2] + delivered.split()[4:] == ["delivered", "0.250", "abnormal", "pacs:delivered"]
    assert "pacs:dead-letter" in out
    assert "QUEUE" in out and any(line.split() == ["awaiting-detector", "1"] for line in lines)
    assert any(line.split() == ["pending-deliveries", "0"] for line in lines)
    assert lines.index(next(line for line in lines if line.startswith(uids[StudyState.RECEIVING]))) == 1


def test_status_limit(site, capsys):
    config, _store, uids = site
    _, out, _ = run(capsys, "--config", str(config), "status", "--limit", "1")
    assert uids[StudyState.RECEIVING] in out and uids[StudyState.DELIVERED] not in out


def test_studies_filters_by_state_and_since(site, capsys):
    config, store, uids = site
    _, out, _ = run(capsys, "--config", str(config), "studies", "--state", "dead-letter")
    assert uids[StudyState.DEAD_LETTER] in out
    assert all(uids[s] not in out for s in STATES if s is not StudyState.DEAD_LETTER)
    old = uids[StudyState.DELIVERED]
    with store.session() as s:
        s.execute(update(Study).where(Study.study_instance_uid == old).values(
            last_received_at=utcnow() - timedelta(days=3), state_changed_at=utcnow() - timedelta(days=3)))
    _, out, _ = run(capsys, "--config", str(config), "studies", "--since", "24h")
    assert old not in out and all(uids[s] in out for s in STATES[1:])
    iso = (utcnow() - timedelta(days=4)).strftime("%Y-%m-%dT%H:%M:%S")
    _, out, _ = run(capsys, "--config", str(config), "studies", "--since", iso)
    assert old in out
    code, out, _ = run(capsys, "--config", str(config), "studies", "--since", "2999-01-01")
    assert code == 0 and out.strip() == "no matching studies"


@pytest.mark.parametrize("argv", [["studies", "--since", "yesterday"], ["studies", "--state", "lost"],
                                  ["audit", "export", "--format", "xml"]])
def test_bad_arguments_exit_2(site, capsys, argv):
    config, _store, _uids = site
    code, _, err = run(capsys, "--config", str(config), *argv)
    assert code == 2 and "Invalid value" in err


def test_audit_export_csv(site, capsys, tmp_path):
    config, _store, uids = site
    out_file = tmp_path / "audit.csv"
    code, _, err = run(capsys, "--config", str(config), "audit", "export", "--since", "7d", "--out", str(out_file))
    assert code == 0 and "wrote 4 studies" in err
    rows = list(csv.DictReader(io.StringIO(out_file.read_text())))
    assert [r["study_instance_uid"] for r in rows] == [uids[s] for s in STATES]
    done = rows[0]
    assert (done["outcome"], done["patient_pseudonym"], done["bundle_sha256"], done["verdict"]) == (
        "delivered", "PSEUDO-0", BUNDLE, "abnormal")
    for column in ("first_received_at", "completed_at", "deidentified_at", "scored_at", "delivered_at"):
        assert done[column].endswith("Z") and done[column] != "-"
    assert rows[1]["delivered_at"] == "" and rows[1]["delivery"] == "pacs:dead-letter"
    assert rows[3]["completed_at"] == "" and rows[3]["outcome"] == "receiving"


def test_audit_export_json_to_stdout(site, capsys):
    config, _store, uids = site
    code, out, _ = run(capsys, "--config", str(config), "audit", "export", "--format", "json")
    records = json.loads(out)
    assert code == 0 and [r["study_instance_uid"] for r in records] == [uids[s] for s in STATES]
    assert records[0]["score"] == pytest.approx(0.25) and records[2]["score"] is None
    assert records[2]["outcome"] == "awaiting-detector" and records[2]["deidentified_at"].endswith("Z")
    assert not any(key.startswith(("patient_name", "patient_id", "birth")) for key in records[0])


def test_missing_database_is_reported_not_created(tmp_path, capsys):
    db = tmp_path / "absent" / "sonoshot.db"
    config = tmp_path / "sonoshot.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{db}"\n')
    code, _, err = run(capsys, "--config", str(config), "status")
    assert code == 1 and "no database" in err
    assert not db.parent.exists()
