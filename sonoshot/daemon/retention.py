"""retention.py
============

The retention job: once a study has settled (delivered, dead-letter, ignored, out-of-scope,
quarantined or failed; :data:`sonoshot.db.lifecycle.SETTLED`, with no delivery of its reports
still pending) for ``retention.spool_days``, its received files, SR documents and key images
leave the spool; after ``retention.work_days`` its de-identified copies
(``<work_dir>/<StudyInstanceUID>/``) leave the work folder. A study that is not settled is never
touched: each deletion runs while the study row is locked and re-checked, so a late instance
that reopens the study either waits for the purge or stops it.

Every purged study gets a ``retention`` audit event; a second run finds nothing to do.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sonoshot.config import RetentionConfig
from sonoshot.db import queries
from sonoshot.db.store import Store
from sonoshot.dicom_io.spool import UnsafeUID, check_uid

log = logging.getLogger(__name__)

#: How often the service should run :func:`purge_expired`.
INTERVAL_S = 3600.0


@dataclass(frozen=True)
class PurgeCounts:
    """What one retention run removed."""

    spool_studies: int = 0
    spool_files: int = 0
    work_studies: int = 0
    work_files: int = 0


def _inside(root: Path, relative: str) -> Path:
    """``root / relative``, refusing paths that would leave ``root``."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"path {relative!r} is outside {root}")
    return path


def _prune_empty_parents(path: Path, root: Path) -> None:
    """Remove empty folders from ``path`` up to, not including, ``root``."""
    root = root.resolve()
    while path != root and path.is_relative_to(root):
        try:
            path.rmdir()
        except OSError:  # not empty (or already gone): stop
            return
        path = path.parent


def remove_spool_files(spool_root: Path, relative_paths: list[str]) -> int:
    """Delete spool-relative files and the folders they leave empty; returns files removed.

    Raises
    ------
    ValueError
        If a path would leave ``spool_root`` (nothing is deleted then).
    """
    paths = [_inside(spool_root, relative) for relative in relative_paths]
    removed = 0
    for path in paths:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    for folder in {p.parent for p in paths}:
        _prune_empty_parents(folder, spool_root)
    return removed


def remove_tree(folder: Path) -> int:
    """Delete ``folder`` and everything in it; returns the number of files removed."""
    if not folder.is_dir():
        return 0
    files = sum(len(names) for _dir, _subdirs, names in os.walk(folder))
    shutil.rmtree(folder)
    return files


def _work_study_uids(work_root: Path) -> list[str]:
    """Names of the per-study folders in the work folder that are valid Study Instance UIDs."""
    if not work_root.is_dir():
        return []
    uids = []
    for entry in work_root.iterdir():
        try:
            uids.append(check_uid(entry.name, "StudyInstanceUID"))
        except UnsafeUID:
            continue
    return uids


def _purge_spool(store: Store, spool_root: Path, cutoff: datetime) -> tuple[int, int]:
    studies = files = 0
    for uid in queries.spool_purge_candidates(store, cutoff):
        try:
            removed = queries.mark_spool_purged(store, uid, cutoff,
                                                lambda paths: remove_spool_files(spool_root, paths))
        except ValueError as exc:  # a path outside the spool in the database: keep the files
            log.error("retention: study %s skipped: %s", uid, exc)
            continue
        if removed is not None:
            studies += 1
            files += removed
    return studies, files


def _purge_work(store: Store, work_root: Path, cutoff: datetime) -> tuple[int, int]:
    studies = files = 0
    for uid in queries.settled_studies(store, _work_study_uids(work_root), cutoff):
        removed = queries.mark_work_purged(store, uid, cutoff, lambda folder=work_root / uid: remove_tree(folder))
        if removed is not None:
            studies += 1
            files += removed
    return studies, files


def purge_expired(store: Store, spool_root: Path, work_root: Path, retention: RetentionConfig,
                  now: datetime | None = None) -> PurgeCounts:
    """Purge the spool files and de-identified copies of studies settled long enough ago.

    Parameters
    ----------
    store
        The state database.
    spool_root, work_root
        ``storage.spool_dir`` and ``storage.work_dir``.
    retention
        ``spool_days`` and ``work_days``, counted from the study's last state change.
    now
        The current time (timezone-aware); defaults to the clock.

    Returns
    -------
    PurgeCounts
        Studies and files removed; all zero when there was nothing to do. A summary event
        ``retention/purged`` is recorded only when something was removed.
    """
    now = now or datetime.now(timezone.utc)
    spool_studies, spool_files = _purge_spool(store, Path(spool_root), now - timedelta(days=retention.spool_days))
    work_studies, work_files = _purge_work(store, Path(work_root), now - timedelta(days=retention.work_days))
    counts = PurgeCounts(spool_studies, spool_files, work_studies, work_files)
    if spool_studies or work_studies:
        store.record_event(queries.RETENTION_EVENT_KIND, "purged", detail=asdict(counts))
        log.info("retention: %s", ", ".join(f"{k}={v}" for k, v in asdict(counts).items()))
    return counts
