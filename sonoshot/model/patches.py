"""patches.py
==========

The patch memory: local evidence that complements the global prototypes.

A lesion covers a small part of an ultrasound image; pooled into one embedding it is diluted by
the surrounding normal tissue. The patch memory keeps every local feature vector (a cell of the
backbone's last feature grid, or a ViT patch token) of the normal support images under all
augmentation views. A query patch that is far from every normal patch is tissue the site's
normal examples never showed; an image's anomaly is the mean distance of its
:data:`TOP_PATCHES` most distant patches, averaged over the test-time views (after PatchCore,
Roth et al., CVPR 2022, without its neighbourhood pooling, which measured worse here).

Memory is bounded: beyond :data:`BANK_MAX` patches a greedy k-centre coreset (on a random
projection) keeps the patches that cover the rest best (about 70 s with a progress bar for
80,000 patches, e.g. 50 normal cine instances at 4 frames, on 2 CPU cores).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from tqdm import tqdm

TOP_PATCHES = 3  # most distant patches averaged per view (tuned on draws 100-109)
BANK_MAX = 16384  # patches kept in a bundle's memory (about 10 MiB at 320 channels, float16)
_CHUNK = 4096  # query patches per similarity block


@dataclass(frozen=True)
class PatchBank:
    """Normal patch features ``(M, C)`` and, while fitting, the support example each came from
    (a loaded bundle has no owners: leave-one-out is a fitting-time operation)."""

    patches: np.ndarray  # (M, C), L2-normalised
    owner: np.ndarray | None = None  # (M,) index of the normal example in the support set

    @classmethod
    def build(cls, patches: np.ndarray, limit: int = BANK_MAX, seed: int = 0) -> PatchBank:
        """The bank of ``(N, V, P, C)`` normal patch features, a coreset beyond ``limit``."""
        n, v, p, c = patches.shape
        flat = patches.reshape(n * v * p, c)
        owner = np.repeat(np.arange(n), v * p)
        if len(flat) > limit:
            keep = greedy_coreset(torch.as_tensor(flat, dtype=torch.float32), limit, seed)
            flat, owner = flat[keep], owner[keep]
        return cls(np.ascontiguousarray(flat, dtype=np.float16), owner)

    @cached_property
    def _bank(self) -> torch.Tensor:
        return torch.as_tensor(self.patches).float()

    def nearest_distance(self, queries: torch.Tensor, exclude: int | None = None) -> torch.Tensor:
        """Cosine distance of each ``(Q, C)`` query patch to its nearest bank patch, skipping
        the patches of support example ``exclude``."""
        bank = self._bank
        if exclude is not None:
            if self.owner is None:
                raise ValueError("this bank has no owners: it cannot leave an example out")
            bank = bank[torch.as_tensor(self.owner != exclude)]
        out = [1.0 - (chunk @ bank.T).max(dim=1).values for chunk in queries.split(_CHUNK)]
        return torch.cat(out) if out else queries.new_zeros(0)

    def distances(self, patches: np.ndarray, views: Sequence[int],
                  exclude: Sequence[int | None] | None = None) -> np.ndarray:
        """Nearest-normal cosine distance of every patch: ``(N, len(views), P)`` float32 from
        ``(N, V, P, C)`` patch features. ``exclude[i]`` leaves image i's own patches out of
        the bank (leave-one-out)."""
        n, _, p, c = patches.shape
        out = np.empty((n, len(views), p), np.float32)
        for i in range(n):
            skip = None if exclude is None else exclude[i]
            q = torch.as_tensor(patches[i, list(views)], dtype=torch.float32).reshape(-1, c)
            out[i] = self.nearest_distance(q, skip).reshape(len(views), p).numpy()
        return out

    def anomaly(self, patches: np.ndarray, views: Sequence[int],
                exclude: Sequence[int | None] | None = None) -> np.ndarray:
        """Image anomaly of ``(N, V, P, C)`` patch features (:func:`image_anomaly` of
        :meth:`distances`)."""
        return image_anomaly(self.distances(patches, views, exclude))

    def loo_distances(self, patches: np.ndarray, owner: Sequence[int | None],
                      views: Sequence[int]) -> np.ndarray:
        """Leave-one-out :meth:`distances` of support images: each against the bank without
        its own patches (``owner[i]`` is its index among the normal examples, None for an
        abnormal one). A lone normal example has no other image to compare with: each of its
        views is compared with its other views, so every support image gets distances."""
        if self.owner is None:
            raise ValueError("this bank has no owners: it cannot leave an example out")
        if len(np.unique(self.owner)) > 1:
            return self.distances(patches, views, owner)
        out = self.distances(patches, views)  # abnormal examples: against the whole bank
        c = patches.shape[-1]
        for i in (i for i, own in enumerate(owner) if own is not None):
            for j, v in enumerate(views):
                others = [w for w in range(patches.shape[1]) if w != v]
                bank = PatchBank(patches[i, others].reshape(-1, c))
                out[i, j] = bank.distances(patches[i:i + 1, [v]], (0,))[0, 0]
        return out

    def loo_anomaly(self, patches: np.ndarray, owner: Sequence[int | None],
                    views: Sequence[int]) -> np.ndarray:
        """Leave-one-out image anomaly of support images (see :meth:`loo_distances`)."""
        return image_anomaly(self.loo_distances(patches, owner, views))


def image_anomaly(distances: np.ndarray) -> np.ndarray:
    """``(N,)`` image anomaly from ``(N, V, P)`` patch distances: per view, the mean of the
    :data:`TOP_PATCHES` largest; then the mean over views."""
    top = min(TOP_PATCHES, distances.shape[-1])
    return np.sort(distances, axis=-1)[..., -top:].mean(axis=(1, 2)).astype(np.float64)


def greedy_coreset(x: torch.Tensor, size: int, seed: int = 0, dim: int = 128) -> np.ndarray:
    """Indices of ``size`` rows of ``x`` chosen by greedy k-centre on a random projection.

    Squared distances come from one matrix-vector product per pick
    (``|p|^2 - 2 p.c + |c|^2``), so no ``(N, dim)`` temporary is allocated in the loop.
    """
    gen = torch.Generator().manual_seed(seed)
    proj = x @ (torch.randn(x.shape[1], min(dim, x.shape[1]), generator=gen) / dim ** 0.5)
    norms = proj.pow(2).sum(1)
    chosen = [int(torch.randint(len(x), (1,), generator=gen))]
    distance = norms - 2 * (proj @ proj[chosen[0]]) + norms[chosen[0]]
    for _ in tqdm(range(size - 1), desc="patch memory coreset", unit="patch", leave=False,
                  mininterval=1.0):
        nxt = int(distance.argmax())
        chosen.append(nxt)
        torch.minimum(distance, norms - 2 * (proj @ proj[nxt]) + norms[nxt], out=distance)
    return np.array(sorted(chosen))
