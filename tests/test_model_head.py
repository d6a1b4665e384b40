"""Projection head, prototypes, training determinism and the scoring state, on synthetic
embeddings (two clusters on the unit sphere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sonoshot.model.detector import DetectorError, fit_state
from sonoshot.model.head import (N_VIEWS, HeadConfig, ProjectionHead, augment_views, prototypes,
                                 train_head, tta_embedding)


def clusters(n: int, seed: int, dim: int = 24, spread: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2, dim))
    labels = np.arange(n) % 2
    x = centres[labels][:, None] + spread * rng.normal(size=(n, N_VIEWS, dim))
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32), labels


def test_head_is_identity_at_initialisation() -> None:
    x = torch.nn.functional.normalize(torch.randn(5, 12), dim=-1)
    torch.testing.assert_close(ProjectionHead(12, 4)(x), x)


def test_training_is_deterministic_per_seed() -> None:
    views, labels = clusters(12, 0)
    a, _ = train_head(views, labels, None, HeadConfig(steps=20), seed=7)
    b, _ = train_head(views, labels, None, HeadConfig(steps=20), seed=7)
    c, _ = train_head(views, labels, None, HeadConfig(steps=20), seed=8)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])
    assert not torch.equal(a.state_dict()["up.weight"], c.state_dict()["up.weight"])


def test_training_needs_both_classes() -> None:
    views, _ = clusters(6, 1)
    with pytest.raises(ValueError, match="both classes"):
        train_head(views, np.zeros(6, int), None, HeadConfig(steps=2), seed=0)


def test_text_anchor_moves_prototype_and_stands_alone() -> None:
    z = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    labels = torch.tensor([0, 0, 0, 0])
    text = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    protos = prototypes(z, labels, text, text_weight=2.0)
    torch.testing.assert_close(protos[1], text[1])
    expected = torch.nn.functional.normalize(z.sum(0) + 2.0 * text[0], dim=0)
    torch.testing.assert_close(protos[0], expected)
    with pytest.raises(ValueError, match="class 1"):
        prototypes(z, labels, None, 2.0)


def test_augment_views_shapes_and_tta() -> None:
    batch = torch.rand(2, 3, 32, 32)
    views = augment_views(batch)
    assert len(views) == N_VIEWS and all(v.shape == batch.shape for v in views)
    torch.testing.assert_close(views[1], batch.flip(3))
    emb = tta_embedding(np.random.default_rng(0).normal(size=(3, N_VIEWS, 5)))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0)


def test_fit_state_modes_and_separation() -> None:
    views, labels = clusters(16, 2)
    query, qlabels = clusters(40, 2)
    state = fit_state(views, labels, None, seed=0, head_config=HeadConfig(steps=30))
    assert state.mode == "labelled" and state.head is not None
    scores = state.score(tta_embedding(query))
    assert ((scores > state.threshold) == qlabels).mean() > 0.9
    normal = fit_state(views[labels == 0], labels[labels == 0], None, seed=0)
    assert normal.mode == "normal-only" and normal.nearest and normal.head is None
    assert normal.score(tta_embedding(query))[qlabels == 1].mean() > \
        normal.score(tta_embedding(query))[qlabels == 0].mean()
    with pytest.raises(DetectorError, match="no normal example"):
        fit_state(views[labels == 1], labels[labels == 1], None, seed=0)
