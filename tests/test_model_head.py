"""Projection head, prototypes, training determinism and the scoring state, on synthetic
embeddings (two clusters on the unit sphere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sonoshot.model.detector import DetectorError, Embeddings, fit_state
from sonoshot.model.head import (N_VIEWS, HeadConfig, ProjectionHead, augment_views, prototypes,
                                 train_head, tta_embedding)


def clusters(n: int, seed: int, dim: int = 24, spread: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2, dim))
    labels = np.arange(n) % 2
    x = centres[labels][:, None] + spread * rng.normal(size=(n, N_VIEWS, dim))
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32), labels


def with_patches(views: np.ndarray, labels: np.ndarray, seed: int) -> Embeddings:
    """Embeddings whose abnormal images carry one patch unlike any normal patch."""
    rng = np.random.default_rng(seed + 100)
    base = np.zeros((len(views), N_VIEWS, 6, 8), np.float32)
    base[..., 0] = 1.0
    base += 0.05 * rng.normal(size=base.shape)
    base[labels == 1, :, 2, 1] += 1.0
    return Embeddings(views, (base / np.linalg.norm(base, axis=-1, keepdims=True)).astype(
        np.float16))


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
    support, probe = with_patches(views, labels, 0), with_patches(query, qlabels, 1)
    state = fit_state(support, labels, None, seed=0, head_config=HeadConfig(steps=30))
    assert state.mode == "labelled" and state.head is not None and state.bank is not None
    assert len(state.bank.patches) == 8 * N_VIEWS * 6  # the normal examples' patches
    scores = state.score(probe)
    assert ((scores > state.threshold) == qlabels).mean() > 0.9
    assert state.global_scale is not None and state.patch_scale[1] > 0

    global_only = fit_state(support, labels, None, seed=0, head_config=HeadConfig(steps=30),
                            use_patches=False)
    assert global_only.bank is None
    assert ((global_only.score(probe) > global_only.threshold) == qlabels).mean() > 0.9
    normal = fit_state(support[labels == 0], labels[labels == 0], None, seed=0)
    assert normal.mode == "normal-only" and normal.head is None and normal.protos is None
    normal_scores = normal.score(probe)
    assert normal_scores[qlabels == 1].min() > normal_scores[qlabels == 0].max()
    assert normal.threshold < normal_scores[qlabels == 1].min()
    with pytest.raises(DetectorError, match="no normal example"):
        fit_state(support[labels == 1], labels[labels == 1], None, seed=0)
    with pytest.raises(DetectorError, match="neither a text tower nor patch features"):
        fit_state(Embeddings(views[labels == 0], None), labels[labels == 0], None, seed=0)
