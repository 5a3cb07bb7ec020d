"""Theory formulas against closed forms, Monte Carlo and simulation (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from layerwise.problems.single_index import metrics, theory
from layerwise.problems.single_index.data import (
    covariance_spectrum,
    haar_orthogonal,
    link_function,
)

DTYPE = torch.float64
SQRT_2PI = math.sqrt(2 * math.pi)


def test_hermite_coefficients_of_he1_plus_he2_are_exact():
    coefficients = theory.hermite_coefficients(theory.link_numpy("he1_he2"), 4)
    np.testing.assert_allclose(coefficients, [0.0, 1.0, 1.0, 0.0, 0.0], atol=1e-12)


def test_hermite_coefficients_of_relu_match_closed_forms():
    # E[relu] = 1/√(2π), E[z relu] = 1/2, E[relu·He2]/√2 = 1/(√2·√(2π)), E[relu·He3] = 0.
    coefficients = theory.hermite_coefficients(theory.link_numpy("relu"), 3, kink_at_zero=True)
    np.testing.assert_allclose(
        coefficients, [1 / SQRT_2PI, 0.5, 1 / (math.sqrt(2) * SQRT_2PI), 0.0], atol=1e-12
    )


def test_link_moments_closed_forms():
    he = theory.link_moments("he1_he2", noise_std=0.5)
    # y = z + (z² − 1)/√2: E[y²] = 1 + 1, E[y²z²] = 3 + (15 − 6 + 1)/2 = 8; noise adds 0.25.
    assert he.c_star == pytest.approx(1.0, abs=1e-12)
    assert he.second == pytest.approx(2.25, abs=1e-12)
    assert he.second_times_z2 == pytest.approx(8.25, abs=1e-12)
    relu = theory.link_moments("relu")
    # E[relu²] = 1/2, E[relu² z²] = E[z⁴]/2 = 3/2.
    assert relu.second == pytest.approx(0.5, abs=1e-12)
    assert relu.second_times_z2 == pytest.approx(1.5, abs=1e-12)
    assert relu.residual_variance == pytest.approx(0.25, abs=1e-12)


@pytest.mark.parametrize("link", ["tanh", "relu", "he1_he2"])
def test_link_moments_match_monte_carlo(link):
    gen = torch.Generator().manual_seed(11)
    samples = 400_000
    z = torch.randn(samples, generator=gen, dtype=DTYPE)
    y = link_function(link, z)
    moments = theory.link_moments(link)
    for estimate_of, quadrature in (
        (z * y, moments.c_star),
        (y * y, moments.second),
        (y * y * z * z, moments.second_times_z2),
    ):
        error = estimate_of.std().item() / math.sqrt(samples)
        assert abs(estimate_of.mean().item() - quadrature) < 4 * error


def test_stein_lemma_mean_of_xy_is_c_star_sigma_beta():
    """E[X1ᵀy1/n] = c⋆Σβ⋆ (tanh: c⋆ ≈ 0.61, so the tolerance rejects Σβ⋆ itself)."""
    d, samples = 5, 400_000
    gen = torch.Generator().manual_seed(3)
    q = haar_orthogonal(d, gen)
    spectrum = covariance_spectrum("log_spaced", d, 10.0)
    sqrt_sigma = (q * spectrum.sqrt()) @ q.T
    sigma = (q * spectrum) @ q.T
    beta = torch.randn(d, generator=gen, dtype=DTYPE)
    beta = beta / torch.sqrt(beta @ sigma @ beta)
    x = torch.randn(samples, d, generator=gen, dtype=DTYPE) @ sqrt_sigma
    products = x * torch.tanh(x @ beta).unsqueeze(-1)
    error = products.std(dim=0) / math.sqrt(samples)
    expected = theory.link_moments("tanh").c_star * (sigma @ beta)
    assert torch.all((products.mean(dim=0) - expected).abs() < 4 * error)
    assert torch.any((products.mean(dim=0) - sigma @ beta).abs() > 4 * error)


def _instance(d, kappa, seed, rotated=True):
    gen = torch.Generator().manual_seed(seed)
    q = haar_orthogonal(d, gen) if rotated else torch.eye(d, dtype=DTYPE)
    spectrum = covariance_spectrum("log_spaced", d, kappa)
    beta = torch.randn(d, generator=gen, dtype=DTYPE)
    beta = beta / torch.sqrt((((q.T @ beta) ** 2) * spectrum).sum())
    return q, spectrum, beta, gen


def _simulate_vectors(d, n, kappa, seeds, link, damping):
    """cos(v, β⋆) of the sgd and kfac vectors, and the theory, for several instances."""
    moments = theory.link_moments(link)
    sgd, kfac, sgd_theory, kfac_theory = [], [], [], []
    for seed in range(seeds):
        q, spectrum, beta, gen = _instance(d, kappa, seed)
        x = torch.randn(n, d, generator=gen, dtype=DTYPE) @ ((q * spectrum.sqrt()) @ q.T)
        y = link_function(link, x @ beta)
        v = x.T @ y / n
        w = torch.linalg.solve(x.T @ x / n + damping * torch.eye(d, dtype=DTYPE), v)
        sgd.append(metrics.cosine(v, beta).item())
        kfac.append(metrics.cosine(w, beta).item())
        b, lam = (q.T @ beta)[None], spectrum[None]
        sgd_theory.append(theory.sgd_alignment(moments, lam, b, n).item())
        kfac_theory.append(theory.kfac_alignment(moments, lam, b, n, damping).item())
    return map(np.asarray, (sgd, kfac, sgd_theory, kfac_theory))


def _assert_statistically_close(simulated, predicted, slack):
    error = simulated.std(ddof=1) / math.sqrt(len(simulated))
    gap = abs(simulated.mean() - predicted.mean())
    assert gap < 3 * error + slack, (simulated.mean(), predicted.mean(), error)


@pytest.mark.parametrize("link", ["tanh", "relu"])
def test_isotropic_formulas_match_simulation(link):
    d, n, seeds = 150, 450, 16
    moments = theory.link_moments(link)
    sgd, kfac, sgd_theory, _ = _simulate_vectors(d, n, 1.0, seeds, link, 0.0)
    _assert_statistically_close(
        sgd, np.full(seeds, theory.isotropic_sgd_alignment(moments, d, n)), 0.01
    )
    _assert_statistically_close(
        kfac, np.full(seeds, theory.isotropic_kfac_alignment(moments, d, n)), 0.01
    )
    # The exact-moment formula agrees with Cui et al.'s leading-order one up to O(1/n).
    assert sgd_theory.mean() == pytest.approx(
        theory.isotropic_sgd_alignment(moments, d, n), abs=5e-3
    )


def test_anisotropic_undamped_formulas_match_simulation():
    sgd, kfac, sgd_theory, kfac_theory = _simulate_vectors(120, 480, 30.0, 16, "tanh", 0.0)
    _assert_statistically_close(sgd, sgd_theory, 0.01)
    _assert_statistically_close(kfac, kfac_theory, 0.01)
    # The two directions really differ here: sgd is capped well below kfac.
    assert kfac.mean() > sgd.mean() + 0.2


@pytest.mark.parametrize(
    ("link", "n", "damping"),
    [("tanh", 60, 0.05), ("tanh", 240, 0.02), ("relu", 120, 0.01), ("relu", 60, 0.02)],
)
def test_damped_deterministic_equivalent_matches_simulation(link, n, damping):
    """d = 120, κ = 30. The ReLU cases (σr² = c⋆²) at n ≤ d are the ones where the variance
    term and its factor κ' matter: without κ' the prediction at n = d would be 0.61, not 0.45."""
    _, kfac, _, kfac_theory = _simulate_vectors(120, n, 30.0, 16, link, damping)
    _assert_statistically_close(kfac, kfac_theory, 0.02)


def test_effective_penalty_solves_its_fixed_point_and_isotropic_closed_form():
    d, n, damping = 80, 50, 0.3
    eigenvalues = torch.ones(1, d, dtype=DTYPE)
    kappa = theory.ridge_effective_penalty(eigenvalues, n, damping).item()
    # Σ = I: κ = λ + κ γ/(1 + κ) with γ = d/n, i.e. κ² + (1 − λ − γ)κ − λ = 0.
    gamma = d / n
    closed = 0.5 * ((damping + gamma - 1) + math.sqrt((1 - damping - gamma) ** 2 + 4 * damping))
    assert kappa == pytest.approx(closed, rel=1e-10)
    spectrum = covariance_spectrum("log_spaced", d, 100.0)[None]
    kappa = theory.ridge_effective_penalty(spectrum, n, damping)
    residual = kappa - damping - kappa / n * (spectrum / (spectrum + kappa[:, None])).sum(-1)
    assert residual.abs().item() < 1e-12


def test_damped_formula_tends_to_the_undamped_one():
    d, n = 50, 5000
    _, spectrum, beta, _ = _instance(d, 20.0, 0, rotated=False)
    moments = theory.link_moments("tanh")
    lam, b = spectrum[None], beta[None]
    undamped = theory.kfac_alignment(moments, lam, b, n, 0.0)
    nearly = theory.kfac_alignment(moments, lam, b, n, 1e-9)
    # Same formula up to n − d versus n − d − 1 in the variance term.
    torch.testing.assert_close(nearly, undamped, rtol=1e-4, atol=0)


def test_sgd_alignment_tends_to_the_cap_and_refuses_undamped_kfac_at_n_le_d():
    _, spectrum, beta, _ = _instance(40, 100.0, 1, rotated=False)
    moments = theory.link_moments("tanh")
    lam, b = spectrum[None], beta[None]
    torch.testing.assert_close(
        theory.sgd_alignment(moments, lam, b, 10**12),
        theory.alignment_cap(lam, b),
        rtol=1e-9,
        atol=0,
    )
    cap = theory.alignment_cap(lam, b).item()
    direct = (beta @ (spectrum * beta)) / (beta.norm() * (spectrum * beta).norm())
    assert cap == pytest.approx(direct.item(), rel=1e-12)
    assert theory.sgd_alignment_sigma_beta(moments, lam, b, 10**12).item() == pytest.approx(
        1.0, abs=1e-9
    )
    with pytest.raises(ValueError, match="damping"):
        theory.kfac_alignment(moments, lam, b, 40, 0.0)
