r"""KFAC's factors under a process group: each statistics step's increments are all-reduced in
the background and folded into the factors the next time the factors are needed.

Every accumulation of the factors is linear, :math:`S \leftarrow \beta S + \alpha \bar\Delta`
(``ema``: :math:`\beta` and :math:`1 - \beta`; ``sum``: 1 and 1; ``latest``: 0 and 1), and the
increment of a statistics step is the weighted mean of the ranks' increments,

.. math::

    \bar\Delta = \sum_r \frac{w_r}{W} \Delta_r, \qquad W = \sum_r w_r

(``w_r``: the rows or samples rank ``r`` contributed; the weights are all-reduced first, three
numbers per layer). Each rank writes its share :math:`(w_r / W)\, \Delta_r` of every factor
into one flat buffer per dtype (a row product as one ``addmm``) and launches the buffer's
``all_reduce`` with ``async_op=True`` (:meth:`FactorReduction.launch`): the step returns while
the sum :math:`\bar\Delta` travels, overlapping the next forward and backward pass. The fold
:math:`S \leftarrow \beta S + \alpha \bar\Delta` waits on the *local* work handle
(``Work.wait()``, not a collective; :meth:`FactorReduction.wait`) the next time the factors are
needed:

- at the start of the next ``step()``, before its increments are folded, so that every factor
  takes its folds in the order of a single process;
- before a refresh in the same step;
- in ``state_dict()``, a copy and ``load_state_dict()``: a checkpoint holds fully folded
  factors, and since the wait is local, rank 0 alone may save (no rank waits on the others).

The arithmetic is that of reducing synchronously at every statistics step, bit for bit: the
same buffer, the same sum, the same fold, only later. Against one process on the global batch
the mean is associated differently (a few units in the last place). What it costs: one buffer
of a step's increments per rank, held until the wait; the factors travel whole at every
statistics step (not as their upper triangles: on CPU (gloo) the gather and scatter of a
513 x 513 triangle took about 6 ms, while all-reducing the whole matrix (1 MiB) took 1-3 ms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch import distributed as dist

from layerwise.optim.kfac_curvature import RowProducts, accumulate_row_products

#: A factor: ``(layer, side)``, side 0 the output-gradient factor ``B``, 1 the input factor ``A``.
Key = tuple[Any, int]


@dataclass(frozen=True)
class Share:
    """What a rank sends for one factor: its increment :math:`\\Delta_r` (``None``: it
    contributed nothing), its weight :math:`w_r / W`, and the factor's shape, dtype and device
    (the same on every rank)."""

    increment: Tensor | RowProducts | None
    weight: float
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device


def write_share(out: Tensor, increment: Tensor | RowProducts | None, weight: float) -> None:
    r"""``out`` :math:`\leftarrow w\, \Delta` (zeros for ``None``); a row product as one fused
    ``addmm`` with :math:`\beta = 0` (``out``'s old content is ignored)."""
    if increment is None or weight == 0.0:
        out.zero_()
    elif isinstance(increment, RowProducts):
        accumulate_row_products(out, increment, beta=0.0, alpha=weight)
    else:
        torch.mul(increment.to(out.dtype), weight, out=out)


def fold(factor: Tensor, mean: Tensor, *, beta: float, alpha: float) -> None:
    r""":math:`S \leftarrow \beta S + \alpha \bar\Delta` in place (:math:`\beta = 0`: the old
    value is ignored, not multiplied: it may be non-finite)."""
    mean = mean.to(factor.dtype)
    if beta == 0.0:
        torch.mul(mean, alpha, out=factor)
    elif beta == 1.0:
        factor.add_(mean, alpha=alpha)
    else:
        factor.mul_(beta).add_(mean, alpha=alpha)


@dataclass
class FactorReduction:
    """One statistics step's all-reduce (module docstring), in flight until :meth:`wait`.

    ``means``: each factor's view of the buffers, this rank's share until the wait and the
    mean :math:`\\bar\\Delta` after it; ``works``: the handles of the buffers' ``all_reduce``
    (anything with a ``wait()``)."""

    means: dict[Key, Tensor]
    buffers: list[Tensor]
    works: list[Any]
    done: bool = False
    #: The folds registered before the wait: ``(factor, key, beta, alpha)``, in order.
    _folds: list[tuple[Tensor, Key, float, float]] = field(default_factory=list)

    @classmethod
    def launch(cls, shares: dict[Key, Share], group: Any) -> FactorReduction:
        """Write this rank's shares into one flat buffer per dtype and device (in the order of
        ``shares``, which must be the same on every rank) and start their ``all_reduce``."""
        buckets: dict[tuple[torch.dtype, torch.device], list[Key]] = {}
        for key, share in shares.items():
            buckets.setdefault((share.dtype, share.device), []).append(key)
        means: dict[Key, Tensor] = {}
        buffers, works = [], []
        for (dtype, device), keys in buckets.items():
            sizes = [math.prod(shares[key].shape) for key in keys]
            flat = torch.empty(sum(sizes), dtype=dtype, device=device)
            for key, piece in zip(keys, torch.split(flat, sizes), strict=True):
                share = shares[key]
                means[key] = piece.view(share.shape)
                write_share(means[key], share.increment, share.weight)
            works.append(dist.all_reduce(flat, group=group, async_op=True))
            buffers.append(flat)
        return cls(means, buffers, works)

    def fold_into(self, key: Key, factor: Tensor, *, beta: float, alpha: float) -> None:
        r""":math:`S \leftarrow \beta S + \alpha \bar\Delta` for ``factor`` :math:`S` and the mean
        of ``key``: at the wait, or now if the wait is over."""
        if self.done:
            fold(factor, self.means[key], beta=beta, alpha=alpha)
        else:
            self._folds.append((factor, key, beta, alpha))

    def wait(self) -> None:
        """Wait on this rank's handles (local: no collective) and apply the registered folds,
        in the order they were registered."""
        if self.done:
            return
        for work in self.works:
            work.wait()
        self.done = True
        for factor, key, beta, alpha in self._folds:
            fold(factor, self.means[key], beta=beta, alpha=alpha)
        self._folds.clear()


__all__ = ["FactorReduction", "Key", "Share", "fold", "write_share"]
