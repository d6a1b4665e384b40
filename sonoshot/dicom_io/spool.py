"""spool.py
========

The durable file layout for received instances, exactly as received:
``<spool>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.

A file is written to ``<spool>/.incoming``, fsynced, renamed into place and its folder fsynced,
so once :meth:`Spool.put` returns the instance survives a crash or power loss. UIDs are checked
against the DICOM UID grammar before they become path parts, so a crafted UID cannot escape.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The folder of received instances. Holds PHI: only the daemon's user may read it."""

    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.incoming = self.root / INCOMING
        self.incoming.mkdir(parents=True, exist_ok=True, mode=0o700)

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """The spool-relative path of an instance, after checking each UID."""
        return "/".join((check_uid(study_uid, "StudyInstanceUID"), check_uid(series_uid, "SeriesInstanceUID"),
                         check_uid(sop_uid, "SOPInstanceUID") + SUFFIX))

    def put(self, relative: str, data: bytes) -> int:
        """Write ``data`` durably at ``relative``; returns the number of bytes written."""
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.incoming, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if self.fsync:
                    f.flush()
                    os.fdatasync(f.fileno())  # the data and its size; mtime is not needed
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if self.fsync:
            _fsync_dir(target.parent)
        return len(data)

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

