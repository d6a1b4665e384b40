"""probe.py
========

The lesion probe: where an abnormal example's lesion is, learnt from the labelled examples
without any mask.

The patch memory says which patches are *unlike* the normal examples; that includes shadows,
edges and artefacts as well as lesions. The probe adds what the abnormal examples teach: a
linear classifier on patch features (logistic regression, L2-regularised, classes balanced)
trained multiple-instance style, with the :data:`PROBE_TOP` patches of each abnormal example
(per augmentation view) that are farthest from every normal patch as positives and every patch
of the normal examples as negatives. Its logit is standardised by its values on the normal
examples' patches, so it adds to the standardised patch distance in the same units. It exists
only in the labelled mode (normal-only has nothing to learn a lesion from).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

PROBE_TOP = 3  # most distant patches per abnormal example and view taken as positives
PROBE_C = 0.1  # inverse L2 strength of the logistic regression (tuned on draws 100-109)


@dataclass(frozen=True)
class LesionProbe:
    """A linear patch classifier and the standardisation of its logit."""

    weight: np.ndarray  # (C,) float32
    bias: float
    scale: tuple[float, float]  # (mean, std) of the logit on the normal examples' patches

    @classmethod
    def fit(cls, patches: np.ndarray, labels: np.ndarray, distances: np.ndarray,
            seed: int = 0) -> LesionProbe:
        """Fit on support patch features.

        Parameters
        ----------
        patches : numpy.ndarray
            ``(N, V, P, C)`` L2-normalised patch features of the support examples under the
            scoring views.
        labels : numpy.ndarray
            ``(N,)`` 0 normal / 1 abnormal; both must occur.
        distances : numpy.ndarray
            ``(N, V, P)`` leave-one-out nearest-normal distances of the same patches.
        seed : int

        Raises
        ------
        ValueError
            If either class is missing or the shapes disagree.
        """
        labels = np.asarray(labels)
        if patches.shape[:3] != distances.shape or len(labels) != len(patches):
            raise ValueError(f"patches {patches.shape}, distances {distances.shape} and "
                             f"{len(labels)} labels do not match")
        if not ((labels == 0).any() and (labels == 1).any()):
            raise ValueError("the lesion probe needs normal and abnormal examples")
        c = patches.shape[-1]
        top = min(PROBE_TOP, patches.shape[2])
        farthest = np.argsort(distances[labels == 1], axis=-1)[..., -top:]  # (A, V, top)
        positives = np.take_along_axis(patches[labels == 1], farthest[..., None], axis=2)
        negatives = patches[labels == 0]
        x = np.concatenate([positives.reshape(-1, c), negatives.reshape(-1, c)]).astype(np.float32)
        y = np.r_[np.ones(positives[..., 0].size), np.zeros(negatives[..., 0].size)]
        model = LogisticRegression(C=PROBE_C, class_weight="balanced", max_iter=3000,
                                   random_state=seed).fit(x, y)
        weight = model.coef_[0].astype(np.float32)
        bias = float(model.intercept_[0])
        normal = negatives.reshape(-1, c).astype(np.float32) @ weight + bias
        return cls(weight, bias, (float(normal.mean()), float(max(normal.std(), 1e-6))))

    def logits(self, patches: np.ndarray) -> np.ndarray:
        """Standardised logit ``(N, V, P)`` of ``(N, V, P, C)`` patch features."""
        raw = patches.astype(np.float32) @ self.weight + self.bias
        return (raw - self.scale[0]) / self.scale[1]
