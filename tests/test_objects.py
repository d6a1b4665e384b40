"""The object store's contract on a POSIX folder and on a real S3 server (OpenStack Swift with
s3api on 127.0.0.1, ``tests/swift.py``), plus what only S3 has: per-role keys and encryption at rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from sonoshot.config import ConfigError, ObjectsConfig
from sonoshot.objects import Kind, ObjectNotFound, ObjectStoreError, report_key, work_key
from sonoshot.objects.folder import FolderStore
from sonoshot.objects.s3 import S3Store
from tests.swift import swift_server  # noqa: F401  (the session-scoped server fixture, by name below)
from tests.util import free_port

STUDY = "1.2.826.0.1.3680043.10.4321.7"


def _s3(server, role: str, folder: Path) -> S3Store:
    return S3Store.from_config(ObjectsConfig(**server.objects_config(role, folder)))


@pytest.fixture
def swift(request):
    return request.getfixturevalue("swift_server")


@pytest.fixture(params=["folder", "s3"])
def objects(request, tmp_path):
    if request.param == "folder":
        yield FolderStore({kind: tmp_path / kind.value for kind in Kind}, fsync=False)
        return
    store = _s3(request.getfixturevalue("swift"), "worker", tmp_path)
    yield store
    for kind in Kind:  # the server is shared by the session: leave its buckets empty
        store.delete_prefix(kind, "")


def test_put_get_and_local_file_round_trip(objects, tmp_path):
    key = f"{STUDY}/1.2/1.2.3.dcm"
    objects.put(Kind.ORIGINALS, key, b"DICM original")
    assert objects.get(Kind.ORIGINALS, key) == b"DICM original"
    assert objects.exists(Kind.ORIGINALS, key) and not objects.exists(Kind.WORK, key)
    with objects.local_file(Kind.ORIGINALS, key) as path:
        assert path.read_bytes() == b"DICM original"
    source = tmp_path / "copy.dcm"
    source.write_bytes(b"DICM working copy")
    objects.put_file(Kind.WORK, work_key(STUDY, 2, 3, "9.9.dcm"), source)
    assert objects.get(Kind.WORK, f"{STUDY}/g2.a3/9.9.dcm") == b"DICM working copy"
    objects.put(Kind.ORIGINALS, key, b"DICM again")  # the same key: replaced, never doubled
    assert objects.get(Kind.ORIGINALS, key) == b"DICM again"


def test_missing_objects_and_bad_keys(objects):
    with pytest.raises(ObjectNotFound):
        objects.get(Kind.REPORTS, report_key(STUDY, "1.2.3", 1))
    with pytest.raises(ObjectNotFound), objects.local_file(Kind.REPORTS, report_key(STUDY, "1.2.3", 1)):
        pass
    for bad in ("../escape.dcm", "/absolute.dcm", f"{STUDY}//x.dcm", ""):
        with pytest.raises(ValueError, match="object key"):
            objects.put(Kind.ORIGINALS, bad, b"x")
    assert objects.delete(Kind.ORIGINALS, [f"{STUDY}/nothing.dcm"]) == 0


def test_delete_prefix_and_top_level(objects):
    other = "1.2.826.0.1.3680043.10.4321.8"
    for n in range(3):
        objects.put(Kind.WORK, work_key(STUDY, 1, 1, f"{n}.dcm"), b"x")
    objects.put(Kind.WORK, work_key(other, 1, 1, "0.dcm"), b"x")
    assert objects.top_level(Kind.WORK) == sorted([STUDY, other])
    assert objects.delete_prefix(Kind.WORK, f"{STUDY}/") == 3
    assert objects.top_level(Kind.WORK) == [other]
    assert objects.delete(Kind.WORK, [work_key(other, 1, 1, "0.dcm")]) == 1
    assert objects.top_level(Kind.WORK) == []
    objects.check()


def test_each_role_key_reaches_only_its_buckets(swift, tmp_path):
    receiver, worker, deliverer = (_s3(swift, role, tmp_path) for role in ("receiver", "worker", "deliverer"))
    key = f"{STUDY}/1.2/1.2.4.dcm"
    receiver.put(Kind.ORIGINALS, key, b"PHI")
    with pytest.raises(ObjectStoreError, match="AccessDenied"):
        receiver.get(Kind.ORIGINALS, key)  # a receiver cannot read back what it stored
    with pytest.raises(ObjectStoreError, match="AccessDenied"):
        receiver.put(Kind.REPORTS, report_key(STUDY, "1.9", 2), b"x")
    assert worker.get(Kind.ORIGINALS, key) == b"PHI"
    worker.put(Kind.REPORTS, report_key(STUDY, "1.9", 2), b"SR")
    assert deliverer.get(Kind.REPORTS, report_key(STUDY, "1.9", 2)) == b"SR"
    for kind, name in ((Kind.ORIGINALS, key), (Kind.WORK, work_key(STUDY, 1, 1, "1.dcm"))):
        with pytest.raises(ObjectStoreError, match="AccessDenied"):
            deliverer.get(kind, name)
    for store in (receiver, deliverer):
        store.check()  # AccessDenied is an answer: the endpoint and the key are fine
    assert worker.delete(Kind.ORIGINALS, [key]) == 1 and worker.delete(Kind.REPORTS, [report_key(STUDY, "1.9", 2)]) == 1


def test_objects_are_encrypted_at_rest(swift, tmp_path):
    """Swift's keymaster and encryption middleware: the object files on disk never hold the bytes."""
    store = _s3(swift, "worker", tmp_path)
    marker = b"PATIENT^SECRET^NAME-" * 50
    store.put(Kind.ORIGINALS, f"{STUDY}/1.2/1.2.5.dcm", marker)
    data_files = [p for p in (swift.root / "devices").rglob("*.data")]
    assert data_files
    assert not any(marker[:20] in p.read_bytes() for p in data_files)
    assert store.get(Kind.ORIGINALS, f"{STUDY}/1.2/1.2.5.dcm") == marker
    store.delete(Kind.ORIGINALS, [f"{STUDY}/1.2/1.2.5.dcm"])


def test_an_unreachable_endpoint_and_a_bad_key_are_errors(swift, tmp_path):
    down = ObjectsConfig(**{**swift.objects_config("worker", tmp_path),
                            "endpoint_url": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(ObjectStoreError, match="cannot write sonoshot-originals/x.dcm"):
        S3Store.from_config(down).put(Kind.ORIGINALS, "x.dcm", b"x")
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("not-the-secret")
    bad = ObjectsConfig(**{**swift.objects_config("worker", tmp_path), "secret_access_key_file": str(wrong)})
    with pytest.raises(ObjectStoreError):
        S3Store.from_config(bad).check()
    with pytest.raises(ConfigError, match="objects.endpoint_url"):
        S3Store.from_config(ObjectsConfig(store="s3"))


def test_a_large_object_is_one_put_under_a_role_key(objects, tmp_path):
    """Above boto3's multipart threshold (8 MiB) still one PUT: a role key may not create segments."""
    big = tmp_path / "cine.dcm"
    big.write_bytes(bytes(range(256)) * (40 * 2**12))  # 10 MiB
    objects.put_file(Kind.WORK, work_key(STUDY, 1, 1, "cine.dcm"), big)
    with objects.local_file(Kind.WORK, work_key(STUDY, 1, 1, "cine.dcm")) as path:
        assert path.read_bytes() == big.read_bytes()
