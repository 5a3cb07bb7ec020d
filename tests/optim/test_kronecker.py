"""The per-layer abstraction's building blocks against explicit formulas."""

from __future__ import annotations

import pytest
import torch

from layerwise.optim import EigenbasisAdam, kronecker
from layerwise.optim.statistics import GradientSource


@pytest.mark.parametrize("accumulation", ["sum", "ema", "latest"])
def test_fused_gradient_statistics_equal_the_explicit_increments(accumulation):
    """S <- rule(S, G Gᵀ) and rule(S, GᵀG) by one in-place addmm per side equal the
    increments formed explicitly; a side above max_preconditioner_dim gets the diagonal."""
    generator = torch.Generator().manual_seed(0)
    accumulation = kronecker.Accumulation(accumulation)
    shape = (5, 7)  # left dense, right (7 > 6) diagonal
    layout = kronecker.side_layout(
        shape, sides="both", max_preconditioner_dim=6, scalar_sides=False
    )
    like = torch.zeros((), dtype=torch.float64)
    fused = kronecker.init_statistics(layout, shape, like)
    explicit = kronecker.init_statistics(layout, shape, like)
    assert fused[kronecker.RIGHT_STATISTIC].ndim == 1
    source = GradientSource()
    for _ in range(3):
        grad = torch.randn(*shape, generator=generator, dtype=torch.float64)
        source.accumulate(None, fused, grad, layout, accumulation, 0.9)
        left = grad @ grad.T
        right = (grad * grad).sum(dim=0)
        previous = explicit[kronecker.LEFT_STATISTIC].clone(), explicit[kronecker.RIGHT_STATISTIC]
        for key, increment in (
            (kronecker.LEFT_STATISTIC, left),
            (kronecker.RIGHT_STATISTIC, right),
        ):
            kronecker.accumulate_increment(accumulation, 0.9, explicit[key], increment)
        if accumulation == "ema":  # the rule itself, written out
            torch.testing.assert_close(
                explicit[kronecker.LEFT_STATISTIC], 0.9 * previous[0] + 0.1 * left
            )
    for key in (kronecker.LEFT_STATISTIC, kronecker.RIGHT_STATISTIC):
        torch.testing.assert_close(fused[key], explicit[key], rtol=1e-13, atol=1e-13)


def _spd_with_spectrum(
    n: int, spectrum: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return (basis * spectrum) @ basis.T, basis


def _power_qr_state(statistic: torch.Tensor) -> tuple[EigenbasisAdam, dict]:
    """An EigenbasisAdam with power-QR refreshes and the state of an (n, 1) block whose left
    statistic is ``statistic``."""
    transform = EigenbasisAdam(basis_refresh="power_qr")
    shape = (statistic.shape[0], 1)
    layout = (kronecker.Side.DENSE, kronecker.Side.NONE)
    state = {**kronecker.init_statistics(layout, shape, statistic)}
    state.update(transform.init(layout, shape, statistic))
    state[kronecker.LEFT_STATISTIC].copy_(statistic)
    return transform, state


def test_power_qr_refreshes_converge_to_the_eigenbasis():
    """Repeated power-QR refreshes of a fixed statistic are subspace iteration: QᵀSQ becomes
    diagonal with descending entries (the eigenvalues), at the rate of the eigenvalue ratios
    (0.7 here, so 0.7^60 ~ 5e-10 after 60 refreshes)."""
    spectrum = 0.7 ** torch.arange(8, dtype=torch.float64)
    statistic, _ = _spd_with_spectrum(8, spectrum, seed=1)
    transform, state = _power_qr_state(statistic)
    transform.refresh(state)  # the first refresh: eigh
    basis = state[kronecker.LEFT_PRECONDITIONER]
    # Start the iteration from a basis far from the answer.
    generator = torch.Generator().manual_seed(2)
    basis.copy_(torch.linalg.qr(torch.randn(8, 8, generator=generator, dtype=torch.float64))[0])
    for _ in range(60):
        transform.refresh(state)
    rotated = basis.T @ statistic @ basis
    off_diagonal = rotated - torch.diag(rotated.diagonal())
    assert float(off_diagonal.abs().max()) < 1e-8
    torch.testing.assert_close(rotated.diagonal(), spectrum, atol=1e-8, rtol=0)


def test_power_qr_refresh_reorders_the_second_moment_with_the_basis():
    """Columns of the previous basis are taken in descending estimated eigenvalue; Adam's
    second moment is permuted along the same side so each coordinate keeps its estimate."""
    spectrum = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    statistic, eigenvectors = _spd_with_spectrum(5, spectrum, seed=3)
    transform, state = _power_qr_state(statistic)
    transform.refresh(state)  # eigh (the basis is then ready for power steps)
    scrambled = torch.tensor([3, 0, 4, 1, 2])
    state[kronecker.LEFT_PRECONDITIONER].copy_(eigenvectors[:, scrambled])
    second_moment = torch.arange(5, dtype=torch.float64)[:, None] + 1.0  # one value per row
    state[kronecker.EIGENBASIS_EXP_AVG_SQ].copy_(second_moment[scrambled])
    transform.refresh(state)
    fresh = state[kronecker.LEFT_PRECONDITIONER]
    # The exact eigenbasis is a fixed point up to column signs, now in descending order.
    torch.testing.assert_close(
        (fresh.T @ eigenvectors).abs(),
        torch.eye(5, dtype=torch.float64),
        atol=1e-12,
        rtol=0,
    )
    torch.testing.assert_close(state[kronecker.EIGENBASIS_EXP_AVG_SQ], second_moment)
