"""Archive runs (``sonoshot import``): from a folder, an S3 prefix (Swift) and a PACS (Orthanc,
C-FIND then C-MOVE), each study queued once in the low-priority archive lane with its queueing
lock, restartable; and the CLI through a running embedded daemon."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from sonoshot.config import Destination, ObjectsConfig
from sonoshot.daemon.archive import ArchiveImport
from sonoshot.db.cluster import ProcrastinateDeferrer, apply_schema
from sonoshot.db.store import Store
from sonoshot.dicom_io.retrieve import MoveDestination
from sonoshot.objects import Kind
from sonoshot.objects.folder import FolderStore
from sonoshot.objects.s3 import S3Store
from tests.daemon import Daemon
from tests.peers import Orthanc, wait_for
from tests.postgres import fresh_database, postgres_url  # noqa: F401  (the session fixture, by name below)
from tests.scenarios import SMALL_US, SMALL_US_MASK, make_study
from tests.swift import swift_server  # noqa: F401  (the session-scoped server fixture, by name below)
from tests.util import free_port


@pytest.fixture
def cluster_store(request):
    """A migrated store on a fresh PostgreSQL database with procrastinate's schema (cluster mode)."""
    with fresh_database(request.getfixturevalue("postgres_url"), "import") as url:
        store = Store(url, ProcrastinateDeferrer())
        store.migrate()
        apply_schema(store.engine)
        yield store
        store.dispose()


def _archive(shared_dicom: Path, folder: Path, studies: int = 4, count: int = 2) -> list[str]:
    return [make_study(shared_dicom / SMALL_US, folder / f"study{n}", count=count)[0] for n in range(studies)]


def _folder_store(root: Path) -> FolderStore:
    return FolderStore({kind: root / kind.value for kind in Kind}, fsync=False)


def _jobs(store: Store) -> list[tuple]:
    with store.engine.connect() as c:
        return [tuple(r) for r in c.execute(text(
            "SELECT queue_name, priority, queueing_lock, args->>'study_instance_uid', args->>'lane' "
            "FROM procrastinate_jobs ORDER BY id"))]


def test_a_folder_import_queues_each_study_once_in_the_archive_lane(cluster_store, shared_dicom, tmp_path):
    uids = _archive(shared_dicom, tmp_path / "archive")
    (tmp_path / "archive" / "notes.txt").write_text("not DICOM")
    objects = _folder_store(tmp_path / "objects")
    with ArchiveImport(cluster_store, objects, None, "import@test") as importer:
        report = importer.import_folder(tmp_path / "archive")
    assert (report.studies_queued, report.instances_stored, report.files_unreadable) == (4, 8, 1)
    assert sorted(_jobs(cluster_store)) == sorted(("archive", -10, f"archive:{uid}", uid, "archive") for uid in uids)
    assert {cluster_store.study(uid).lane.value for uid in uids} == {"archive"}
    assert len(list((tmp_path / "objects" / "originals").rglob("*.dcm"))) == 8
    with ArchiveImport(cluster_store, objects, None, "import@test") as importer:  # the same run again
        again = importer.import_folder(tmp_path / "archive")
    assert (again.studies_queued, again.studies_skipped, again.instances_stored) == (0, 4, 0)
    assert len(_jobs(cluster_store)) == 4
    with cluster_store.engine.connect() as c:  # the import's association is closed: nothing holds completion
        assert c.scalar(text("SELECT count(*) FROM associations WHERE ended_at IS NULL")) == 0


def test_an_import_stopped_mid_study_completes_it_on_the_next_run(cluster_store, shared_dicom, tmp_path):
    (uid,) = _archive(shared_dicom, tmp_path / "archive", studies=1, count=3)
    files = sorted((tmp_path / "archive").rglob("*.dcm"))
    objects = _folder_store(tmp_path / "objects")
    with ArchiveImport(cluster_store, objects, None, "import@test") as importer:
        importer._store_instance(files[0])  # then the import was killed
    assert cluster_store.study(uid).state.value == "receiving" and _jobs(cluster_store) == []
    with ArchiveImport(cluster_store, objects, None, "import@test") as importer:
        report = importer.import_folder(tmp_path / "archive")
    assert (report.studies_queued, report.instances_stored, report.instances_known) == (1, 2, 1)
    assert cluster_store.study(uid).instance_count == 3 and len(_jobs(cluster_store)) == 1


