"""The deferred factor reduction (:mod:`layerwise.optim.factor_sync`), in one process: two ranks'
pending sums, folded step by step and summed at the end, against the every-step reduction
:math:`S \\leftarrow \\beta S + \\alpha \\sum_r w_r \\Delta_r / W` written out (float64)."""

from __future__ import annotations

import pytest
import torch

from layerwise.optim.factor_sync import Pending
from layerwise.optim.kfac_curvature import RowProducts
from layerwise.optim.kronecker import Side

#: (beta, alpha) of ``ema`` (decay 0.7), ``sum`` and ``latest``.
ACCUMULATIONS = {"ema": (0.7, 0.3), "sum": (1.0, 1.0), "latest": (0.0, 1.0)}


def _spd(size: int, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(size, size, generator=generator, dtype=torch.float64)
    return x @ x.T


@pytest.mark.parametrize("name", list(ACCUMULATIONS))
@pytest.mark.parametrize("rows", [True, False], ids=["row_products", "tensors"])
def test_pending_sums_equal_the_every_step_reduction(name: str, rows: bool) -> None:
    beta, alpha = ACCUMULATIONS[name]
    generator = torch.Generator().manual_seed(0)
    size, steps = 5, 4
    start = _spd(size, generator)
    reference = start.clone()
    pending = [Pending(torch.zeros(size, size, dtype=torch.float64)) for _ in range(2)]
    for step in range(steps):
        # Unequal contributions per rank and step; rank 1 sends nothing at step 2.
        counts = [3 + step, 0 if step == 2 else 2 * step + 1]
        batches = [torch.randn(n, size, generator=generator, dtype=torch.float64) for n in counts]
        scales = [1.0 / max(n, 1) for n in counts]
        increments = [scale * x.T @ x for scale, x in zip(scales, batches, strict=True)]
        total = float(sum(counts))
        mean = sum(n * inc for n, inc in zip(counts, increments, strict=True)) / total
        reference = beta * reference + alpha * mean if beta else alpha * mean
        for rank in range(2):
            share = counts[rank] / total
            increment: torch.Tensor | RowProducts | None = increments[rank]
            if rows:
                increment = RowProducts(batches[rank], Side.DENSE, scales[rank])
            if counts[rank] == 0:
                increment = None
            pending[rank].fold(increment, beta=beta, alpha=alpha * share)
    assert pending[0].decay == pending[1].decay == pytest.approx(beta**steps)
    deferred = pending[0].decay * start + pending[0].total + pending[1].total
    gap = float((deferred - reference).abs().max() / reference.abs().max())
    assert gap < 1e-13, gap
