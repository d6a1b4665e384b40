"""The patch memory: bank construction and its coreset bound, nearest-normal anomaly, and the
leave-one-out scores that calibrate it (own patches excluded; a lone normal example)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sonoshot.model.patches import TOP_PATCHES, PatchBank, greedy_coreset


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_anomaly_is_the_mean_of_the_most_distant_patches() -> None:
    normal = unit(np.tile(np.eye(4)[:2], (2, 1, 3, 1)).reshape(2, 1, 6, 4))  # axes 0 and 1
    bank = PatchBank.build(normal)
    assert bank.patches.dtype == np.float16 and len(bank.patches) == 12
    query = np.tile(np.eye(4)[0], (1, 1, 6, 1)).astype(np.float32)
    query[0, 0, :2] = np.eye(4)[2]  # two patches orthogonal to every normal patch
    score = bank.anomaly(query, views=(0,))[0]
    assert score == pytest.approx(2 / TOP_PATCHES)  # two at distance 1, the rest at 0
    assert bank.anomaly(np.tile(np.eye(4)[1], (1, 1, 6, 1)).astype(np.float32), (0,))[0] == 0.0


def test_leave_one_out_excludes_the_image_own_patches() -> None:
    rng = np.random.default_rng(0)
    normal = unit(rng.normal(size=(3, 2, 5, 8)))
    bank = PatchBank.build(normal)
    assert bank.anomaly(normal, (0, 1)).max() < 1e-3  # each image finds itself
    loo = bank.loo_anomaly(normal, [0, 1, 2], (0, 1))
    assert (loo > 0.1).all()
    other = PatchBank.build(normal[[1, 2]])
    np.testing.assert_allclose(loo[0], other.anomaly(normal[:1], (0, 1))[0], atol=1e-3)


def test_lone_normal_example_is_compared_with_its_other_views() -> None:
    rng = np.random.default_rng(1)
    normal = unit(rng.normal(size=(1, 4, 5, 8)))
    abnormal = unit(rng.normal(size=(1, 4, 5, 8)))
    bank = PatchBank.build(normal)
    loo = bank.loo_anomaly(np.concatenate([normal, abnormal]), [0, None], (0, 1, 2, 3))
    assert np.isfinite(loo).all() and loo[0] > 0.05
    assert loo[1] == bank.anomaly(abnormal, (0, 1, 2, 3))[0]


def test_bank_beyond_its_limit_is_a_covering_coreset() -> None:
    rng = np.random.default_rng(2)
    centres = unit(rng.normal(size=(5, 16)))
    points = unit(np.repeat(centres, 40, axis=0) + 0.01 * rng.normal(size=(200, 16)))
    chosen = greedy_coreset(torch.as_tensor(points), 5)
    assert sorted({int(i) // 40 for i in chosen}) == [0, 1, 2, 3, 4]  # one per cluster
    bank = PatchBank.build(points.reshape(10, 1, 20, 16), limit=25)
    assert len(bank.patches) == 25 and len(bank.owner) == 25