def test_an_s3_prefix_import(cluster_store, shared_dicom, tmp_path, request):
    swift = request.getfixturevalue("swift_server")
    uids = _archive(shared_dicom, tmp_path / "archive", studies=3)
    admin = swift.client("admin")
    bucket = f"archive-{uuid.uuid4().hex[:8]}"
    admin.create_bucket(Bucket=bucket)
    for n, path in enumerate(sorted((tmp_path / "archive").rglob("*.dcm"))):
        admin.upload_file(str(path), bucket, f"site1/{n}.dcm")
    admin.put_object(Bucket=bucket, Key="other-site/0.dcm", Body=b"not under the prefix")
    client = S3Store.from_config(ObjectsConfig(**swift.objects_config("admin", tmp_path))).client
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with ArchiveImport(cluster_store, _folder_store(tmp_path / "objects"), None, "import@test") as importer:
        report = importer.import_s3(client, bucket, "site1/", scratch)
    assert (report.studies_queued, report.instances_stored, report.files_unreadable) == (3, 6, 0)
    assert sorted(uid for *_rest, uid, _lane in _jobs(cluster_store)) == sorted(uids)
    assert list(scratch.iterdir()) == []  # the downloads (PHI) are gone


@pytest.mark.peers
def test_a_pacs_import_by_c_find_and_c_move(cluster_store, shared_dicom, tmp_path):
    move_port = free_port()
    pacs = Orthanc(tmp_path / "orthanc", {"importer": ("IMPORTER", "127.0.0.1", move_port),  # where to move
                                           "sonoshot": ("SONOSHOT", "127.0.0.1", free_port())})  # who may ask
    uids = _archive(shared_dicom, tmp_path / "archive", studies=3)
    with pacs:
        for path in sorted((tmp_path / "archive").rglob("*.dcm")):
            pacs.upload(path)
        source = Destination(name="pacs", ae_title=pacs.aet, host="127.0.0.1", port=pacs.dicom_port)
        destination = MoveDestination(tmp_path / "moved", "IMPORTER", move_port)
        with ArchiveImport(cluster_store, _folder_store(tmp_path / "objects"), None, "import@test") as importer:
            report = importer.import_pacs(source, "SONOSHOT", {"ModalitiesInStudy": "US"}, destination)
        assert (report.studies_queued, report.instances_stored) == (3, 6)
        with ArchiveImport(cluster_store, _folder_store(tmp_path / "objects"), None, "import@test") as importer:
            again = importer.import_pacs(source, "SONOSHOT", {"ModalitiesInStudy": "US"}, destination)
        assert (again.studies_queued, again.studies_skipped, again.instances_known) == (0, 3, 0)  # nothing moved
    assert sorted(uid for *_rest, uid, _lane in _jobs(cluster_store)) == sorted(uids)
    with pytest.raises(ValueError, match="NotAKeyword"):
        importer.import_pacs(source, "SONOSHOT", {"NotAKeyword": "1"}, destination)


@pytest.mark.slow
@pytest.mark.peers
def test_the_import_command_feeds_a_running_daemon(tmp_path, shared_dicom, demo_bundle):
    """``sonoshot import folder`` while the embedded daemon runs: the studies are processed, once."""
    uids = _archive(shared_dicom, tmp_path / "archive", studies=3, count=1)
    daemon = Daemon(tmp_path / "sonoshot", {"detector": {"bundle": str(demo_bundle)},
                                             "deid": {"ocr": False, "pixel_masks": [SMALL_US_MASK]}})
    with daemon:
        command = [sys.executable, "-m", "sonoshot", "--config", str(daemon.config_path), "import", "folder",
                   str(tmp_path / "archive")]
        first = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=daemon.workdir)
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["studies_queued"] == 3
        wait_for(lambda: {daemon.study_state(uid) for uid in uids} == {"reported"}, timeout=180, interval=0.5,
                 what="the imported studies processed")
        second = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=daemon.workdir)
        assert json.loads(second.stdout)["studies_skipped"] == 3
        assert daemon.query("SELECT DISTINCT lane FROM studies") == [("archive",)]
        assert daemon.query("SELECT count(*) FROM results") == [(3,)]
