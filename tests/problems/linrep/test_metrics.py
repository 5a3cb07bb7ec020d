"""Subspace distance, least-squares head and transfer risk against independent computations."""

from __future__ import annotations

import math

import pytest
import torch

from layerwise.problems.linrep.data import Batch
from layerwise.problems.linrep.metrics import (
    least_squares_head,
    squared_loss,
    subspace_distance,
    transfer_excess_risk,
)

DT = torch.float64


def test_distance_is_invariant_to_invertible_left_factors(gen):
    g = torch.randn(4, 3, 9, generator=gen, dtype=DT)
    target = torch.randn(4, 3, 9, generator=gen, dtype=DT)
    a = torch.randn(4, 3, 3, generator=gen, dtype=DT) + 3 * torch.eye(3, dtype=DT)
    for norm in ("spectral", "fro"):
        base = subspace_distance(g, target, norm)
        torch.testing.assert_close(subspace_distance(a @ g, target, norm), base, rtol=1e-10, atol=0)
        torch.testing.assert_close(subspace_distance(g, a @ target, norm), base, rtol=1e-10, atol=0)


def test_distance_range_and_norm_ordering(gen):
    k = 3
    g = torch.randn(50, k, 8, generator=gen, dtype=DT)
    target = torch.randn(50, k, 8, generator=gen, dtype=DT)
    spectral = subspace_distance(g, target)
    fro = subspace_distance(g, target, "fro")
    assert (spectral >= 0).all() and (spectral <= 1 + 1e-12).all()
    assert (spectral <= fro + 1e-12).all()
    assert (fro <= math.sqrt(k) * spectral + 1e-12).all()


def test_known_values():
    eye = torch.eye(6, dtype=DT)
    same = subspace_distance(eye[:2], 5.0 * eye[:2])
    orthogonal = subspace_distance(eye[:2], eye[2:4])
    assert same.item() < 1e-14
    assert orthogonal.item() == pytest.approx(1.0, abs=1e-14)
    assert subspace_distance(eye[:2], eye[2:4], "fro").item() == pytest.approx(
        math.sqrt(2), abs=1e-14
    )
    # Rotating one of two basis vectors by θ in a plane: the largest principal angle is θ.
    theta = 0.3
    rotated = eye[:2].clone()
    rotated[1] = math.cos(theta) * eye[1] + math.sin(theta) * eye[4]
    assert subspace_distance(rotated, eye[:2]).item() == pytest.approx(math.sin(theta), rel=1e-12)


def test_small_distances_keep_relative_precision():
    eye = torch.eye(5, dtype=DT)
    theta = 1e-9
    tilted = eye[:1] * math.cos(theta) + eye[3:4] * math.sin(theta)
    assert subspace_distance(tilted, eye[:1]).item() == pytest.approx(math.sin(theta), rel=1e-6)


def test_least_squares_head_matches_lstsq(gen):
    x = torch.randn(2, 40, 7, generator=gen, dtype=DT)
    y = torch.randn(2, 40, 4, generator=gen, dtype=DT)
    g = torch.randn(2, 3, 7, generator=gen, dtype=DT)
    head = least_squares_head(g, Batch(x, y))
    z = x @ g.mT
    expected = torch.linalg.lstsq(z, y).solution.mT  # argmin ‖Z Fᵀ − Y‖
    torch.testing.assert_close(head, expected, rtol=1e-10, atol=1e-12)


def test_transfer_risk_is_zero_for_the_true_features_without_noise(gen):
    d, k, dy, n = 6, 2, 3, 10
    g_star = torch.linalg.qr(torch.randn(1, d, k, generator=gen, dtype=DT))[0].mT
    f_star = torch.randn(1, dy, k, generator=gen, dtype=DT)
    x = torch.randn(1, n, d, generator=gen, dtype=DT)
    y = x @ (f_star @ g_star).mT
    cov = torch.eye(d, dtype=DT).unsqueeze(0)
    risk = transfer_excess_risk(3.0 * g_star, Batch(x, y), f_star, g_star, cov)
    assert risk.item() < 1e-20
    # Wrong features: risk equals tr(E Σ Eᵀ) computed by hand from the lstsq head.
    g = torch.randn(1, k, d, generator=gen, dtype=DT)
    head = torch.linalg.lstsq(x @ g.mT, y).solution.mT
    error = (head @ g - f_star @ g_star)[0]
    expected = torch.trace(error @ error.T)
    assert transfer_excess_risk(g, Batch(x, y), f_star, g_star, cov).item() == pytest.approx(
        expected.item(), rel=1e-10
    )


def test_squared_loss():
    predictions = torch.tensor([[[1.0, 2.0], [0.0, 0.0]]], dtype=DT)
    targets = torch.tensor([[[0.0, 0.0], [3.0, 0.0]]], dtype=DT)
    assert squared_loss(predictions, targets).item() == pytest.approx(0.5 * (5.0 + 9.0) / 2)
