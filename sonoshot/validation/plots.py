"""plots.py
========

The PNGs of the performance and drift pages and of ``sonoshot performance --plots``: the ROC
curve with the current and the target operating points, the score histograms by label, and the
scores of each scanner against the bundle's validation scores. Each returns PNG bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from sonoshot.db.validation import LabelledResult, ObservationRow, ScannerRef
from sonoshot.validation.drift import Reference
from sonoshot.validation.performance import Performance


def _figure(width: float = 5.0, height: float = 4.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(width, height))


def _png(plt, fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _empty(plt, fig, ax, message: str) -> bytes:
    ax.text(0.5, 0.5, message, ha="center", va="center")
    ax.set_axis_off()
    return _png(plt, fig)


def roc_png(rows: Sequence[LabelledResult], performance: Performance | None) -> bytes:
    """ROC curve of the labelled studies, with the current and target operating points."""
    from sklearn.metrics import roc_curve

    plt, fig, ax = _figure(5, 5)
    labels = np.array([int(r.label == "abnormal") for r in rows])
    if performance is None or performance.auroc is None:
        return _empty(plt, fig, ax, "needs normal and abnormal labels")
    fpr, tpr, _ = roc_curve(labels, [r.score for r in rows])
    low, high = performance.auroc_ci or (np.nan, np.nan)
    ax.plot(fpr, tpr, lw=2, label=f"AUROC {performance.auroc:.3f} (95 % CI {low:.3f}-{high:.3f})")
    for name, confusion, marker in (("current threshold", performance.at_threshold, "o"),
                                    ("target sensitivity", performance.at_target, "s")):
        if confusion is not None and confusion.sensitivity.value is not None and confusion.specificity.value is not None:
            ax.plot(1 - confusion.specificity.value, confusion.sensitivity.value, marker, ms=8, label=name)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"{performance.studies} labelled studies")
    ax.legend(loc="lower right", fontsize=8)
    return _png(plt, fig)


def histogram_png(rows: Sequence[LabelledResult], threshold: float | None) -> bytes:
    """Score histograms of the normal- and abnormal-labelled studies, and the threshold."""
    plt, fig, ax = _figure()
    if not rows:
        return _empty(plt, fig, ax, "no labelled studies")
    bins = np.linspace(0, 1, 21)
    for label, colour in (("normal", "tab:blue"), ("abnormal", "tab:red")):
        values = [r.score for r in rows if r.label == label]
        ax.hist(values, bins=bins, alpha=0.6, color=colour, label=f"{label} ({len(values)})")
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="study score", ylabel="studies")
    ax.legend(fontsize=8)
    return _png(plt, fig)


def drift_png(rows: Sequence[ObservationRow], scanners: Sequence[ScannerRef], reference: Reference | None) -> bytes:
    """Per scanner, the cumulative distribution of its instance scores beside the bundle's
    validation scores."""
    plt, fig, ax = _figure(6, 4)
    if not rows:
        return _empty(plt, fig, ax, "no scored instances")
    if reference is not None:
        ax.step(np.sort(reference.scores), np.arange(1, len(reference.scores) + 1) / len(reference.scores),
                where="post", color="black", lw=2, label="bundle validation scores")
    for scanner in scanners:
        values = np.sort([r.score for r in rows if r.scanner_id == scanner.id and r.score is not None])
        if len(values):
            ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post",
                    label=f"scanner {scanner.id} ({len(values)})")
    ax.set(xlabel="instance score", ylabel="cumulative share", xlim=(0, 1))
    ax.legend(fontsize=8)
    return _png(plt, fig)
