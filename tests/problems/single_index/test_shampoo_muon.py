"""One-step Shampoo and Muon (claim C15) against independent computations: explicit
eigendecompositions, the SVD polar factor, brute-force projections and Monte Carlo."""

from __future__ import annotations

import math

import pytest
import torch

from layerwise.problems.single_index import metrics, onestep, theory
from layerwise.problems.single_index.data import make_instance, sample
from layerwise.problems.single_index.settings import SingleIndexSettings

DTYPE = torch.float64


def _problem(d: int = 12, width: int = 10, n: int = 30, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(2, width, d, generator=gen, dtype=DTYPE) / math.sqrt(d)
    a = torch.randn(2, width, generator=gen, dtype=DTYPE) / math.sqrt(width)
    x = torch.randn(2, n, d, generator=gen, dtype=DTYPE)
    y = torch.tanh(x[..., 0] - x[..., 1])
    return w, a, x, y


def _brute_force_inverse_fourth_root(matrix: torch.Tensor, epsilon: float) -> torch.Tensor:
    """(A + εI)^{-1/4} from an explicit eigendecomposition of one symmetric matrix."""
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag((values.clamp_min(0) + epsilon) ** -0.25) @ vectors.T


def test_shampoo_direction_matches_explicit_eigendecompositions():
    w, a, x, y = _problem()
    gradient = onestep.loss_gradient(w, a, x, y, "tanh")
    damping = 1e-2
    got = onestep.shampoo_direction(gradient, damping)
    for s in range(2):
        g = gradient[s]
        epsilon = damping * float(torch.linalg.matrix_norm(g, ord=2)) ** 2
        left = _brute_force_inverse_fourth_root(g @ g.T, epsilon)
        right = _brute_force_inverse_fourth_root(g.T @ g, epsilon)
        torch.testing.assert_close(got[s], left @ g @ right, rtol=1e-10, atol=1e-12)
        # The same map through the SVD: singular values s ↦ s/√(s² + ε).
        u, values, vh = torch.linalg.svd(g, full_matrices=False)
        flattened = values / torch.sqrt(values**2 + epsilon)
        torch.testing.assert_close(got[s], (u * flattened) @ vh, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n", [30, 6])  # full rank, and rank n < min(N, d)
def test_shampoo_without_damping_is_the_polar_factor_and_muons_step(n):
    w, a, x, y = _problem(n=n)
    gradient = onestep.loss_gradient(w, a, x, y, "tanh")
    u, _, vh = torch.linalg.svd(gradient, full_matrices=False)
    rank = min(n, *gradient.shape[-2:])
    polar = u[..., :rank] @ vh[..., :rank, :]
    torch.testing.assert_close(onestep.shampoo_direction(gradient, 1e-14), polar, atol=1e-5, rtol=0)
    # Muon's step is −s·polar(G) with s matching sgd's Frobenius norm; so is shampoo's as ε → 0.
    sgd = onestep.sgd_step(w, a, x, y, lr=0.7, activation="tanh")
    muon = onestep.muon_step(w, a, x, y, lr=0.7, polar="svd", activation="tanh")
    scale = torch.linalg.matrix_norm(sgd) / math.sqrt(rank)
    torch.testing.assert_close(muon, -scale[:, None, None] * polar, rtol=1e-9, atol=1e-12)
    shampoo = onestep.shampoo_step(w, a, x, y, lr=0.7, damping=1e-14, activation="tanh")
    torch.testing.assert_close(shampoo, muon, atol=1e-5 * float(scale.max()), rtol=0)


def test_newton_schulz_muon_is_close_to_the_polar_factor_but_not_equal():
    w, a, x, y = _problem()
    exact = onestep.muon_step(w, a, x, y, lr=1.0, polar="svd", activation="tanh")
    iterated = onestep.muon_step(w, a, x, y, lr=1.0, polar="newton_schulz", activation="tanh")
    cosine = (exact * iterated).sum((-1, -2)) / (
        torch.linalg.matrix_norm(exact) * torch.linalg.matrix_norm(iterated)
    )
    assert bool((cosine > 0.9).all()) and bool((cosine < 1 - 1e-6).all())


def test_damped_shampoo_spike_is_exactly_the_sgd_spike():
    w, a, x, y = _problem()
    sgd = onestep.sgd_step(w, a, x, y, lr=1.0, activation="tanh")
    for damping in (1e-4, 1e-2, 1.0):
        shampoo = onestep.shampoo_step(w, a, x, y, lr=1.0, damping=damping, activation="tanh")
        spike, reference = metrics.spike_by_svd(shampoo), metrics.spike_by_svd(sgd)
        cosine = metrics.cosine(spike.direction, reference.direction)
        torch.testing.assert_close(cosine, torch.ones_like(cosine), atol=1e-8, rtol=0)
        # The separation is flattened: s1/s2 · √((s2² + ε)/(s1² + ε)), ε = damping·s1².
        values = torch.linalg.svdvals(sgd)
        s1, s2 = values[:, 0], values[:, 1]
        expected = s1 / s2 * torch.sqrt((s2**2 + damping * s1**2) / (s1**2 + damping * s1**2))
        torch.testing.assert_close(spike.separation, expected, rtol=1e-8, atol=0)
        assert bool((spike.separation < reference.separation).all())


def test_row_alignment_of_rank_one_and_orthogonal_updates():
    gen = torch.Generator().manual_seed(1)
    u, v, b = (torch.randn(1, k, generator=gen, dtype=DTYPE) for k in (7, 5, 5))
    rank_one = u.unsqueeze(-1) * v.unsqueeze(-2)
    torch.testing.assert_close(metrics.row_alignment(rank_one, b), metrics.cosine(v, b))
    orthogonal = torch.linalg.qr(torch.randn(1, 7, 5, generator=gen, dtype=DTYPE))[0]
    torch.testing.assert_close(
        metrics.row_alignment(orthogonal, b), torch.full((1,), 1 / math.sqrt(5), dtype=DTYPE)
    )


def test_muon_row_alignment_matches_its_closed_form_exactly():
    # n >= d, N >= d: exactly 1/√d for every direction; n < d: ‖P_X b‖/√n with P_X the
    # projection on the span of the n samples (brute force from X1), whatever y1 is.
    for n_over_d, expected_full in ((2.0, True), (0.5, False)):
        settings = SingleIndexSettings(d=24, n_over_d=n_over_d, kappa=50, readout=False)
        instance = make_instance(settings, (0, 1))
        x, y, _ = sample(instance, "step", settings.n)
        step = onestep.muon_step(
            instance.w0, instance.a, x, y, lr=1.0, polar="svd", activation="tanh"
        )
        sigma_beta = (instance.covariance @ instance.beta.unsqueeze(-1)).squeeze(-1)
        for b in (instance.beta, sigma_beta):
            got = metrics.row_alignment(step, b)
            if expected_full:
                want = torch.full_like(got, 1 / math.sqrt(settings.d))
            else:
                projection = x.transpose(-1, -2) @ torch.linalg.solve(x @ x.transpose(-1, -2), x)
                unit = b / b.norm(dim=-1, keepdim=True)
                want = torch.sqrt(torch.einsum("si,sij,sj->s", unit, projection, unit) / settings.n)
            torch.testing.assert_close(got, want, rtol=1e-8, atol=0)


def test_projection_deterministic_equivalent_against_monte_carlo():
    # E[bᵀ P_X b] for the projection on n < d Gaussian samples ≈ bᵀΣ(Σ + κ0)⁻¹b: checked on
    # Σ's top and bottom eigenvectors, where it is far from the isotropic guess n/d.
    d, n, draws = 80, 40, 200
    eigenvalues = torch.logspace(0, -2, d, dtype=DTYPE)
    kappa = theory.projection_effective_penalty(eigenvalues.unsqueeze(0), n)
    predicted = eigenvalues / (eigenvalues + kappa)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(draws, n, d, generator=gen, dtype=DTYPE) * eigenvalues.sqrt()
    projection = x.transpose(-1, -2) @ torch.linalg.solve(x @ x.transpose(-1, -2), x)
    diagonal = torch.diagonal(projection, dim1=-2, dim2=-1).mean(0)
    for index in (0, d - 1):
        assert abs(float(diagonal[index] - predicted[index])) < 0.03
    assert abs(float(predicted[0]) - n / d) > 0.3 and abs(float(predicted[-1]) - n / d) > 0.3
    # The theory function of the run uses the same deterministic equivalent.
    top = torch.zeros(1, d, dtype=DTYPE)
    top[0, 0] = 1.0
    got = theory.polar_row_alignment(eigenvalues.unsqueeze(0), top, n, width=d)
    torch.testing.assert_close(got, torch.sqrt(predicted[:1] / n))
    with pytest.raises(ValueError, match="no closed form"):
        theory.polar_row_alignment(eigenvalues.unsqueeze(0), top, n, width=n - 1)
