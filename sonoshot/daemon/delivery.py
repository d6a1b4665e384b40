"""delivery.py
===========

The outbox: each destination has its own scheduled job that sends its due results, so a PACS
that is down or slow never holds up another. A result is its SR and, for a scored study, its
key image: both go over one association and the delivery succeeds only when both were stored.
Failures back off exponentially up to a cap; after ``max_attempts`` (or a permanent refusal) a
delivery becomes ``dead-letter`` until ``sonoshot resend`` puts it back. Every SOP Instance UID
is deterministic, so a send repeated after a crash (or after half of a result got through)
files no duplicate in the PACS. A destination in shadow mode (``delivery.mode``) sends nothing:
its due rows are held until ``sonoshot release`` (:mod:`sonoshot.db.outbox`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pydicom import dcmread

from sonoshot.config import DeliveryConfig, Destination
from sonoshot.db.lifecycle import OutboxState
from sonoshot.db.outbox import hold_pending
from sonoshot.db.store import DeliveryRef, Store
from sonoshot.dicom_io.send import EchoOutcome, echo, send_datasets
from sonoshot.dicom_io.spool import Spool

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


def deliver_due(destination: Destination, store: Store, spool: Spool, delivery: DeliveryConfig,
                calling_ae_title: str, on_failure: Callable[[str], None] | None = None) -> int:
    """Send every due result (SR and key image) for ``destination``, or hold them in shadow mode;
    returns how many were delivered."""
    if delivery.mode_of(destination) == "shadow":
        held = hold_pending(store, destination.name)
        if held:
            log.info("shadow mode: %d result(s) for %s held, not sent", held, destination.name)
        return 0
    delivered = 0
    for item in store.due_deliveries(destination.name):
        if _attempt(item, destination, store, spool, delivery, calling_ae_title) is OutboxState.DELIVERED:
            delivered += 1
        elif on_failure is not None:
            on_failure(destination.name)
    return delivered


def _attempt(item: DeliveryRef, destination: Destination, store: Store, spool: Spool, delivery: DeliveryConfig,
             calling_ae_title: str) -> OutboxState:
    attempt = item.attempts + 1
    paths = [spool.path(p) for p in item.result.paths]
    if not all(p.is_file() for p in paths):
        return store.record_attempt(item, False, "no-file", "a report file is missing from the spool", None)
    outcome = send_datasets(destination, [dcmread(p) for p in paths], calling_ae_title)
    status = ",".join("none" if s.status is None else f"0x{s.status:04X}" for s in outcome.statuses) or "none"
    if outcome.delivered:
        log.info("SR %s delivered to %s (attempt %d)", item.result.sr_sop_instance_uid, destination.name, attempt)
        return store.record_attempt(item, True, status, None, None)
    retry = backoff_s(attempt, delivery) if outcome.transient and attempt < delivery.max_attempts else None
    log.warning("SR %s to %s failed (attempt %d, %s): %s", item.result.sr_sop_instance_uid, destination.name,
                attempt, "retry in %.0f s" % retry if retry is not None else "dead-letter", outcome.detail)
    return store.record_attempt(item, False, status, outcome.detail, retry)
