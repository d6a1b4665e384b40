"""Crash acceptance: ``kill -9`` the daemon while DCMTK ``storescu`` sends 300 instances.

Every instance that storescu logged as acknowledged (``Received Store Response (Success)``) must,
after a restart on the same folders, be in the spool (a whole, parseable file with its own SOP
Instance UID) and in the database; no partial file may remain in ``spool/.incoming``. The sender
can then resend what was not acknowledged, and every instance ends up stored exactly once.

One crash is shared by the tests of this module (a module-scoped fixture) to keep it short.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.daemon import Daemon
from tests.peers import DCMTK_ENV, wait_for
from tests.util import require_binary

SOURCE = "orthanc-1.2.840.10008.1.2.4.50.dcm"  # a real JPEG Baseline ultrasound image, 53 KB
COUNT = 300
STUDIES = 5
SERIES_PER_STUDY = 2
KILL_AFTER = 50  # instances in the database when the daemon is killed

_SENDING = re.compile(r"^I: Sending file: (.+?)\s*$")
_RESPONSE = re.compile(r"^I: Received Store Response \((.+)\)\s*$")


@dataclass
class Crash:
    daemon: Daemon  # restarted on the same folders (recovery has run)
    files: dict[Path, str]  # file -> its SOP Instance UID
    acknowledged: set[Path]  # files storescu logged as stored with Success
    sender_log: str
    sender_returncode: int
    rows_at_kill: int


def _make_instances(source: Path, outdir: Path) -> dict[Path, str]:
    """``COUNT`` distinct, valid US instances: new Study/Series/SOP UIDs, a few studies and series."""
    outdir.mkdir(parents=True)
    studies = [generate_uid() for _ in range(STUDIES)]
    series = {study: [generate_uid() for _ in range(SERIES_PER_STUDY)] for study in studies}
    files: dict[Path, str] = {}
    for i in range(COUNT):
        ds = pydicom.dcmread(source)
        study = studies[i % STUDIES]
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series[study][(i // STUDIES) % SERIES_PER_STUDY]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        path = outdir / f"{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files[path] = str(ds.SOPInstanceUID)
    return files


def _storescu_args(port: int, files: list[Path], aet: str) -> list[str]:
    # -xy: propose JPEG Baseline (the files' own syntax) besides the uncompressed ones.
    return ["storescu", "-v", "-xy", "-aet", "CRASHSCU", "-aec", aet, "127.0.0.1", str(port), *map(str, files)]


def acknowledged_files(log: str) -> set[Path]:
    """Files that storescu's verbose log shows as answered with a Success status.

    Each ``Sending file: X`` line is paired with the next ``Received Store Response (...)``
    line, provided no other file was started in between.
    """
    acknowledged: set[Path] = set()
    current: Path | None = None
    for line in log.splitlines():
        if match := _SENDING.match(line):
            current = Path(match.group(1))
        elif (match := _RESPONSE.match(line)) and current is not None:
            if match.group(1) == "Success":
                acknowledged.add(current)
            current = None
    return acknowledged


def _count_rows(daemon: Daemon) -> int:
    try:
        return daemon.query("select count(*) from instances")[0][0]
    except Exception:  # the database or its table may not exist yet
        return 0


@pytest.fixture(scope="module")
def crash(tmp_path_factory, shared_dicom: Path) -> Crash:
    require_binary("storescu", "echoscu")
    root = tmp_path_factory.mktemp("crash")
    files = _make_instances(shared_dicom / SOURCE, root / "send")
    (root / "daemon").mkdir()
    daemon = Daemon(root / "daemon").start()
    sender_log = root / "storescu.log"
    with open(sender_log, "wb") as log:
        # storescu writes its log to stderr; its progress dots (stdout) are not wanted.
        sender = subprocess.Popen(_storescu_args(daemon.port, list(files), daemon.aet), env=DCMTK_ENV,
                                  stdout=subprocess.DEVNULL, stderr=log)
        try:
            rows_at_kill = wait_for(lambda: (n := _count_rows(daemon)) >= KILL_AFTER and n, timeout=30,
                                    interval=0.01, what=f"{KILL_AFTER} instances in the database")
            daemon.kill()  # SIGKILL, mid-transfer
            returncode = sender.wait(timeout=60)
        finally:
            if sender.poll() is None:
                sender.send_signal(signal.SIGKILL)
                sender.wait()
    text = sender_log.read_text(errors="replace")
    acknowledged = acknowledged_files(text)
    daemon.start()  # same config, same spool and database: recovery runs before it listens
    try:
        yield Crash(daemon, files, acknowledged, text, returncode, rows_at_kill)
    finally:
        daemon.stop()


def test_acknowledged_instances_survive_kill_9(crash: Crash):
    daemon, files = crash.daemon, crash.files
    # The crash happened mid-transfer: storescu failed, and had some but not all instances stored.
    assert crash.sender_returncode != 0, crash.sender_log[-2000:]
    # One association sends serially: every row but possibly the newest was answered before the
    # next file was sent, so at least rows_at_kill - 1 instances were logged as acknowledged.
    assert crash.rows_at_kill - 1 <= len(crash.acknowledged) < COUNT, crash.sender_log[-2000:]
    assert crash.acknowledged <= set(files)

    rows = dict(daemon.query("select sop_instance_uid, path from instances"))
    missing_rows = sorted(f.name for f in crash.acknowledged if files[f] not in rows)
    assert not missing_rows, f"{len(missing_rows)} acknowledged instances have no database row"
    for path in sorted(crash.acknowledged):
        sop_uid = files[path]
        stored = daemon.spool / rows[sop_uid]
        assert stored.is_file(), f"acknowledged {path.name} ({sop_uid}) has no spool file"
        ds = pydicom.dcmread(stored)
        assert ds.SOPInstanceUID == sop_uid
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit  # stored exactly as received
        ds.PixelData  # noqa: B018  (the whole file is there, up to its last element)
        assert stored.read_bytes()[128:132] == b"DICM"
        assert stored.stat().st_size == daemon.query(
            "select size_bytes from instances where sop_instance_uid = ?", sop_uid)[0][0]

    # Nothing half-written is left, and no row points at a missing file.
    assert not list((daemon.spool / ".incoming").glob("*"))
    assert daemon.query("select count(*) from instances where file_missing") == [(0,)]
    # Every row is a real, known instance (no stray rows from the crash).
    assert set(rows) <= set(files.values())
    assert len(rows) >= len(crash.acknowledged)


def test_resend_after_restart_stores_each_instance_once(crash: Crash):
    daemon, files = crash.daemon, crash.files
    rest = [f for f in files if f not in crash.acknowledged]  # what the sender must retry
    assert rest
    started = time.monotonic()
    result = subprocess.run(_storescu_args(daemon.port, rest, daemon.aet), env=DCMTK_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert acknowledged_files(result.stderr) == set(rest), "every resent instance must be acknowledged"

    wait_for(lambda: _count_rows(daemon) >= COUNT, timeout=max(5.0, 30 - (time.monotonic() - started)),
             what="all instances in the database")
    rows = daemon.query("select sop_instance_uid, path from instances")
    uids = [uid for uid, _ in rows]
    assert len(uids) == len(set(uids)) == COUNT
    assert set(uids) == set(files.values())
    on_disk = sorted(p for p in daemon.spool.glob("*/*/*.dcm"))
    assert len(on_disk) == COUNT
    assert {p.relative_to(daemon.spool).as_posix() for p in on_disk} == {path for _, path in rows}
    per_study = dict(daemon.query("select study_instance_uid, instance_count from studies"))
    assert len(per_study) == STUDIES
    assert sum(per_study.values()) == COUNT
    # Each instance was recorded once across both runs (recovery included), never twice.
    assert daemon.query("select count(*), count(distinct sop_instance_uid) from instances") == [(COUNT, COUNT)]
