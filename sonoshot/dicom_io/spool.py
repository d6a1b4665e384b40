"""spool.py
========

The durable file layout for received instances, exactly as received:
``<spool>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.

A file is written to ``<spool>/.incoming``, fsynced, renamed into place and its folder fsynced
(and the folders above it, when they were just created), so once :meth:`Spool.put` or
:meth:`Spool.adopt` returns the instance survives a crash or power loss. Concurrent associations
that rename into the same folder share one folder fsync (:class:`FolderSync`, group commit). UIDs
are checked against the DICOM UID grammar before they become path parts, so a crafted UID cannot
escape.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

INCOMING = ".incoming"
REPORTS = ".reports"  # SRs we built, kept until delivered; never indexed as received instances
SUFFIX = ".dcm"

# PS3.5 9.1: digits and dots, at most 64 characters. Real devices write leading zeros in a
# component; that is tolerated (it cannot form a path trick), empty components are not.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


class UnsafeUID(ValueError):
    """A UID that is not a valid DICOM UID and must not become part of a path."""


def check_uid(uid: object, keyword: str) -> str:
    """Return ``uid`` if it is a syntactically valid DICOM UID.

    Raises
    ------
    UnsafeUID
        Naming the keyword, if the value is missing, too long or not digits and dots.
    """
    if not isinstance(uid, str) or not uid:
        raise UnsafeUID(f"{keyword} is missing")
    if len(uid) > 64 or not _UID.fullmatch(uid):
        raise UnsafeUID(f"{keyword} is not a valid UID (digits and dots, at most 64 characters)")
    return uid


def fsync_dir(path: str | Path) -> None:
    """Make a folder's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FolderState:
    def __init__(self) -> None:
        self.requested = 0  # renames announced
        self.synced = 0  # renames covered by a finished fsync
        self.running = False
        self.users = 0  # callers inside sync() for this folder


class FolderSync:
    """Group commit of folder fsyncs: a caller whose rename is done waits for one fsync of the
    folder that started after it; callers that arrive while one runs share the next one.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._folders: dict[str, _FolderState] = {}

    def sync(self, folder: str) -> None:
        """Return once an fsync of ``folder`` that began after this call has finished.

        Raises
        ------
        OSError
            If the fsync fails (every caller it would have covered tries again).
        """
        with self._changed:
            state = self._folders.setdefault(folder, _FolderState())
            state.users += 1
            state.requested += 1
            ticket = state.requested
            try:
                while state.synced < ticket:
                    if state.running:
                        self._changed.wait()
                        continue
                    state.running, covered = True, state.requested
                    self._changed.release()
                    try:
                        fsync_dir(folder)
                    finally:
                        self._changed.acquire()
                        state.running = False
                        self._changed.notify_all()
                    state.synced = covered
            finally:
                state.users -= 1
                if not state.users:
                    del self._folders[folder]


class Spool:
    """The folder of received instances. Holds PHI: only the daemon's user may read it."""

    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = Path(root)
        self._root = str(self.root)  # the hot path joins strings: pathlib interns every (unique) UID part
        self.fsync = fsync
        self.incoming = self.root / INCOMING
        self.incoming.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.folders = FolderSync()

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """The spool-relative path of an instance, after checking each UID."""
        return "/".join((check_uid(study_uid, "StudyInstanceUID"), check_uid(series_uid, "SeriesInstanceUID"),
                         check_uid(sop_uid, "SOPInstanceUID") + SUFFIX))

    def _folder_for(self, target: str) -> None:
        """Create ``target``'s folder (and those above it) durably: each new folder's parent is fsynced."""
        folder = os.path.dirname(target)
        missing = []
        while not os.path.isdir(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, 0o700)
            if self.fsync:
                self.folders.sync(os.path.dirname(folder))

    def put(self, relative: str, *chunks: bytes | bytearray | memoryview) -> int:
        """Write ``chunks`` (one after another) durably at ``relative``; returns the bytes written."""
        target = os.path.join(self._root, relative)
        self._folder_for(target)
        fd, tmp = tempfile.mkstemp(dir=self.incoming, suffix=".part")
        size = sum(memoryview(chunk).nbytes for chunk in chunks)
        try:
            try:
                written = os.writev(fd, chunks)
                if written < size:  # a short write (a signal, a full disk): write the rest the slow way
                    rest = b"".join(bytes(c) for c in chunks)[written:]
                    while rest:
                        rest = rest[os.write(fd, rest):]
                if self.fsync:
                    os.fdatasync(fd)  # the data and its size; mtime is not needed
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if self.fsync:
            self.folders.sync(os.path.dirname(target))
        return size

    def open_incoming(self) -> tuple[io.FileIO, Path]:
        """A new, empty ``.part`` file in ``.incoming`` (unbuffered, mode 0600) for a streamed instance;
        :meth:`adopt` makes it durable in place, :meth:`discard_incomplete` removes it after a crash."""
        fd, tmp = tempfile.mkstemp(dir=self.incoming, suffix=".part")
        return io.FileIO(fd, "wb", closefd=True), Path(tmp)

    def adopt(self, relative: str, part: Path) -> int:
        """Make a finished ``.part`` file from :meth:`open_incoming` durable at ``relative``; returns its size."""
        target = os.path.join(self._root, relative)
        self._folder_for(target)
        fd = os.open(part, os.O_RDONLY)
        try:
            if self.fsync:
                os.fdatasync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        os.replace(part, target)
        if self.fsync:
            self.folders.sync(os.path.dirname(target))
        return size

    def holds(self, relative: str) -> bool:
        """Whether an instance is stored durably at ``relative``. Another association may have
        renamed it into place a moment ago, before its folder fsync: that fsync is awaited (shared)
        so a duplicate is never acknowledged ahead of the original's durability."""
        target = os.path.join(self._root, relative)
        if not os.path.isfile(target):
            return False
        if self.fsync:
            self.folders.sync(os.path.dirname(target))
        return True

    def path(self, relative: str) -> Path:
        return self.root / relative

    def free_mb(self) -> float:
        return shutil.disk_usage(self.root).free / 2**20

    def stored_files(self) -> list[str]:
        """Every spool-relative received instance path on disk (not our own folders)."""
        return sorted(str(p.relative_to(self.root)) for p in self.root.glob(f"*/*/*{SUFFIX}")
                      if not p.relative_to(self.root).parts[0].startswith("."))

    def report_path(self, study_uid: str, sr_uid: str) -> str:
        """The spool-relative path for an SR we built about ``study_uid``."""
        return f"{REPORTS}/{check_uid(study_uid, 'StudyInstanceUID')}/{check_uid(sr_uid, 'SOPInstanceUID')}{SUFFIX}"

    def discard_incomplete(self) -> int:
        """Delete partial files left by a crash; they were never acknowledged."""
        count = 0
        for part in self.incoming.glob("*.part"):
            part.unlink()
            count += 1
        return count

