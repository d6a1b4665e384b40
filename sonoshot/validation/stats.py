"""stats.py
========

The statistics behind ``sonoshot performance`` and the drift check, as pure functions on
arrays: AUROC with a stratified bootstrap interval, the confusion-matrix rates with Wilson
intervals, the threshold that reaches a target sensitivity, and the distribution comparisons
(KS test, population stability index) against a weighted reference sample.

A detector's validation scores come from a support set with its own prevalence (often half
abnormal), a site's from its own: comparing the two directly would call every change of
prevalence a drift. :func:`fit_prevalence` therefore reweights the reference to the abnormal
share that explains the site's scores best, and the tests measure what no prevalence explains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import kstwobign, rankdata

Z95 = 1.959963984540054


def _binary(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = np.asarray(labels, dtype=int), np.asarray(scores, dtype=float)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError('Arguments "labels" and "scores" must be 1-D arrays of the same length.')
    if not np.isin(labels, (0, 1)).all():
        raise ValueError('Argument "labels" must hold 0 (normal) and 1 (abnormal) only.')
    return labels, scores


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half), abnormal = 1 = positive.

    Raises
    ------
    ValueError
        If the arrays differ in shape, or one class is missing.
    """
    labels, scores = _binary(labels, scores)
    positives, negatives = int(labels.sum()), int((labels == 0).sum())
    if not positives or not negatives:
        raise ValueError("AUROC needs at least one normal and one abnormal example")
    ranks = rankdata(scores)
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def bootstrap_auroc(labels: np.ndarray, scores: np.ndarray, resamples: int = 2000, seed: int = 0,
                    level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the AUROC over ``resamples`` stratified bootstrap resamples (each
    class resampled with replacement within itself, so every resample has both classes).

    Raises
    ------
    ValueError
        As :func:`auroc`, or if ``resamples`` < 1.
    """
    labels, scores = _binary(labels, scores)
    auroc(labels, scores)  # validates
    if resamples < 1:
        raise ValueError(f'Argument "resamples" must be >= 1; got {resamples!r}.')
    rng = np.random.default_rng(seed)
    pos, neg = scores[labels == 1], scores[labels == 0]
    values = np.empty(resamples)
    both = np.concatenate([np.ones(len(pos), int), np.zeros(len(neg), int)])
    for i in range(resamples):
        sample = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        values[i] = auroc(both, sample)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def wilson(successes: int, total: int) -> tuple[float, float] | None:
    """Wilson score 95 % interval of a proportion; None when ``total`` is 0."""
    if total <= 0:
        return None
    p = successes / total
    denominator = 1 + Z95 ** 2 / total
    centre = (p + Z95 ** 2 / (2 * total)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / total + Z95 ** 2 / (4 * total ** 2)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """A proportion with its counts and Wilson 95 % interval (value None when undefined)."""

    value: float | None
    successes: int
    total: int
    interval: tuple[float, float] | None


def _rate(successes: int, total: int) -> Rate:
    return Rate(successes / total if total else None, successes, total, wilson(successes, total))


@dataclass(frozen=True)
class Confusion:
    """Sensitivity, specificity, PPV and NPV of binary predictions (abnormal = positive)."""

    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: Rate
    specificity: Rate
    ppv: Rate
    npv: Rate


def confusion(labels: np.ndarray, predicted: np.ndarray) -> Confusion:
    """Rates of ``predicted`` (1 abnormal) against ``labels``.

    Raises
    ------
    ValueError
        If the arrays differ in shape or hold values other than 0 and 1.
    """
    labels, predicted = _binary(labels, predicted)
    if not np.isin(predicted, (0, 1)).all():
        raise ValueError('Argument "predicted" must hold 0 and 1 only.')
    predicted = predicted.astype(int)
    tp = int(((labels == 1) & (predicted == 1)).sum())
    fp = int(((labels == 0) & (predicted == 1)).sum())
    tn = int(((labels == 0) & (predicted == 0)).sum())
    fn = int(((labels == 1) & (predicted == 0)).sum())
    return Confusion(tp, fp, tn, fn, _rate(tp, tp + fn), _rate(tn, tn + fp), _rate(tp, tp + fp), _rate(tn, tn + fn))


def threshold_for_sensitivity(labels: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The highest threshold ``t`` at which ``score >= t`` flags at least ``target`` of the
    abnormal examples (the most specific operating point that meets the target).

    Raises
    ------
    ValueError
        If there is no abnormal example, or ``target`` is not in (0, 1].
    """
    labels, scores = _binary(labels, scores)
    if not 0 < target <= 1:
        raise ValueError(f'Argument "target" must be in (0, 1]; got {target!r}.')
    positives = np.sort(scores[labels == 1])[::-1]
    if not len(positives):
        raise ValueError("a target sensitivity needs at least one abnormal example")
    return float(positives[max(math.ceil(target * len(positives) - 1e-9), 1) - 1])


# -- distribution comparison ----------------------------------------------------------------------

def reference_weights(labels: np.ndarray, prevalence: float) -> np.ndarray:
    """Weights of reference values so that abnormal ones (label 1) carry ``prevalence`` of the
    mass and normal ones the rest; a missing class gives its mass to the other."""
    labels = np.asarray(labels, dtype=int)
    n_abnormal, n_normal = int((labels == 1).sum()), int((labels == 0).sum())
    if not n_abnormal or not n_normal:
        return np.full(len(labels), 1.0 / len(labels))
    return np.where(labels == 1, prevalence / n_abnormal, (1 - prevalence) / n_normal)


def _ecdf(values: np.ndarray, weights: np.ndarray, at: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    cumulative = np.concatenate([[0.0], np.cumsum(weights[order])])
    return cumulative[np.searchsorted(values[order], at, side="right")]


def ks_statistic(sample: np.ndarray, reference: np.ndarray, weights: np.ndarray) -> float:
    """Largest distance between the sample's empirical CDF and the weighted reference CDF."""
    sample = np.asarray(sample, dtype=float)
    at = np.union1d(sample, reference)
    return float(np.max(np.abs(_ecdf(sample, np.full(len(sample), 1 / len(sample)), at)
                                - _ecdf(np.asarray(reference, float), weights, at))))


def effective_size(weights: np.ndarray) -> float:
    """Kish's effective sample size of a weighted reference: 1 / sum of squared (normalised) weights."""
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    return float(1.0 / np.sum(w ** 2))


def _samples(sample: np.ndarray, reference: np.ndarray, weights: np.ndarray | None, what: str
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float arrays, and the reference weights normalised (uniform when None)."""
    sample, reference = np.asarray(sample, float), np.asarray(reference, float)
    if not len(sample) or not len(reference):
        raise ValueError(f"{what} needs a non-empty sample and reference")
    weights = np.full(len(reference), 1.0) if weights is None else np.asarray(weights, float)
    return sample, reference, weights / weights.sum()


def ks_test(sample: np.ndarray, reference: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test of ``sample`` against a (weighted) reference:
    ``(D, p)`` with the asymptotic p-value (Stephens' small-sample correction) at the
    reference's effective size.

    Raises
    ------
    ValueError
        If either sample is empty.
    """
    sample, reference, weights = _samples(sample, reference, weights, "a KS test")
    d = ks_statistic(sample, reference, weights)
    n, m = len(sample), effective_size(weights)
    en = math.sqrt(n * m / (n + m))
    return d, float(min(1.0, kstwobign.sf((en + 0.12 + 0.11 / en) * d)))


def fit_prevalence(sample: np.ndarray, reference: np.ndarray, labels: np.ndarray, steps: int = 101) -> float:
    """The abnormal share (0…1, on a grid of ``steps``) whose reweighted reference is closest to
    ``sample`` in KS distance; 0 or 1 when the reference has one class only."""
    labels = np.asarray(labels, dtype=int)
    if not (labels == 1).any():
        return 0.0
    if not (labels == 0).any():
        return 1.0
    grid = np.linspace(0, 1, steps)
    distances = [ks_statistic(sample, reference, reference_weights(labels, p)) for p in grid]
    return float(grid[int(np.argmin(distances))])


def weighted_quantiles(values: np.ndarray, weights: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Quantiles of a weighted sample (the smallest value whose cumulative weight reaches q)."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(np.asarray(weights, float)[order]) / np.sum(weights)
    index = np.minimum(np.searchsorted(cumulative, np.asarray(qs) - 1e-12, side="left"), len(values) - 1)
    return np.asarray(values, float)[order][index]


def psi(sample: np.ndarray, reference: np.ndarray, weights: np.ndarray | None = None,
        bins: int | None = None) -> float:
    """Population stability index of ``sample`` against a (weighted) reference, over bins at the
    reference's quantiles: 10 bins, fewer for a small reference (one per 4 effective values, at
    least 2), so the index is not dominated by the reference's own sampling noise. Empty bins
    count as 0.0001.

    Raises
    ------
    ValueError
        If either sample is empty.
    """
    sample, reference, weights = _samples(sample, reference, weights, "a PSI")
    if bins is None:
        bins = int(np.clip(effective_size(weights) // 4, 2, 10))
    edges = np.unique(weighted_quantiles(reference, weights, np.arange(1, bins) / bins))
    expected = np.bincount(np.searchsorted(edges, reference, side="right"), weights=weights,
                           minlength=len(edges) + 1)
    actual = np.bincount(np.searchsorted(edges, sample, side="right"), minlength=len(edges) + 1) / len(sample)
    expected, actual = np.maximum(expected, 1e-4), np.maximum(actual, 1e-4)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def relative_shift(sample: np.ndarray, reference: np.ndarray, weights: np.ndarray | None = None) -> float:
    """(median of sample − weighted median of reference) / |weighted median of reference|."""
    reference = np.asarray(reference, float)
    weights = np.full(len(reference), 1 / len(reference)) if weights is None else np.asarray(weights, float)
    centre = float(weighted_quantiles(reference, weights, np.array([0.5]))[0])
    return float((np.median(sample) - centre) / max(abs(centre), 1e-9))
