"""delivery.py
===========

The outbox's stage: :class:`DeliverStage` sends one claimed delivery (one result to one
destination). Each destination has its own queue (in process: its own scheduled sweep; in
cluster mode: its own procrastinate queue), so a PACS that is down or slow never holds up
another. A result is its SR and, for a scored study, its key image: both go over one
association and the delivery succeeds only when both were stored. Failures back off
exponentially up to a cap; after ``max_attempts`` (or a permanent refusal) a delivery becomes
``dead-letter`` until ``sonoshot resend`` puts it back. Every SOP Instance UID is deterministic,
so a send repeated after a crash (after half of a result got through, or between the PACS's
acknowledgement and our commit) files no duplicate in the PACS. A destination in shadow mode
(``delivery.mode``) sends nothing: its due rows are held until ``sonoshot release``
(:mod:`sonoshot.db.outbox`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from io import BytesIO

from pydicom import dcmread

from sonoshot.config import Config, DeliveryConfig, Destination
from sonoshot.db.lifecycle import OutboxState
from sonoshot.db.outbox import hold_pending
from sonoshot.db.store import DeliveryRef, Store
from sonoshot.dicom_io.send import EchoOutcome, echo, send_datasets
from sonoshot.objects import Kind, ObjectNotFound, ObjectStore, ObjectStoreError

log = logging.getLogger(__name__)


class DestinationEcho:
    """Whether a destination answers: :meth:`probe` (a scheduled job, every ``interval_s``) sends
    it a C-ECHO; :meth:`check` (for ``/readyz``) passes while the latest one succeeded and is no
    older than three intervals.

    Raises
    ------
    ValueError
        If ``interval_s`` or ``timeout_s`` is not positive.
    """

    def __init__(self, destination: Destination, calling_ae_title: str, interval_s: float,
                 timeout_s: float = 10.0) -> None:
        if not interval_s > 0 or not timeout_s > 0:
            raise ValueError(f'Arguments "interval_s" and "timeout_s" must be > 0; got {interval_s!r}, {timeout_s!r}.')
        self.destination, self.calling_ae_title = destination, calling_ae_title
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self._lock = threading.Lock()
        self._latest: tuple[float, EchoOutcome] | None = None

    def probe(self) -> None:
        outcome = echo(self.destination, self.calling_ae_title, self.timeout_s)
        if not outcome.ok:
            log.warning("destination %s: %s", self.destination.name, outcome.detail)
        with self._lock:
            self._latest = (time.monotonic(), outcome)

    def check(self) -> tuple[bool, str]:
        with self._lock:
            latest = self._latest
        if latest is None:
            return False, "no C-ECHO answered yet"
        at, outcome = latest
        age = time.monotonic() - at
        if age > 3 * self.interval_s:
            return False, f"the latest C-ECHO was {age:.0f} s ago (http.echo_interval_s = {self.interval_s:g})"
        return outcome.ok, f"{outcome.detail} ({age:.0f} s ago)"


def backoff_s(attempts: int, delivery: DeliveryConfig) -> float:
    """Delay before the next try after ``attempts`` failed ones: doubling, capped."""
    return min(delivery.backoff_initial_s * 2 ** max(attempts - 1, 0), delivery.backoff_max_s)


class DeliverStage:
    """Sends claimed deliveries to the destinations ``config`` names (``config`` is replaced on
    reload: destinations, modes and retries follow it)."""

    name = "deliver"

    def __init__(self, config: Config, store: Store, objects: ObjectStore,
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.store = store
        self.objects = objects
        self.on_failure = on_failure or (lambda _destination: None)

    def run(self, claim: DeliveryRef) -> None:
        """Send one result (hold it in shadow mode); the outcome is recorded under the claim's
        lease (a stale claim records nothing)."""
        destination = next((d for d in self.config.delivery.destinations if d.name == claim.destination), None)
        if destination is not None and self.config.delivery.mode_of(destination) == "shadow":
            held = hold_pending(self.store, destination.name)
            if held:
                log.info("shadow mode: %d result(s) for %s held, not sent", held, destination.name)
            return
        outcome = self._attempt(claim, destination)
        if outcome is None:
            log.info("delivery %d: outcome dropped, the claim moved on (taken over after a stall)", claim.id)
        elif outcome is not OutboxState.DELIVERED:
            self.on_failure(claim.destination)

    def _attempt(self, item: DeliveryRef, destination: Destination | None) -> OutboxState | None:
        attempt = item.attempts + 1
        delivery = self.config.delivery
        if destination is None:
            return self.store.record_attempt(item, False, "no-destination",
                                             f"destination {item.destination!r} is not configured here", None)
        try:
            documents = [dcmread(BytesIO(self.objects.get(Kind.REPORTS, key))) for key in item.result.paths]
        except ObjectNotFound:
            return self.store.record_attempt(item, False, "no-file", "a report is missing from the reports store",
                                             None)
        except ObjectStoreError as exc:  # the store is down: an attempt like a PACS that is down
            retry = backoff_s(attempt, delivery) if attempt < delivery.max_attempts else None
            return self.store.record_attempt(item, False, "no-store", str(exc), retry)
        outcome = send_datasets(destination, documents, self.config.network.ae_title)
        status = ",".join("none" if s.status is None else f"0x{s.status:04X}" for s in outcome.statuses) or "none"
        if outcome.delivered:
            log.info("SR %s delivered to %s (attempt %d)", item.result.sr_sop_instance_uid, destination.name, attempt)
            return self.store.record_attempt(item, True, status, None, None)
        retry = backoff_s(attempt, delivery) \
            if outcome.transient and attempt < delivery.max_attempts else None
        log.warning("SR %s to %s failed (attempt %d, %s): %s", item.result.sr_sop_instance_uid, destination.name,
                    attempt, "retry in %.0f s" % retry if retry is not None else "dead-letter", outcome.detail)
        return self.store.record_attempt(item, False, status, outcome.detail, retry)
