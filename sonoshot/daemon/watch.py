"""watch.py
========

The daemon's drift watch: a scheduled job (``validation.drift_interval_s``) computes each
scanner's drift over the last ``validation.drift_days`` (:mod:`sonoshot.validation.drift`),
records an audit event when a scanner's flag changes (``drift/flagged``, ``drift/cleared``,
with the reasons), logs a warning for a flagged one, and keeps the report for the Prometheus
gauges below. Labels are the scanner's number in the database, never a value from a dataset.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sonoshot.config import Config
from sonoshot.db.models import utcnow
from sonoshot.db.store import Store
from sonoshot.db.validation import DRIFT_EVENT_KIND, drift_flags, observations, scanners
from sonoshot.validation.drift import ScannerDrift, drift_report, load_reference

log = logging.getLogger(__name__)


class DriftWatch:
    """Recomputes drift on :meth:`run`; :attr:`report` is the latest result (empty before the first run)."""

    def __init__(self, store: Store, config: Callable[[], Config]) -> None:
        self.store = store
        self.config = config
        self.report: list[ScannerDrift] = []
        self.has_reference = False
        self._flags: dict[int, bool] | None = None
        self._lock = threading.Lock()

    def run(self) -> list[ScannerDrift]:
        """Compute the drift report, record flag changes; returns the report."""
        config = self.config()
        now = utcnow()
        since = now - timedelta(days=config.validation.drift_days)
        reference = load_reference(config.detector.bundle)
        report = drift_report(observations(self.store, since), scanners(self.store), reference, config.validation,
                              now, since)
        with self._lock:
            if self._flags is None:
                self._flags = drift_flags(self.store)
            for entry in report:
                flagged, before = entry.current.flagged, self._flags.get(entry.scanner.id, False)
                if flagged and not before:
                    log.warning("scanner %d (%s) drifts: %s", entry.scanner.id, entry.scanner.device.describe(),
                                ", ".join(entry.current.reasons))
                if flagged != before:
                    self.store.record_event(DRIFT_EVENT_KIND, "flagged" if flagged else "cleared",
                                            detail={"scanner": entry.scanner.id, "reasons": list(entry.current.reasons),
                                                    "instances": entry.current.instances})
                    self._flags[entry.scanner.id] = flagged
            self.report, self.has_reference = report, reference is not None
        return report


class DriftCollector(Collector):
    """Per-scanner drift gauges from the watch's latest report."""

    def __init__(self, watch: DriftWatch) -> None:
        self.watch = watch

    def _families(self) -> dict[str, GaugeMetricFamily]:
        def gauge(name: str, text: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=["scanner"])

        return {
            "drift": gauge("sonoshot_scanner_drift", "1 when the scanner drifts (alert-worthy), else 0."),
            "instances": gauge("sonoshot_scanner_instances", "Instances of the scanner in the drift window."),
            "quarantine": gauge("sonoshot_scanner_quarantine_share", "Share of the scanner's instances quarantined."),
            "psi": gauge("sonoshot_scanner_score_psi", "Score PSI against the bundle's validation scores."),
            "ks": gauge("sonoshot_scanner_score_ks_pvalue", "KS p-value of the scores against the validation scores."),
            "brightness": gauge("sonoshot_scanner_brightness_shift", "Relative change of the median brightness."),
            "size": gauge("sonoshot_scanner_size_shift", "Relative change of the median image size."),
        }

    def describe(self) -> Iterator[Metric]:
        yield from self._families().values()
        yield GaugeMetricFamily("sonoshot_drift_reference", "1 when the detector bundle carries a validation sample.")

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        for entry in self.watch.report:
            label, w = [str(entry.scanner.id)], entry.current
            families["drift"].add_metric(label, int(w.flagged))
            families["instances"].add_metric(label, w.instances)
            families["quarantine"].add_metric(label, w.quarantine_share)
            if w.scores is not None:
                families["psi"].add_metric(label, w.scores.shift)
                families["ks"].add_metric(label, w.scores.ks_p)
            if w.brightness is not None and w.size is not None:
                families["brightness"].add_metric(label, w.brightness.shift)
                families["size"].add_metric(label, w.size.shift)
        yield from families.values()
        reference = GaugeMetricFamily("sonoshot_drift_reference", "1 when the detector bundle carries a validation sample.")
        reference.add_metric([], int(self.watch.has_reference))
        yield reference
