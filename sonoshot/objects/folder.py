"""folder.py
=========

An :class:`~sonoshot.objects.ObjectStore` on POSIX folders, one per kind: the local spool and
work folders of the embedded default, or a shared mount (NFS, CephFS) in cluster mode. A put
writes a temporary file beside the target, fsyncs it, renames it into place and fsyncs the
folder, so a reader sees the whole object or none.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from sonoshot.dicom_io.spool import fsync_dir
from sonoshot.objects import Kind, ObjectNotFound, ObjectStoreError, check_key

PARTIAL = ".partial"


def prune_empty_parents(path: Path, root: Path) -> None:
    """Remove empty folders from ``path`` up to, not including, ``root``."""
    root = root.resolve()
    path = path.resolve()
    while path != root and path.is_relative_to(root):
        try:
            path.rmdir()
        except OSError:  # not empty (or already gone): stop
            return
        path = path.parent


class FolderStore:
    """Objects as files under one root folder per kind (created on first write, mode 0700)."""

    def __init__(self, roots: Mapping[Kind, Path], fsync: bool = True) -> None:
        missing = set(Kind) - set(roots)
        if missing:
            raise ValueError(f'Argument "roots" lacks a folder for {", ".join(sorted(k.value for k in missing))}.')
        self.roots = {kind: Path(root) for kind, root in roots.items()}
        self.fsync = fsync

    def path(self, kind: Kind, key: str) -> Path:
        """The file that holds ``key`` (for a folder store, reading it in place is allowed)."""
        return self.roots[kind] / check_key(key)

    def _write(self, target: Path, write) -> None:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=PARTIAL)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                if self.fsync:
                    f.flush()
                    os.fdatasync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if self.fsync:
            fsync_dir(target.parent)

    def put(self, kind: Kind, key: str, data: bytes) -> None:
        try:
            self._write(self.path(kind, key), lambda f: f.write(data))
        except OSError as exc:
            raise ObjectStoreError(f"cannot write {kind.value}/{key}: {exc.strerror}") from exc

    def put_file(self, kind: Kind, key: str, path: Path) -> None:
        target = self.path(kind, key)
        if Path(path).resolve() == target.resolve():
            return  # already in place (the embedded work folder)
        try:
            with open(path, "rb") as source:
                self._write(target, lambda f: shutil.copyfileobj(source, f, 1 << 20))
        except OSError as exc:
            raise ObjectStoreError(f"cannot write {kind.value}/{key}: {exc.strerror}") from exc

    def get(self, kind: Kind, key: str) -> bytes:
        try:
            return self.path(kind, key).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no object {kind.value}/{key}") from exc
        except OSError as exc:
            raise ObjectStoreError(f"cannot read {kind.value}/{key}: {exc.strerror}") from exc

    @contextlib.contextmanager
    def local_file(self, kind: Kind, key: str) -> Iterator[Path]:
        path = self.path(kind, key)
        if not path.is_file():
            raise ObjectNotFound(f"no object {kind.value}/{key}")
        yield path

    def exists(self, kind: Kind, key: str) -> bool:
        return self.path(kind, key).is_file()

    def delete(self, kind: Kind, keys: Sequence[str]) -> int:
        paths = [self.path(kind, key) for key in keys]  # every key is checked before anything goes
        removed = 0
        for path in paths:
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
        for folder in {p.parent for p in paths}:
            prune_empty_parents(folder, self.roots[kind])
        return removed

    def delete_prefix(self, kind: Kind, prefix: str) -> int:
        folder = self.path(kind, prefix.rstrip("/"))
        if not folder.is_dir():
            return 0
        files = sum(len(names) for _dir, _subdirs, names in os.walk(folder))
        shutil.rmtree(folder)
        prune_empty_parents(folder.parent, self.roots[kind])
        return files

    def top_level(self, kind: Kind) -> list[str]:
        root = self.roots[kind]
        if not root.is_dir():
            return []
        return sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))

    def describe(self) -> str:
        return ", ".join(f"{kind.value}: {root}" for kind, root in self.roots.items())

    def check(self) -> None:
        for kind, root in self.roots.items():
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not os.access(root, os.W_OK | os.X_OK):
                raise ObjectStoreError(f"{kind.value} folder {root} is not writable")
