"""drift.py
========

Per scanner and per week: are the detector's inputs and scores still what it was validated on?

For each scanner (a distinct Manufacturer / Model / Software Versions / probe) and window of
instances, :func:`assess` compares

- the **scores** with the bundle's validation scores (the support's leave-one-out scores),
  reweighted to the abnormal share that explains the window best (:func:`~.stats.fit_prevalence`,
  so a change of prevalence alone is no drift): KS test and PSI;
- the **brightness** and **size** (square root of rows × columns) of the scored image regions
  with those of the support frames, reweighted the same way: KS test and the relative change
  of the median;
- the **share quarantined** (and its reasons).

A window *drifts* when a distribution changed both significantly and materially (KS p below
``drift_alpha`` and PSI at least ``psi_alert`` for scores, or a median change of at least
``image_shift_alert`` for brightness or size), or when at least ``quarantine_alert`` of its
instances were quarantined. Windows with fewer than ``drift_min_instances`` scored instances
get no verdict on their distributions.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from sonoshot.config import ValidationConfig
from sonoshot.db.validation import ObservationRow, ScannerRef
from sonoshot.validation import stats


@dataclass(frozen=True)
class Reference:
    """The bundle's validation sample: support scores, labels and frame statistics."""

    scores: np.ndarray
    labels: np.ndarray
    brightness: np.ndarray
    size: np.ndarray

    @classmethod
    def from_validation(cls, validation: dict) -> Reference | None:
        """From a bundle's ``validation`` entry; None when it lacks scores or image statistics."""
        try:
            scores, labels = np.asarray(validation["scores"], float), np.asarray(validation["labels"], int)
            rows, columns = np.asarray(validation["rows"], float), np.asarray(validation["columns"], float)
            brightness = np.asarray(validation["brightness"], float)
        except (KeyError, TypeError, ValueError):
            return None
        if not len(scores) or not len(scores) == len(labels) == len(rows) == len(columns) == len(brightness):
            return None
        return cls(scores, labels, brightness, np.sqrt(rows * columns))


def load_reference(bundle: str | Path) -> Reference | None:
    """The validation sample of the bundle folder ``bundle`` (None: no bundle, or one fitted
    before bundles carried it)."""
    if not bundle:
        return None
    try:
        meta = json.loads((Path(bundle) / "bundle.json").read_text())
    except (OSError, ValueError):
        return None
    return Reference.from_validation(meta.get("validation") or {})


@dataclass(frozen=True)
class Comparison:
    """One distribution of a window against the reference."""

    median: float
    ks_p: float
    shift: float  # relative change of the median (brightness, size) or PSI (scores)
    drifted: bool


@dataclass(frozen=True)
class WindowDrift:
    """One scanner over one window of instances."""

    scanner_id: int
    start: datetime
    end: datetime
    instances: int
    scored: int
    quarantined: int
    quarantine_reasons: dict[str, int]
    verdict: str  # drift, ok, too-few, no-reference
    reasons: tuple[str, ...] = ()  # what drifted: scores, brightness, size, quarantine
    prevalence: float | None = None  # the abnormal share the scores imply
    scores: Comparison | None = None
    brightness: Comparison | None = None
    size: Comparison | None = None

    @property
    def quarantine_share(self) -> float:
        return self.quarantined / self.instances if self.instances else 0.0

    @property
    def flagged(self) -> bool:
        return self.verdict == "drift"


def _reason_key(reason: str | None) -> str:
    return (reason or "unknown").split(":")[0].strip()[:60] or "unknown"


def assess(rows: Sequence[ObservationRow], scanner_id: int, start: datetime, end: datetime,
           reference: Reference | None, limits: ValidationConfig) -> WindowDrift:
    """The drift verdict of one scanner's observations ``rows`` in ``[start, end)``."""
    scored = [r for r in rows if r.score is not None]
    quarantined = [r for r in rows if r.quarantined]
    base = dict(scanner_id=scanner_id, start=start, end=end, instances=len(rows), scored=len(scored),
                quarantined=len(quarantined), quarantine_reasons=dict(Counter(_reason_key(r.reason)
                                                                              for r in quarantined)))
    reasons = []
    if len(rows) >= limits.drift_min_instances and len(quarantined) / len(rows) >= limits.quarantine_alert:
        reasons.append("quarantine")
    if len(scored) < limits.drift_min_instances or reference is None:
        verdict = "drift" if reasons else ("too-few" if len(scored) < limits.drift_min_instances else "no-reference")
        return WindowDrift(**base, verdict=verdict, reasons=tuple(reasons))
    values = np.array([r.score for r in scored])
    prevalence = stats.fit_prevalence(values, reference.scores, reference.labels)
    weights = stats.reference_weights(reference.labels, prevalence)
    d_scores, p_scores = stats.ks_test(values, reference.scores, weights)
    psi = stats.psi(values, reference.scores, weights)
    score_cmp = Comparison(float(np.median(values)), p_scores, psi,
                           p_scores < limits.drift_alpha and psi >= limits.psi_alert)
    image = {}
    for name, sample, ref in (
            ("brightness", [r.brightness for r in scored], reference.brightness),
            ("size", [np.sqrt(r.rows * r.columns) for r in scored], reference.size)):
        sample = np.array(sample, float)
        _, p = stats.ks_test(sample, ref, weights)
        shift = stats.relative_shift(sample, ref, weights)
        image[name] = Comparison(float(np.median(sample)), p, shift,
                                 p < limits.drift_alpha and abs(shift) >= limits.image_shift_alert)
    reasons += [name for name, cmp in (("scores", score_cmp), ("brightness", image["brightness"]),
                                       ("size", image["size"])) if cmp.drifted]
    return WindowDrift(**base, verdict="drift" if reasons else "ok", reasons=tuple(reasons), prevalence=prevalence,
                       scores=score_cmp, brightness=image["brightness"], size=image["size"])


def week_start(moment: datetime) -> datetime:
    """Monday 00:00 UTC of the ISO week of ``moment``."""
    day = moment.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


@dataclass(frozen=True)
class ScannerDrift:
    """A scanner's current window and its weekly history, oldest week first."""

    scanner: ScannerRef
    current: WindowDrift
    weeks: list[WindowDrift] = field(default_factory=list)


def drift_report(rows: Iterable[ObservationRow], scanners: Sequence[ScannerRef], reference: Reference | None,
                 limits: ValidationConfig, now: datetime, since: datetime | None = None) -> list[ScannerDrift]:
    """Per scanner: the current window (``since``, default ``drift_days`` before ``now``, until
    ``now``) and every ISO week with observations. ``rows`` may span more than the window."""
    since = since or now - timedelta(days=limits.drift_days)
    by_scanner: dict[int, list[ObservationRow]] = {}
    for row in rows:
        by_scanner.setdefault(row.scanner_id, []).append(row)
    out = []
    for scanner in scanners:
        mine = by_scanner.get(scanner.id, [])
        current = assess([r for r in mine if since <= r.at < now], scanner.id, since, now, reference, limits)
        weeks: dict[datetime, list[ObservationRow]] = {}
        for row in mine:
            weeks.setdefault(week_start(row.at), []).append(row)
        history = [assess(week_rows, scanner.id, start, start + timedelta(days=7), reference, limits)
                   for start, week_rows in sorted(weeks.items())]
        out.append(ScannerDrift(scanner, current, history))
    return out
