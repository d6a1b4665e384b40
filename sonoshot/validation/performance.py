"""performance.py
==============

Local performance on the labelled studies (``sonoshot performance``, the console's performance
page): per group of studies, AUROC with a stratified bootstrap 95 % interval, sensitivity,
specificity, PPV and NPV at the threshold each result was reported with (its verdict) with
Wilson intervals, and the threshold that reaches a target sensitivity with its specificity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from sonoshot.db.validation import LabelledResult
from sonoshot.validation import stats

GroupBy = Literal["scanner", "organ", "bundle"]
GROUPINGS: tuple[str, ...] = ("scanner", "organ", "bundle")


@dataclass(frozen=True)
class Performance:
    """The detector on one group of labelled studies."""

    group: str  # "all", or the scanner, organ or bundle (first 12 hex digits)
    studies: int
    abnormal: int
    normal: int
    auroc: float | None  # None without both labels
    auroc_ci: tuple[float, float] | None
    threshold: float | None  # of the latest result (the current operating point)
    at_threshold: stats.Confusion
    target_sensitivity: float
    target_threshold: float | None  # the highest threshold reaching the target (None: no abnormal)
    at_target: stats.Confusion | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _group_key(row: LabelledResult, by: GroupBy | None) -> str:
    if by is None:
        return "all"
    if by == "bundle":
        return row.bundle_sha256[:12]
    return getattr(row, by)


def assess(group: str, rows: Sequence[LabelledResult], target: float, resamples: int,
           seed: int = 0) -> Performance:
    """Performance of one group of labelled results.

    Raises
    ------
    ValueError
        If ``rows`` is empty.
    """
    if not rows:
        raise ValueError('Argument "rows" must not be empty.')
    labels = np.array([int(r.label == "abnormal") for r in rows])
    scores = np.array([r.score for r in rows])
    predicted = np.array([int(r.verdict == "abnormal") for r in rows])
    both = 0 < labels.sum() < len(labels)
    value = stats.auroc(labels, scores) if both else None
    interval = stats.bootstrap_auroc(labels, scores, resamples, seed) if both else None
    target_threshold = at_target = None
    if labels.any():
        target_threshold = stats.threshold_for_sensitivity(labels, scores, target)
        at_target = stats.confusion(labels, (scores >= target_threshold).astype(int))
    return Performance(group, len(rows), int(labels.sum()), int((labels == 0).sum()), value, interval,
                       rows[-1].threshold, stats.confusion(labels, predicted), target, target_threshold, at_target)


def performance_report(rows: Sequence[LabelledResult], by: GroupBy | None, target: float,
                       resamples: int) -> list[Performance]:
    """``all`` first, then one entry per group (sorted) when ``by`` is given; empty without rows."""
    if not rows:
        return []
    out = [assess("all", rows, target, resamples)]
    if by is not None:
        groups: dict[str, list[LabelledResult]] = {}
        for row in rows:
            groups.setdefault(_group_key(row, by), []).append(row)
        out += [assess(name, members, target, resamples) for name, members in sorted(groups.items())]
    return out
