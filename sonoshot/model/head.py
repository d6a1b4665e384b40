"""head.py
=======

The learned part of the detector, on frozen backbone embeddings:

- image augmentation views (:data:`VIEWS`): each support image is embedded under a fixed set of
  flips, zooms and gamma changes, so training sees plausible variants of each example;
- :class:`ProjectionHead`: a residual adapter, ``z = normalise(x + A(x))`` with ``A`` a
  two-layer bottleneck MLP whose last layer starts at zero (the head starts as the identity,
  so a fit can only move away from the raw prototype classifier as far as the data asks);
- prototypes: per class, the mean of projected support embeddings, anchored by projected
  text embeddings where the backbone has a text tower (weight ``text_weight`` in shots);
- loss: episodic prototypical cross-entropy on cosine logits, plus a penalty that keeps the
  adapter near the identity; deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

N_VIEWS = 4  # identity, flip, zoom, zoom + flip + gamma
TTA_VIEWS = (0, 1, 2, 3)  # views averaged at scoring time (all four; see docs/model.md)
FLIP_VIEWS = (0, 1)  # identity + flip: the no-augmentation ablation's pooling


ZOOM_MARGIN = 0.06  # the zoom views drop this fraction of the side at each edge


def augment_views(batch: torch.Tensor) -> list[torch.Tensor]:
    """The :data:`N_VIEWS` deterministic variants of a ``[0, 1]`` ``(B, 3, S, S)`` batch."""
    size = batch.shape[-1]
    margin = round(size * ZOOM_MARGIN)
    zoom = F.interpolate(batch[:, :, margin:size - margin, margin:size - margin],
                         size=(size, size), mode="bilinear", align_corners=False)
    return [batch, batch.flip(3), zoom, zoom.flip(3).clamp(0, 1).pow(0.8)]


def view_geometry(size: int) -> tuple[tuple[float, bool], ...]:
    """Where each of :func:`augment_views` puts a point: ``(scale, flipped)`` per view, such
    that the point at normalised coordinates ``(u, v)`` (-1 … 1 from edge to edge) of the
    prepared image lies at ``(±scale·u, scale·v)`` in the view (x negated when flipped)."""
    margin = round(size * ZOOM_MARGIN)
    zoom = size / (size - 2 * margin)
    return ((1.0, False), (1.0, True), (zoom, False), (zoom, True))


def tta_embedding(views: np.ndarray, which: tuple[int, ...] = TTA_VIEWS) -> np.ndarray:
    """Scoring embedding from ``(N, V, D)`` view embeddings: the normalised mean of ``which``."""
    mean = views[:, list(which)].mean(axis=1)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def support_embedding(views: np.ndarray) -> np.ndarray:
    """Prototype embedding of support examples: the normalised mean over all views."""
    mean = views.mean(axis=1)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


@dataclass(frozen=True)
class HeadConfig:
    hidden: int = 64  # adapter bottleneck width
    steps: int = 300  # episodes
    lr: float = 1e-3  # Adam learning rate
    temperature: float = 0.1  # cosine logits are divided by this
    identity_penalty: float = 10.0  # weight of mean ||A(x)||^2 (keeps the head near identity)
    noise: float = 0.02  # std of Gaussian noise added to embeddings during training
    text_weight: float = 2.0  # text anchor counts as this many support shots per class


class ProjectionHead(nn.Module):
    """Residual bottleneck adapter on L2-normalised embeddings; identity at initialisation."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's correction ``A(x)``."""
        return self.up(F.gelu(self.down(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x + self.residual(x), dim=-1)


def prototypes(z: torch.Tensor, labels: torch.Tensor, text: torch.Tensor | None,
               text_weight: float) -> torch.Tensor:
    """Class prototypes ``(2, D)`` (row 0 normal, row 1 abnormal), L2-normalised.

    A class with no support examples takes its text anchor alone.

    Raises
    ------
    ValueError
        If a class has neither examples nor a text anchor.
    """
    rows = []
    for c in (0, 1):
        members = z[labels == c]
        total = members.sum(dim=0)
        count = float(len(members))
        if text is not None:
            total = total + text_weight * text[c]
            count += text_weight
        if count == 0:
            raise ValueError(f"class {c} has no support examples and no text anchor")
        rows.append(total / count)
    return F.normalize(torch.stack(rows), dim=-1)


def train_head(views: np.ndarray, labels: np.ndarray, text: np.ndarray | None,
               config: HeadConfig, seed: int, augment: bool = True
               ) -> tuple[ProjectionHead, dict[str, float]]:
    """Fit a :class:`ProjectionHead` episodically on a labelled support set.

    Each episode draws one augmentation view per example (only the identity view without
    ``augment``), holds out half of each class as pseudo-queries, builds prototypes from the
    rest (plus text anchors) and minimises prototypical cross-entropy on the pseudo-queries.

    Parameters
    ----------
    views : numpy.ndarray
        ``(N, N_VIEWS, D)`` support embeddings, L2-normalised.
    labels : numpy.ndarray
        ``(N,)`` 0 normal / 1 abnormal; both classes must be present.
    text : numpy.ndarray or None
        ``(2, D)`` text anchors (normal, abnormal) or None.
    config : HeadConfig
    seed : int
        Seeds the initialisation and the episode draws.
    augment : bool
        Use the augmentation views and feature noise.

    Returns
    -------
    ProjectionHead, dict
        The trained head and training metrics (final loss, support accuracy).

    Raises
    ------
    ValueError
        If a class is missing from ``labels``.
    """
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    if not ((labels_t == 0).any() and (labels_t == 1).any()):
        raise ValueError("both classes need support examples to train the head")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x_all = torch.as_tensor(views, dtype=torch.float32)
    text_t = None if text is None else torch.as_tensor(text, dtype=torch.float32)
    head = ProjectionHead(x_all.shape[-1], config.hidden)
    opt = torch.optim.Adam(head.parameters(), lr=config.lr)
    n = len(labels_t)
    counts = torch.bincount(labels_t, minlength=2)
    loss = torch.zeros(())
    for _ in range(config.steps):
        if augment:
            pick = torch.randint(0, x_all.shape[1], (n,), generator=gen)
            x = x_all[torch.arange(n), pick]
            x = F.normalize(x + config.noise * torch.randn(x.shape, generator=gen), dim=-1)
        else:
            x = x_all[:, 0]
        query = torch.zeros(n, dtype=torch.bool)
        for c in (0, 1):
            idx = torch.nonzero(labels_t == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=gen)]
            query[idx[: max(1, len(idx) // 2)]] = True
        z = head(x)
        support = ~query | (counts[labels_t] == 1)  # a lone example is both sides
        protos = prototypes(z[support], labels_t[support],
                            None if text_t is None else head(text_t), config.text_weight)
        logits = z[query] @ protos.T / config.temperature
        loss = F.cross_entropy(logits, labels_t[query]) + config.identity_penalty * (
            head.residual(x).pow(2).sum(-1).mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        z = head(x_all[:, 0])
        protos = prototypes(z, labels_t, None if text_t is None else head(text_t),
                            config.text_weight)
        accuracy = float(((z @ protos.T).argmax(-1) == labels_t).float().mean())
    return head, {"final_loss": float(loss.detach()), "support_accuracy": accuracy}
