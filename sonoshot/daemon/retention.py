"""retention.py
============

The retention job: once a study has settled (delivered, dead-letter, ignored, out-of-scope,
quarantined or failed; :data:`sonoshot.db.lifecycle.SETTLED`, with no delivery of its reports
still pending) for ``retention.spool_days``, its received originals, SR documents and key images
leave the object store (the spool, in the embedded default); after
``retention.work_days`` its de-identified copies (``work/<StudyInstanceUID>/``) do. A study that
is not settled is never touched: each deletion runs while the study row is locked and
re-checked, so a late instance that reopens the study either waits for the purge or stops it.
In cluster mode the job runs once per period across the cluster.

Every purged study gets a ``retention`` audit event; a second run finds nothing to do.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone

from sonoshot.config import RetentionConfig
from sonoshot.db import queries
from sonoshot.db.store import Store
from sonoshot.dicom_io.spool import UnsafeUID, check_uid
from sonoshot.objects import Kind, ObjectStore

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


def _work_study_uids(objects: ObjectStore) -> list[str]:
    """The per-study folders of the work store that are named by valid Study Instance UIDs."""
    uids = []
    for name in objects.top_level(Kind.WORK):
        try:
            uids.append(check_uid(name, "StudyInstanceUID"))
        except UnsafeUID:
            continue
    return uids


def _purge_spool(store: Store, objects: ObjectStore, cutoff: datetime) -> tuple[int, int]:
    def delete(originals: list[str], reports: list[str]) -> int:
        return objects.delete(Kind.ORIGINALS, originals) + objects.delete(Kind.REPORTS, reports)

    studies = files = 0
    for uid in queries.spool_purge_candidates(store, cutoff):
        try:
            removed = queries.mark_spool_purged(store, uid, cutoff, delete)
        except ValueError as exc:  # a path outside the spool in the database: keep the files
            log.error("retention: study %s skipped: %s", uid, exc)
            continue
        if removed is not None:
            studies += 1
            files += removed
    return studies, files


def _purge_work(store: Store, objects: ObjectStore, cutoff: datetime) -> tuple[int, int]:
    studies = files = 0
    for uid in queries.settled_studies(store, _work_study_uids(objects), cutoff):
        removed = queries.mark_work_purged(store, uid, cutoff, lambda uid=uid: objects.delete_prefix(Kind.WORK, f"{uid}/"))
        if removed is not None:
            studies += 1
            files += removed
    return studies, files


def purge_expired(store: Store, objects: ObjectStore, retention: RetentionConfig,
                  now: datetime | None = None) -> PurgeCounts:
    """Purge the originals, SRs and de-identified copies of studies settled long enough ago.

    Parameters
    ----------
    store
        The state database.
    objects
        The object store (the spool and work folders in the embedded default).
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
    spool_studies, spool_files = _purge_spool(store, objects, now - timedelta(days=retention.spool_days))
    work_studies, work_files = _purge_work(store, objects, now - timedelta(days=retention.work_days))
    counts = PurgeCounts(spool_studies, spool_files, work_studies, work_files)
    if spool_studies or work_studies:
        store.record_event(queries.RETENTION_EVENT_KIND, "purged", detail=asdict(counts))
        log.info("retention: %s", ", ".join(f"{k}={v}" for k, v in asdict(counts).items()))
    return counts
