"""The overlapped factor reduction (:mod:`layerwise.optim.factor_sync`), in one process: two
ranks' shares summed (what the ``all_reduce`` does) and folded, step by step, against the
every-step reduction :math:`S \\leftarrow \\beta S + \\alpha \\sum_r w_r \\Delta_r / W` written out
(float64); and the fold waiting for the handle, with a stand-in for the ``all_reduce``."""

from __future__ import annotations

import pytest
import torch

from layerwise.optim.factor_sync import FactorReduction, fold, write_share
from layerwise.optim.kfac_curvature import RowProducts
from layerwise.optim.kronecker import Side

#: (beta, alpha) of ``ema`` (decay 0.7), ``sum`` and ``latest``.
ACCUMULATIONS = {"ema": (0.7, 0.3), "sum": (1.0, 1.0), "latest": (0.0, 1.0)}
SIZE = 5


def _spd(size: int, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(size, size, generator=generator, dtype=torch.float64)
    return x @ x.T


def _step_data(
    step: int, generator: torch.Generator
) -> tuple[list[int], list[torch.Tensor], list[float]]:
    """Unequal contributions per rank and step (rank 1 sends nothing at step 2): the rows, each
    rank's batch and the scale of its increment ``scale * xᵀx``."""
    counts = [3 + step, 0 if step == 2 else 2 * step + 1]
    batches = [torch.randn(n, SIZE, generator=generator, dtype=torch.float64) for n in counts]
    return counts, batches, [1.0 / max(n, 1) for n in counts]


@pytest.mark.parametrize("name", list(ACCUMULATIONS))
@pytest.mark.parametrize("rows", [True, False], ids=["row_products", "tensors"])
def test_summed_shares_equal_the_every_step_reduction(name: str, rows: bool) -> None:
    beta, alpha = ACCUMULATIONS[name]
    generator = torch.Generator().manual_seed(0)
    start = _spd(SIZE, generator)
    if name == "latest":
        start[0, 0] = float("nan")  # `latest` ignores the old factor, even a non-finite one
    factor, reference = start.clone(), start.clone()
    for step in range(4):
        counts, batches, scales = _step_data(step, generator)
        increments = [scale * x.T @ x for scale, x in zip(scales, batches, strict=True)]
        total = float(sum(counts))
        mean = sum(n * inc for n, inc in zip(counts, increments, strict=True)) / total
        reference = beta * reference + alpha * mean if beta else alpha * mean
        summed = torch.zeros(SIZE, SIZE, dtype=torch.float64)
        for rank in range(2):
            increment: torch.Tensor | RowProducts | None = increments[rank]
            if rows:
                increment = RowProducts(batches[rank], Side.DENSE, scales[rank])
            if counts[rank] == 0:
                increment = None
            share = torch.full((SIZE, SIZE), float("nan"), dtype=torch.float64)  # overwritten
            write_share(share, increment, counts[rank] / total)
            summed += share
        fold(factor, summed, beta=beta, alpha=alpha)
    gap = float((factor - reference).abs().max() / reference.abs().max())
    assert gap < 1e-13, gap


class _AllReduceStandIn:
    """A work handle whose ``wait()`` completes the sum with the other rank's share."""

    def __init__(self, buffer: torch.Tensor, other: torch.Tensor) -> None:
        self.buffer, self.other, self.waits = buffer, other, 0

    def wait(self) -> None:
        self.waits += 1
        self.buffer.add_(self.other)


@pytest.mark.parametrize("diagonal", [False, True], ids=["dense", "diagonal"])
def test_folds_wait_for_the_handle_and_keep_their_order(diagonal: bool) -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, SIZE, generator=generator, dtype=torch.float64)
    kind = Side.DIAGONAL if diagonal else Side.DENSE
    shape = (SIZE,) if diagonal else (SIZE, SIZE)
    # Rank 0 wrote 1/4 of its row product into one flat buffer; rank 1's share is 3/4 of y.
    flat = torch.empty(SIZE * (1 if diagonal else SIZE) + 1, dtype=torch.float64)
    mine, scalar = flat[:-1].view(shape), flat[-1:].view(())
    write_share(mine, RowProducts(x, kind, 0.5), 0.25)
    write_share(scalar, torch.tensor(2.0, dtype=torch.float64), 1.0)
    y = torch.randn(shape, generator=generator, dtype=torch.float64)
    other = torch.cat([(0.75 * y).reshape(-1), torch.tensor([3.0], dtype=torch.float64)])
    work = _AllReduceStandIn(flat, other)
    reduction = FactorReduction({("layer", 1): mine, ("layer", 0): scalar}, [flat], [work])
    second_moment = 0.5 * (x.square().sum(0) if diagonal else x.T @ x)
    mean = 0.25 * second_moment + 0.75 * y

    factor = torch.ones(shape, dtype=torch.float64)
    reduction.fold_into(("layer", 1), factor, beta=0.9, alpha=0.1)
    assert torch.equal(factor, torch.ones(shape, dtype=torch.float64))  # not before the wait
    reduction.wait()
    reduction.wait()  # the second wait does nothing
    assert work.waits == 1
    assert torch.allclose(factor, 0.9 + 0.1 * mean, rtol=1e-14, atol=0)
    # Registered after the wait (a later param group of the step): folded at once.
    scale = torch.tensor(4.0, dtype=torch.float64)
    reduction.fold_into(("layer", 0), scale, beta=1.0, alpha=1.0)
    assert float(scale) == 4.0 + 2.0 + 3.0
