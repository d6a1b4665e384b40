"""jobs.py
=======

Periodic work and restart recovery: the completion sweep; recovery of the whole pipeline in one
process (spool files without a row are indexed, rows without a file flagged, interrupted
studies requeued) or of one cluster receiver (its local spool and its own associations only).
"""

from __future__ import annotations

import logging

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from sonoshot.config import CompletionConfig
from sonoshot.db.store import NewInstance, Store
from sonoshot.dicom_io.spool import Spool, UnsafeUID

log = logging.getLogger(__name__)


def sweep_completion(store: Store, completion: CompletionConfig) -> int:
    """Mark studies complete that have gone quiet; returns how many."""
    done = store.complete_quiet_studies(completion.quiet_period_s, completion.max_wait_s)
    for study in done:
        log.info("study %s complete (%d instances, generation %d)", study.study_instance_uid,
                 study.instance_count, study.generation)
    return len(done)


def index_orphans(spool: Spool, store: Store, pending_upload: str | None = None) -> int:
    """Index spool files that have no database row (a crash between rename and insert).

    ``pending_upload`` names the cluster receiver whose local spool this is: its orphans are
    indexed as waiting for upload, and one another receiver indexed meanwhile is dropped.
    """
    local = spool.stored_files()
    known = store.known_paths(local)
    indexed = 0
    for relative in local:
        if relative in known:
            continue
        path = spool.path(relative)
        try:
            ds = dcmread(path, stop_before_pixels=True)
            expected = spool.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        except (InvalidDicomError, AttributeError, UnsafeUID, OSError, ValueError) as exc:
            log.error("spool file %s cannot be indexed (%s); left in place", relative, type(exc).__name__)
            continue
        if expected != relative:
            log.error("spool file %s does not match its own UIDs; left in place", relative)
            continue
        new = store.record_instance(NewInstance(
            sop_instance_uid=ds.SOPInstanceUID, study_instance_uid=ds.StudyInstanceUID,
            series_instance_uid=ds.SeriesInstanceUID, sop_class_uid=ds.SOPClassUID,
            transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, modality=ds.get("Modality"), path=relative,
            size_bytes=path.stat().st_size, pending_upload=pending_upload))
        if new:
            indexed += 1
        elif pending_upload is not None:
            path.unlink()  # another receiver has it: our copy was never acknowledged
    return indexed


def recover(spool: Spool, store: Store) -> dict[str, int]:
    """Bring spool and database back in step after a crash or restart (one process, embedded)."""
    counts = {"partial_files_discarded": spool.discard_incomplete(), "files_indexed": index_orphans(spool, store)}
    counts |= store.recover_after_restart(spool.root)
    log.info("recovery: %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
    return counts


def recover_receiver(spool: Spool, store: Store, node: str) -> dict[str, int]:
    """A cluster receiver restarts: discard partial files, index its orphans for upload, close the
    associations it left open. Its peers' associations and the workers' studies are not its to
    touch (stalled jobs are taken over by the workers' periodic ``takeover`` job)."""
    counts = {"partial_files_discarded": spool.discard_incomplete(),
              "files_indexed": index_orphans(spool, store, pending_upload=node),
              "associations_interrupted": store.close_node_associations(node)}
    log.info("recovery of receiver %s: %s", node, ", ".join(f"{k}={v}" for k, v in counts.items()))
    return counts
