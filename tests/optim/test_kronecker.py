"""The per-layer abstraction's building blocks against explicit formulas."""

from __future__ import annotations

import pytest
import torch

from layerwise.optim import kronecker


@pytest.mark.parametrize("accumulation", ["sum", "ema", "latest"])
def test_fused_gradient_statistics_equal_the_explicit_increments(accumulation):
    """S <- rule(S, G Gᵀ) and rule(S, GᵀG) by one in-place addmm per side equal the
    increments formed explicitly; a side above max_preconditioner_dim gets the diagonal."""
    generator = torch.Generator().manual_seed(0)
    config = kronecker.KroneckerConfig(
        transform=kronecker.InverseRoot(),
        accumulation=accumulation,
        decay=0.9,
        max_preconditioner_dim=6,
    )
    shape = (5, 7)  # left dense, right (7 > 6) diagonal
    fused = kronecker.init_state(config, shape, torch.zeros((), dtype=torch.float64))
    explicit = kronecker.init_state(config, shape, torch.zeros((), dtype=torch.float64))
    assert fused[kronecker.RIGHT_STATISTIC].ndim == 1
    for _ in range(3):
        grad = torch.randn(*shape, generator=generator, dtype=torch.float64)
        kronecker.accumulate_gradient_statistics(config, fused, grad)
        left = grad @ grad.T
        right = (grad * grad).sum(dim=0)
        previous = explicit[kronecker.LEFT_STATISTIC].clone(), explicit[kronecker.RIGHT_STATISTIC]
        kronecker.accumulate(config, explicit, left, right)
        if accumulation == "ema":  # the rule itself, written out
            torch.testing.assert_close(
                explicit[kronecker.LEFT_STATISTIC], 0.9 * previous[0] + 0.1 * left
            )
    for key in (kronecker.LEFT_STATISTIC, kronecker.RIGHT_STATISTIC):
        torch.testing.assert_close(fused[key], explicit[key], rtol=1e-13, atol=1e-13)
