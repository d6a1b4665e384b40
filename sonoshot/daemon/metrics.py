"""metrics.py
==========

Every Prometheus metric sonoshot exports, defined in one place on a dedicated
:class:`~prometheus_client.CollectorRegistry` (never the process-wide default one).

Counters and histograms are updated by the stages through :class:`Metrics`' methods. Study
counts, queue depths and open associations are read from the database at scrape time, and disk
free from the spool's file system, so they are right after a restart too. Labels carry only
fixed vocabularies and configured destination names (outcome, state, queue, stage,
destination): never a UID, an AE title, a pseudonym or any value read from a dataset.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sonoshot.db import queries
from sonoshot.db.store import Store
from sonoshot.dicom_io.not_analysed import NotAnalysedReason

log = logging.getLogger(__name__)

#: ``outcome`` label values of ``sonoshot_instances_received_total``.
INSTANCE_OUTCOMES = ("stored", "duplicate", "refused")
#: ``reason`` label values of ``sonoshot_connections_refused_total`` (see docs/operations.md).
REFUSAL_REASONS = ("pending-per-address", "pending-total", "pending-evicted", "request-timeout", "tls-handshake", "pdu-too-large",
                   "pdu-unknown-type", "pdu-unexpected", "pdu-malformed", "pdu-timeout", "dimse-malformed",
                   "dimse-too-large", "disk-full")
#: ``stage`` label values of ``sonoshot_stage_duration_seconds``.
STAGES = ("deidentify", "detect", "regions", "report", "key-image", "deliver")
#: Histogram buckets in seconds: from a fast SR build to a slow PACS or a long cine study on CPU.
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def _check_label(name: str, value: str, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f'Argument "{name}" must be one of {", ".join(allowed)}; got {value!r}.')
    return value


class DatabaseCollector(Collector):
    """Study counts by state, queue depths, open associations and "not analysed" results by
    reason, queried at each scrape.

    When the database cannot be read, only ``sonoshot_database_up 0`` is exported (the
    failure is logged), so a scrape never fails because of it.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("sonoshot_database_up", "1 when the state database answered this scrape."),
            GaugeMetricFamily("sonoshot_studies", "Studies in each lifecycle state.", labels=["state"]),
            GaugeMetricFamily("sonoshot_queue_depth", "Work waiting: studies per queue state, outbox rows pending.",
                              labels=["queue"]),
            GaugeMetricFamily("sonoshot_open_associations", "DICOM associations accepted and not yet ended."),
            GaugeMetricFamily("sonoshot_not_analysed_results", '"Not analysed" reports recorded, by the study\'s '
                              "reason.", labels=["reason"]),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        up, studies, queues, associations, not_analysed = self._families()
        try:
            by_state = queries.studies_by_state(self.store)
            depths = queries.queue_depths(self.store)
            open_count = queries.open_associations(self.store)
            by_reason = queries.not_analysed_by_reason(self.store)
        except Exception as exc:  # any driver error: report the database as down, keep the scrape
            log.warning("metrics: database unavailable (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for state, count in by_state.items():
            studies.add_metric([state], count)
        for queue, count in depths.items():
            queues.add_metric([queue], count)
        associations.add_metric([], open_count)
        for reason in NotAnalysedReason:
            not_analysed.add_metric([reason.value], by_reason.get(reason.value, 0))
        yield from (up, studies, queues, associations, not_analysed)


class DiskCollector(Collector):
    """Free bytes on the file system that holds the spool, read at each scrape."""

    def __init__(self, spool_root: Path) -> None:
        self.spool_root = Path(spool_root)

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily("sonoshot_disk_free_bytes", "Free bytes on the spool's file system.")

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        try:
            family.add_metric([], shutil.disk_usage(self.spool_root).free)
        except OSError as exc:
            log.warning("metrics: cannot read free disk of %s (%s)", self.spool_root, exc.strerror)
            return
        yield family


class Metrics:
    """sonoshot's metrics, registered on ``registry``.

    Parameters
    ----------
    registry
        A dedicated registry; :func:`sonoshot.daemon.http.start_http` serves it at ``/metrics``.
    store
        Read at scrape time for study counts, queue depths and open associations.
    spool_root
        Its file system's free space is ``sonoshot_disk_free_bytes``.
    destinations
        Configured destination names; their failure counters start at zero.
    """

    def __init__(self, registry: CollectorRegistry, store: Store, spool_root: Path,
                 destinations: Iterable[str] = ()) -> None:
        self.registry = registry
        self.instances_received = Counter(
            "sonoshot_instances_received", "C-STORE requests answered, by outcome.", ["outcome"], registry=registry)
        self.stage_duration = Histogram(
            "sonoshot_stage_duration_seconds", "Time one study spent in a pipeline stage.", ["stage"],
            buckets=STAGE_BUCKETS, registry=registry)
        self.delivery_failures = Counter(
            "sonoshot_delivery_failures", "Failed delivery attempts, by destination.", ["destination"],
            registry=registry)
        self.connections_refused = Counter(
            "sonoshot_connections_refused", "DICOM connections closed by the connection limits, by reason.", ["reason"],
            registry=registry)
        self.pending_connections = Gauge(
            "sonoshot_pending_connections", "DICOM connections accepted that have not sent an A-ASSOCIATE-RQ yet.",
            registry=registry)
        self.destinations = tuple(destinations)
        for reason in REFUSAL_REASONS:
            self.connections_refused.labels(reason=reason)
        for outcome in INSTANCE_OUTCOMES:
            self.instances_received.labels(outcome=outcome)
        for stage in STAGES:
            self.stage_duration.labels(stage=stage)
        for destination in self.destinations:
            self.delivery_failures.labels(destination=destination)
        registry.register(DatabaseCollector(store))
        registry.register(DiskCollector(spool_root))

    def instance_received(self, outcome: str) -> None:
        """Count one C-STORE answered: ``stored``, ``duplicate``, or ``refused`` (any failure status).

        Raises
        ------
        ValueError
            If ``outcome`` is not in :data:`INSTANCE_OUTCOMES`.
        """
        self.instances_received.labels(outcome=_check_label("outcome", outcome, INSTANCE_OUTCOMES)).inc()

    def connection_refused(self, reason: str) -> None:
        """Count one connection closed by the connection limits, for one of :data:`REFUSAL_REASONS`.

        Raises
        ------
        ValueError
            If ``reason`` is not in :data:`REFUSAL_REASONS`.
        """
        self.connections_refused.labels(reason=_check_label("reason", reason, REFUSAL_REASONS)).inc()

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Record how long one study took in ``stage`` (one of :data:`STAGES`).

        Raises
        ------
        ValueError
            If ``stage`` is unknown or ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError(f'Argument "seconds" must be >= 0; got {seconds!r}.')
        self.stage_duration.labels(stage=_check_label("stage", stage, STAGES)).observe(seconds)

    def delivery_failed(self, destination: str) -> None:
        """Count one failed delivery attempt to a configured destination.

        Raises
        ------
        ValueError
            If ``destination`` is not one of the configured destination names.
        """
        self.delivery_failures.labels(destination=_check_label("destination", destination, self.destinations)).inc()
