"""Spike metrics and the ridge readout against direct computations."""

from __future__ import annotations

import math

import pytest
import torch

from layerwise.problems.single_index import metrics
from layerwise.problems.single_index.readout import feature_map, ridge_path, ridge_readout

DTYPE = torch.float64


@pytest.mark.parametrize("strength", [0.3, 3.0])
def test_spike_matches_the_full_svd(strength):
    gen = torch.Generator().manual_seed(5)
    bulk = torch.randn(3, 60, 40, generator=gen, dtype=DTYPE) / math.sqrt(40)
    u = torch.randn(3, 60, 1, generator=gen, dtype=DTYPE)
    v = torch.randn(3, 1, 40, generator=gen, dtype=DTYPE)
    delta = bulk + strength * u @ v / math.sqrt(60 * 40)
    result = metrics.spike(delta)
    _, values, vh = torch.linalg.svd(delta)
    torch.testing.assert_close(result.separation, values[:, 0] / values[:, 1], rtol=1e-7, atol=0)
    overlap = (result.direction * vh[:, 0]).sum(-1).abs()
    torch.testing.assert_close(overlap, torch.ones(3, dtype=DTYPE), rtol=0, atol=1e-6)


def test_alignments_on_a_diagonal_covariance():
    sigma = torch.diag(torch.tensor([4.0, 1.0], dtype=DTYPE))[None]
    beta = torch.tensor([[1.0, 1.0]], dtype=DTYPE)
    u = torch.tensor([[1.0, 0.0]], dtype=DTYPE)
    result = metrics.alignments(u, beta, sigma)
    assert result["beta"].item() == pytest.approx(1 / math.sqrt(2))
    assert result["sigma_beta"].item() == pytest.approx(4 / math.sqrt(17))  # Σβ = (4, 1)
    # uᵀΣβ = 4, uᵀΣu = 4, βᵀΣβ = 5.
    assert result["sigma_weighted"].item() == pytest.approx(4 / math.sqrt(4 * 5))


def _features_and_targets(seed=0, seeds=2, n=50, d=8, width=12):
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(seeds, width, d, generator=gen, dtype=DTYPE)
    draw = lambda m: torch.randn(seeds, m, d, generator=gen, dtype=DTYPE)  # noqa: E731
    target = lambda x: torch.tanh(x[..., 0]) + 0.5 * x[..., 1]  # noqa: E731
    return w1, draw, target


def test_ridge_path_solves_the_normal_equations():
    w1, draw, target = _features_and_targets()
    x = draw(50)
    phi = feature_map(w1, "tanh")(x)
    y = target(x)
    penalties = (1e-4, 0.1)
    heads = ridge_path(phi, y, penalties)
    for index, penalty in enumerate(penalties):
        gram = phi.transpose(-1, -2) @ phi / 50 + penalty * torch.eye(12, dtype=DTYPE)
        direct = torch.linalg.solve(gram, phi.transpose(-1, -2) @ y.unsqueeze(-1) / 50).squeeze(-1)
        torch.testing.assert_close(heads[index], direct, rtol=1e-8, atol=1e-10)


def test_ridge_readout_picks_the_best_validation_penalty_and_reports_test_errors():
    w1, draw, target = _features_and_targets(seed=1)
    features = feature_map(w1, "relu")
    train_x, val_x, test_x = draw(40), draw(30), draw(30)
    noise = 0.1 * torch.ones_like(target(test_x))
    penalties = (1e-6, 1e-3, 1e-1, 10.0)
    result = ridge_readout(
        features,
        (train_x, target(train_x)),
        (val_x, target(val_x)),
        (test_x, target(test_x) + noise, target(test_x)),
        penalties,
    )
    heads = ridge_path(features(train_x), target(train_x), penalties)
    for seed in range(2):
        val_errors = [
            ((features(val_x)[seed] @ h[seed] - target(val_x)[seed]) ** 2).mean() for h in heads
        ]
        best = min(range(len(penalties)), key=lambda i: val_errors[i])
        assert result.penalty[seed].item() == penalties[best]
        prediction = features(test_x)[seed] @ heads[best][seed]
        excess = ((prediction - target(test_x)[seed]) ** 2).mean()
        assert result.excess_risk[seed].item() == pytest.approx(excess.item(), rel=1e-10)
        mse = ((prediction - target(test_x)[seed] - 0.1) ** 2).mean()
        assert result.test_mse[seed].item() == pytest.approx(mse.item(), rel=1e-10)


def test_batchnorm_features_use_the_given_batch_statistics():
    w1, draw, _ = _features_and_targets(seed=2)
    reference, x = draw(40), draw(5)
    pre_ref = reference @ w1.transpose(-1, -2)
    mean, std = pre_ref.mean(1, keepdim=True), pre_ref.std(1, unbiased=False, keepdim=True)
    expected = torch.tanh((x @ w1.transpose(-1, -2) - mean) / std) / math.sqrt(12)
    torch.testing.assert_close(feature_map(w1, "tanh", batchnorm_on=reference)(x), expected)
