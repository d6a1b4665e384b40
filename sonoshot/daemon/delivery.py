"""delivery.py
===========

The outbox's stage: :class:`DeliverStage` sends one claimed delivery (one SR to one
destination). Each destination has its own queue (in process: its own scheduled sweep; in
cluster mode: its own procrastinate queue), so a PACS that is down or slow never holds up
another. Failures back off exponentially up to a cap; after ``max_attempts`` (or a permanent
refusal) a delivery becomes ``dead-letter`` until ``sonoshot resend`` puts it back. The SR's SOP
Instance UID is deterministic, so a send repeated after a crash (even one between the PACS's
acknowledgement and our commit) files no duplicate in the PACS.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from io import BytesIO

from pydicom import dcmread

from sonoshot.config import DeliveryConfig, Destination
from sonoshot.db.lifecycle import OutboxState
from sonoshot.db.store import DeliveryRef, Store
from sonoshot.dicom_io.send import send_datasets
from sonoshot.objects import Kind, ObjectNotFound, ObjectStore, ObjectStoreError

log = logging.getLogger(__name__)


def backoff_s(attempts: int, delivery: DeliveryConfig) -> float:
    """Delay before the next try after ``attempts`` failed ones: doubling, capped."""
    return min(delivery.backoff_initial_s * 2 ** max(attempts - 1, 0), delivery.backoff_max_s)


class DeliverStage:
    """Sends claimed deliveries to the destinations configured by name."""

    name = "deliver"

    def __init__(self, destinations: Sequence[Destination], store: Store, objects: ObjectStore,
                 delivery: DeliveryConfig, calling_ae_title: str,
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.destinations = {d.name: d for d in destinations}
        self.store = store
        self.objects = objects
        self.delivery = delivery
        self.calling_ae_title = calling_ae_title
        self.on_failure = on_failure or (lambda _destination: None)

    def run(self, claim: DeliveryRef) -> None:
        """Send one SR; the outcome is recorded under the claim's lease (a stale claim records nothing)."""
        outcome = self._attempt(claim)
        if outcome is None:
            log.info("delivery %d: outcome dropped, the claim moved on (taken over after a stall)", claim.id)
        elif outcome is not OutboxState.DELIVERED:
            self.on_failure(claim.destination)

    def _attempt(self, item: DeliveryRef) -> OutboxState | None:
        attempt = item.attempts + 1
        destination = self.destinations.get(item.destination)
        if destination is None:
            return self.store.record_attempt(item, False, "no-destination",
                                             f"destination {item.destination!r} is not configured here", None)
        try:
            sr = dcmread(BytesIO(self.objects.get(Kind.REPORTS, item.result.sr_path)))
        except ObjectNotFound:
            return self.store.record_attempt(item, False, "no-file", "the SR is missing from the reports store", None)
        except ObjectStoreError as exc:  # the store is down: an attempt like a PACS that is down
            retry = backoff_s(attempt, self.delivery) if attempt < self.delivery.max_attempts else None
            return self.store.record_attempt(item, False, "no-store", str(exc), retry)
        outcome = send_datasets(destination, [sr], self.calling_ae_title)
        status = ",".join("none" if s.status is None else f"0x{s.status:04X}" for s in outcome.statuses) or "none"
        if outcome.delivered:
            log.info("SR %s delivered to %s (attempt %d)", item.result.sr_sop_instance_uid, destination.name, attempt)
            return self.store.record_attempt(item, True, status, None, None)
        retry = backoff_s(attempt, self.delivery) \
            if outcome.transient and attempt < self.delivery.max_attempts else None
        log.warning("SR %s to %s failed (attempt %d, %s): %s", item.result.sr_sop_instance_uid, destination.name,
                    attempt, "retry in %.0f s" % retry if retry is not None else "dead-letter", outcome.detail)
        return self.store.record_attempt(item, False, status, outcome.detail, retry)
