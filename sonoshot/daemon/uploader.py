"""uploader.py
===========

A cluster receiver's background upload. The C-STORE handler acknowledges an instance once it is
durable in the receiver's local spool and its row is committed with ``pending_upload`` naming
this node (as in the embedded mode); the :class:`Uploader` then copies it to the object store
under its deterministic key, clears ``pending_upload`` and deletes the local copy. The study
cannot complete while an upload is pending, so no worker reads an object that is not there.

While the object store is down the uploader backs off (doubling up to
``objects.upload_retry_max_s``) and the local spool keeps the instances: the receiver keeps
acknowledging until its disk watermark (``storage.min_free_mb``) refuses with 0xA700. A crash
between upload and bookkeeping repeats an upload of the same bytes to the same key.
"""

from __future__ import annotations

import logging
import threading

from sonoshot.db.store import Store
from sonoshot.dicom_io.spool import Spool
from sonoshot.objects import Kind, ObjectStore, ObjectStoreError
from sonoshot.objects.folder import prune_empty_parents

log = logging.getLogger(__name__)

IDLE_S = 1.0  # poll for pending uploads this often when nothing wakes the uploader


class Uploader:
    """Moves ``node``'s pending instances from its local spool to the object store."""

    def __init__(self, store: Store, spool: Spool, objects: ObjectStore, node: str, retry_max_s: float,
                 batch: int = 100) -> None:
        self.store = store
        self.spool = spool
        self.objects = objects
        self.node = node
        self.retry_max_s = retry_max_s
        self.batch = batch
        self.wakeup = threading.Event()

    def stored(self, _relative: str) -> None:
        """The receiver's hook after each new instance: upload it at once."""
        self.wakeup.set()

    def upload_pending(self) -> int:
        """Upload one batch of pending instances; returns how many were uploaded.

        Raises
        ------
        sonoshot.objects.ObjectStoreError
            When the object store refuses or cannot be reached (nothing is lost: the rows stay
            pending and the local files stay).
        """
        uploaded = 0
        for instance in self.store.pending_uploads(self.node, self.batch):
            local = self.spool.path(instance.path)
            if not local.is_file():
                log.error("instance %s is pending upload from %s but not in its spool; flagged missing",
                          instance.sop_instance_uid, self.node)
                self.store.mark_uploaded(instance.sop_instance_uid, self.node, lost=True)
                continue
            self.objects.put_file(Kind.ORIGINALS, instance.path, local)
            self.store.mark_uploaded(instance.sop_instance_uid, self.node)
            self._drop(instance.path)
            uploaded += 1
        return uploaded

    def drop_uploaded_leftovers(self) -> int:
        """At start: delete local files whose instance is no longer pending here (a crash came
        between the upload's bookkeeping and the delete); returns how many."""
        dropped = 0
        for relative in self.store.known_paths(self.spool.stored_files()):
            if self.store.pending_on(relative) != self.node:
                self._drop(relative)
                dropped += 1
        return dropped

    def _drop(self, relative: str) -> None:
        path = self.spool.path(relative)
        path.unlink(missing_ok=True)
        prune_empty_parents(path.parent, self.spool.root)

    def run(self, stop: threading.Event) -> None:
        """Upload until ``stop`` is set; back off while the object store is down."""
        delay = 0.0
        while not stop.is_set():
            try:
                busy = self.upload_pending() > 0
                if delay:
                    log.info("object store reachable again: uploads resumed")
                delay = 0.0
            except ObjectStoreError as exc:
                if not delay:  # once per outage; the retries are quiet until it ends
                    log.warning("upload from %s failed (%s); the local spool keeps the instances until the "
                                "object store is back", self.node, exc)
                delay = min(max(delay * 2, 0.5), self.retry_max_s)
                busy = False
            except Exception:  # the database is down: the rows say what is pending, try again
                log.exception("uploader error")
                delay = min(max(delay * 2, 0.5), self.retry_max_s)
                busy = False
            if not busy:
                self.wakeup.wait(delay or IDLE_S)
                self.wakeup.clear()
