r"""KFAC's factors under a process group: each rank folds its own share, the sum is taken when
the factors are used.

Every accumulation of the factors is linear, :math:`S \leftarrow \beta S + \alpha \bar\Delta`
(``ema``: :math:`\beta` and :math:`1 - \beta`; ``sum``: 1 and 1; ``latest``: 0 and 1), and the
increment of a statistics step is the weighted mean of the ranks' increments,
:math:`\bar\Delta = \sum_r w_r \Delta_r / W` with :math:`W = \sum_r w_r` (``w_r``: the rows or
samples rank ``r`` contributed). After ``k`` such steps from a factor :math:`S_0` that every rank
holds,

.. math::

    S_k = \rho\, S_0 + \sum_r P_r, \qquad \rho = \prod_j \beta_j, \qquad
    P_r \leftarrow \beta P_r + \alpha \tfrac{w_r}{W} \Delta_r \quad (P_r = 0 \text{ at } S_0),

so each rank keeps its *pending* sum :math:`P_r` (one buffer per factor, accumulated with the
same fused ``addmm`` as a single process) and the ranks exchange :math:`P_r` only when the factors
are read: before a refresh and in ``state_dict()`` (:meth:`DeferredFactors.flush`, one
``all_reduce`` of all of them per dtype). Per statistics step only the weights :math:`w_r`
travel (a few numbers per layer). In exact arithmetic this is the every-step reduction; in
floating point the sums are associated differently (per rank, then across ranks;
:math:`\rho S_0` once instead of a product per step), a relative difference of a few units in
the last place.

The factors are sent whole, not as their upper triangles (half the bytes): on CPU (gloo) the
gather and scatter of a 513 x 513 triangle took about 6 ms, while all-reducing the whole
matrix (1 MiB) took 1-3 ms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from layerwise.optim.distributed import all_reduce_coalesced
from layerwise.optim.kfac_curvature import RowProducts, accumulate_row_products


@dataclass
class Pending:
    """One factor's pending sum :math:`P_r` and the product :math:`\\rho` of the decays since
    the last flush."""

    total: Tensor
    decay: float = 1.0

    def fold(self, increment: Tensor | RowProducts | None, *, beta: float, alpha: float) -> None:
        r""":math:`P \leftarrow \beta P + \alpha\,` ``increment`` (``None``: this rank
        contributed nothing, :math:`P \leftarrow \beta P`); :math:`\rho \leftarrow \beta\rho`."""
        if isinstance(increment, RowProducts):
            accumulate_row_products(self.total, increment, beta=beta, alpha=alpha)
        elif beta == 0.0:  # the old value is ignored, not multiplied
            if increment is None:
                self.total.zero_()
            else:
                self.total.copy_(increment).mul_(alpha)
        else:
            self.total.mul_(beta)
            if increment is not None:
                self.total.add_(increment.to(self.total.dtype), alpha=alpha)
        self.decay *= beta


class DeferredFactors:
    """The pending sums of every factor of every layer on this rank (module docstring), keyed
    by ``(layer, side)``. Every rank must fold (and flush) the same factors in the same order:
    a factor is folded on every rank whenever its global weight is positive, even where this
    rank's share is zero."""

    def __init__(self) -> None:
        self.pending: dict[tuple[Any, int], Pending] = {}

    def fold(
        self,
        key: tuple[Any, int],
        like: Tensor,
        increment: Tensor | RowProducts | None,
        *,
        beta: float,
        alpha: float,
    ) -> None:
        """Fold ``alpha x increment`` into the pending sum of ``key`` (zeros like ``like`` at
        first), decaying what is pending by ``beta``."""
        pending = self.pending.get(key)
        if pending is None:
            pending = self.pending[key] = Pending(torch.zeros_like(like))
        pending.fold(increment, beta=beta, alpha=alpha)

    def flush(
        self,
        keys: Iterable[tuple[Any, int]],
        factor_of: Callable[[tuple[Any, int]], Tensor],
        group: Any,
    ) -> None:
        r"""For each pending key among ``keys`` (in their order, the same on every rank):
        :math:`S \leftarrow \rho S + \sum_r P_r` with ``S = factor_of(key)`` in place, as one
        ``all_reduce`` per dtype of the pending sums; the keys are then no longer pending."""
        flushed = [key for key in keys if key in self.pending]
        if not flushed:
            return
        totals = [self.pending[key].total for key in flushed]
        all_reduce_coalesced(totals, group)
        for key, total in zip(flushed, totals, strict=True):
            pending = self.pending.pop(key)
            factor = factor_of(key)
            if pending.decay == 0.0:  # `latest`: the old factor is ignored (it may be non-finite)
                factor.copy_(total)
            else:
                factor.mul_(pending.decay).add_(total)

    def tensors(self) -> list[Tensor]:
        """The pending buffers (what this rank holds beyond the optimizer state)."""
        return [pending.total for pending in self.pending.values()]

    def clear(self) -> None:
        self.pending.clear()


__all__ = ["DeferredFactors", "Pending"]
