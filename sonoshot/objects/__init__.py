"""objects
=======

Where the pixels live: received originals, de-identified working copies and the SRs we built,
each a *kind* of object under a key derived from UIDs only, so every write is idempotent (the
same instance, working copy or SR always lands on the same key) and no key carries PHI.

| kind | key | written by | read by |
|---|---|---|---|
| ``originals`` | ``<study>/<series>/<sop>.dcm`` (the spool path) | receivers, ``sonoshot import`` | deid and detect workers |
| ``work`` | ``<study>/g<generation>.a<attempt>/<keyed sop>.dcm`` | deid workers | detect workers |
| ``reports`` | ``<study>/<sr sop>.a<attempt>.dcm`` | detect workers | deliverers |

``attempt`` is the study lease of the claim that wrote the object: a worker that lost its claim
(paused past the stall timeout, then resumed) writes beside the retry's objects, never over
them, and deletes what it wrote once the store refuses its result.

Three implementations of :class:`ObjectStore`: the embedded default keeps the local spool and
work folders (:func:`spool_store`); cluster mode uses a shared POSIX folder
(:class:`~sonoshot.objects.folder.FolderStore`) or an S3-compatible store
(:class:`~sonoshot.objects.s3.S3Store`). The objects hold PHI: see docs/operations.md for
per-role keys and encryption at rest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Protocol

from sonoshot.config import Config, ConfigError
from sonoshot.dicom_io.spool import REPORTS, SUFFIX, check_uid


class Kind(str, Enum):
    ORIGINALS = "originals"
    WORK = "work"
    REPORTS = "reports"


class ObjectStoreError(OSError):
    """The object store could not be reached or refused the request (the message names the key)."""


class ObjectNotFound(ObjectStoreError):
    """No object under that key."""


def work_prefix(study_uid: str, generation: int, attempt: int) -> str:
    """The key prefix of the working copies one claim made of one study generation."""
    return f"{check_uid(study_uid, 'StudyInstanceUID')}/g{int(generation)}.a{int(attempt)}/"


def work_key(study_uid: str, generation: int, attempt: int, file_name: str) -> str:
    """The key of one de-identified working copy (see :func:`work_prefix`)."""
    return work_prefix(study_uid, generation, attempt) + file_name


def report_key(study_uid: str, sr_uid: str, attempt: int) -> str:
    """The key of the SR one claim built for ``study_uid``."""
    return f"{check_uid(study_uid, 'StudyInstanceUID')}/{check_uid(sr_uid, 'SOPInstanceUID')}.a{int(attempt)}{SUFFIX}"


def check_key(key: str) -> str:
    """Return ``key`` if it is a relative path of plain parts (no ``..``, no leading ``/``).

    Raises
    ------
    ValueError
        Naming the key otherwise.
    """
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in ("", ".", ".."):
        raise ValueError(f"object key {key!r} is not a relative path of plain parts")
    return key


class ObjectStore(Protocol):
    """Objects by kind and key. Every method raises :class:`ObjectStoreError` when the store is
    unreachable or refuses, and :class:`ObjectNotFound` for a missing key where one is read."""

    def put(self, kind: Kind, key: str, data: bytes) -> None: ...

    def put_file(self, kind: Kind, key: str, path: Path) -> None: ...

    def get(self, kind: Kind, key: str) -> bytes: ...

    def local_file(self, kind: Kind, key: str) -> contextlib.AbstractContextManager[Path]:
        """A readable local file with the object's bytes for the duration of the ``with``."""
        ...

    def exists(self, kind: Kind, key: str) -> bool: ...

    def delete(self, kind: Kind, keys: Sequence[str]) -> int:
        """Delete ``keys`` (missing ones are skipped); returns how many existed."""
        ...

    def delete_prefix(self, kind: Kind, prefix: str) -> int: ...

    def top_level(self, kind: Kind) -> list[str]:
        """The first parts of every key of ``kind`` (study UIDs)."""
        ...

    def describe(self) -> str:
        """Where the store is, for logs and health checks (no secret)."""
        ...

    def check(self) -> None:
        """Raise :class:`ObjectStoreError` unless every kind can be reached."""
        ...


def spool_store(config: Config) -> ObjectStore:
    """The embedded default: originals and SRs in the local spool, working copies in the work folder."""
    from sonoshot.objects.folder import FolderStore

    spool = Path(config.storage.spool_dir)
    return FolderStore({Kind.ORIGINALS: spool, Kind.WORK: Path(config.storage.work_dir), Kind.REPORTS: spool / REPORTS},
                       fsync=config.storage.fsync)


def open_object_store(config: Config) -> ObjectStore:
    """The object store ``objects.store`` names.

    Raises
    ------
    ConfigError
        If its settings are incomplete (no folder, no endpoint or key).
    """
    objects = config.objects
    if objects.store == "spool":
        return spool_store(config)
    if objects.store == "folder":
        from sonoshot.objects.folder import FolderStore

        if not objects.folder:
            raise ConfigError("objects.folder", "required when objects.store is 'folder'")
        root = Path(objects.folder)
        return FolderStore({kind: root / kind.value for kind in Kind}, fsync=config.storage.fsync)
    from sonoshot.objects.s3 import S3Store

    return S3Store.from_config(objects)
