r"""Data-parallel training (``DistributedDataParallel``): what the optimizers share across ranks.

Every optimizer takes ``process_group`` (a constructor argument, not a param-group knob and
not part of ``state_dict()``): ``"auto"`` (the default) is the default process group when
``torch.distributed`` is initialized with more than one rank, and no group otherwise; ``None``
switches it off; or a ``ProcessGroup``. It is resolved when the optimizer is constructed.

- Shampoo, SOAP and Muon see the gradients DDP has all-reduced, so every rank computes the
  same step without communication of their own.
- KFAC's factors come from each rank's local activations and output gradients, averaged
  across the ranks weighted by the rows (``A``) and samples (``B``) each contributed. Each
  statistics step launches their ``all_reduce`` with ``async_op=True`` (overlapping the next
  forward and backward pass) and the factors take it in when next needed: at the next step,
  before a refresh, in ``state_dict()``, by a local wait (:mod:`layerwise.optim.factor_sync`),
  so ``state_dict()`` is no collective. With equal local batch sizes the factors equal the
  single-process factors of the global batch.
- Misuse fails alike on every rank: a model that differs across ranks at construction
  (:func:`check_same_on_every_rank`), an optimizer constructed before ``init_process_group``
  at its first step (:meth:`Distributed.check_still_valid`).
- ``distributed="split"``: each block's refresh (inverse root, Cholesky, eigenbasis; Muon's
  Newton–Schulz) runs on one rank, chosen by :func:`assign_owners`, and its result is
  broadcast (:func:`broadcast_coalesced`), so every rank keeps the same state.
- ``distributed="shard"`` (Shampoo, SOAP, Muon: statistics from the gradient, which every
  rank has after DDP's all-reduce): each matrix parameter belongs to one rank for the
  optimizer's life (:func:`assign_owners` over all of them at once), which alone computes its
  block's step — statistics, refresh, moments, application — and keeps its state; the owners'
  directions are broadcast every step (the parameters' size), and every rank writes them.
  The per-step work and the Kronecker state divide by the world size, the arithmetic is the
  single process's. ``state_dict()`` then holds this rank's share (what DCP saves from every
  rank); ``consolidated_state_dict()`` gathers the whole state on one rank. KFAC, whose
  factors come from each rank's activations, is refused (use ``"split"``).
- FSDP2 (``torch.distributed.fsdp.fully_shard``: parameters and gradients are DTensors,
  sharded on dim 0): each sharded gradient is gathered whole (:func:`full_tensors`), the step
  is computed on the full matrix exactly as in one process (replicated, or with the refresh
  split as above), and each rank writes back only its own shard (:func:`local_part`).
  Preconditioning each shard as a block of its own (Distributed Shampoo's way) would save the
  gather but change the method: the statistics of a row block ``G_i`` are ``G_i G_iᵀ`` and
  ``G_iᵀ G_i``, so the left preconditioner becomes block-diagonal (cross-shard rows
  ignored) and the right one a different matrix per shard (Σ_i G_iᵀ G_i is what one process
  sees); Muon's orthogonalization of each shard is not that of the whole matrix either. The
  optimizer state then holds full matrices on every rank (like DDP), not shards.

This module holds the small functions; :mod:`layerwise.optim.statistics` and
:mod:`layerwise.optim.base` call them.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch import distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor

#: ``process_group="auto"``: the default group when one is initialized with several ranks.
AUTO_GROUP = "auto"

#: The values of ``distributed``: every rank refreshes every block (``"replicate"``); each
#: block's refresh runs on one rank and is broadcast (``"split"``); each block's whole step
#: runs on one rank, which alone keeps its state, and its direction is broadcast
#: (``"shard"``).
REPLICATE = "replicate"
SPLIT = "split"
SHARD = "shard"
MODES = (REPLICATE, SPLIT, SHARD)


def resolve_group(process_group: Any = AUTO_GROUP) -> Any:
    """The process group an optimizer uses (module docstring); ``None``: single process."""
    if isinstance(process_group, str):
        if process_group != AUTO_GROUP:
            raise ValueError(f"Invalid process_group: {process_group!r} ('auto', None or a group)")
        if not (dist.is_available() and dist.is_initialized()):
            return None
        return None if dist.get_world_size() <= 1 else dist.group.WORLD
    if process_group is None:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            f"process_group={process_group!r} was given but torch.distributed is not "
            "initialized: call torch.distributed.init_process_group first (or pass "
            "process_group=None for a single process)"
        )
    if not isinstance(process_group, dist.ProcessGroup):
        raise ValueError(
            f"Invalid process_group: a {type(process_group).__name__} ('auto', None or a "
            "torch.distributed ProcessGroup)"
        )
    if dist.get_world_size(process_group) <= 1:
        return None
    return process_group


@dataclass(frozen=True)
class Distributed:
    """An optimizer's process group and mode. A copy (``copy.deepcopy`` of the optimizer)
    shares the group: a group is a handle of the running job, not state."""

    group: Any = None
    mode: str = REPLICATE
    #: ``process_group="auto"`` found no initialized group: stepping once one with several
    #: ranks exists is refused (:meth:`check_still_valid`).
    auto_without_group: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Invalid distributed: {self.mode!r} (one of {MODES})")

    def __deepcopy__(self, memo: dict[int, Any]) -> Distributed:
        return self

    @property
    def active(self) -> bool:
        return self.group is not None

    @property
    def split(self) -> bool:
        return self.active and self.mode == SPLIT

    @property
    def shard(self) -> bool:
        return self.active and self.mode == SHARD

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group) if self.active else 0

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.group) if self.active else 1

    def check_still_valid(self, owner: str) -> None:
        """Refuse to step an optimizer built (``process_group="auto"``) before
        ``init_process_group``: it would run without its group, KFAC's factors rank-local and
        ``distributed="split"`` ignored, every rank alike."""
        if not self.auto_without_group or not (dist.is_available() and dist.is_initialized()):
            return
        if dist.get_world_size() > 1:
            raise RuntimeError(
                f"{owner} was constructed before torch.distributed.init_process_group (its "
                f"process_group='auto' found no group) and now steps in a job of "
                f"{dist.get_world_size()} ranks: construct it after init_process_group, or "
                "pass process_group=None to keep it single-process"
            )

    def global_rank(self, rank: int) -> int:
        """The global rank of ``rank`` in the group (what ``broadcast`` takes)."""
        if not self.active or self.group is dist.group.WORLD:
            return rank
        return dist.get_global_rank(self.group, rank)


def _buckets(tensors: Sequence[Tensor]) -> dict[tuple[torch.dtype, torch.device], list[int]]:
    buckets: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for index, tensor in enumerate(tensors):
        buckets.setdefault((tensor.dtype, tensor.device), []).append(index)
    return buckets


def all_reduce_coalesced(tensors: Sequence[Tensor], group: Any) -> None:
    """Sum ``tensors`` in place across ``group``: one ``all_reduce`` of a flat buffer per dtype
    and device. Every rank must pass tensors of the same shapes in the same order."""
    for indices in _buckets(tensors).values():
        flat = torch.cat([tensors[i].reshape(-1) for i in indices])
        dist.all_reduce(flat, group=group)
        offset = 0
        for i in indices:
            n = tensors[i].numel()
            tensors[i].copy_(flat[offset : offset + n].view_as(tensors[i]))
            offset += n


def broadcast_coalesced(tensors: Sequence[Tensor], src: int, group: Any) -> None:
    """Overwrite ``tensors`` on every rank with those of global rank ``src``: one ``broadcast``
    of a flat buffer per dtype and device (the same shapes and order on every rank). Bits are
    copied, so bfloat16 travels as bytes (gloo has no bfloat16)."""
    for indices in _buckets(tensors).values():
        flat = torch.cat([tensors[i].reshape(-1) for i in indices])
        wire = flat.view(torch.uint8) if flat.dtype == torch.bfloat16 else flat
        dist.broadcast(wire, src=src, group=group)
        offset = 0
        for i in indices:
            n = tensors[i].numel()
            tensors[i].copy_(flat[offset : offset + n].view_as(tensors[i]))
            offset += n


def full_tensors(params: Sequence[Tensor]) -> dict[Tensor, Tensor]:
    """The full gradient of each sharded (DTensor) parameter among ``params`` (an all-gather
    each; every rank must pass the same parameters in the same order)."""
    return {
        p: p.grad.full_tensor()
        for p in params
        if isinstance(p, DTensor) and isinstance(p.grad, DTensor)
    }


def local_part(param: Tensor, full: Tensor) -> tuple[Tensor, Tensor]:
    """``(target, piece)``: for a DTensor ``param``, its local shard (written in place) and this
    rank's part of the full-shape ``full`` (sliced locally, no communication: ``full`` is the
    same on every rank); otherwise ``(param, full)``."""
    if not isinstance(param, DTensor):
        return param, full
    local = distribute_tensor(
        full, param.device_mesh, param.placements, src_data_rank=None
    ).to_local()
    return param.to_local(), local


def check_same_on_every_rank(description: Sequence[str], group: Any, device: Any) -> None:
    """Raise the same ``ValueError`` on every rank of ``group`` unless ``description`` (one line
    per parameter or block, in order) is the same on all of them: one ``all_gather`` of a
    digest; only when they differ, a second one of the descriptions, to name the first
    difference."""
    text = "\n".join(description).encode()
    digest = int.from_bytes(hashlib.sha256(text).digest()[:7], "little")
    mine = torch.tensor([len(description), digest], dtype=torch.int64, device=device)
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, mine, group=group)
    if all(torch.equal(other, gathered[0]) for other in gathered):
        return
    everyone: list[Any] = [None] * len(gathered)
    dist.all_gather_object(everyone, list(description), group=group)
    first = everyone[0]
    for rank, other in enumerate(everyone):
        if other == first:
            continue
        index = next(
            (i for i, (a, b) in enumerate(zip(first, other, strict=False)) if a != b),
            min(len(first), len(other)),
        )
        raise ValueError(
            f"the model differs across ranks: rank 0 has {len(first)} parameter tensors and "
            f"blocks, rank {rank} {len(other)}; the first difference, entry {index}: rank 0 "
            f"{_entry(first, index)!r}, rank {rank} {_entry(other, index)!r}. Every rank must "
            "build the same model and optimizer"
        )


def _entry(lines: Sequence[str], index: int) -> str:
    return lines[index] if index < len(lines) else "nothing"


def refresh_cost(shape: Sequence[int]) -> float:
    """The cost model of a block's refresh: Σ d³ over its sides (eigh, Cholesky, Newton–Schulz
    products all grow with the cube of a side)."""
    return float(sum(int(d) ** 3 for d in shape))


def assign_owners(costs: Sequence[float], world_size: int) -> list[int]:
    """Each item's rank: greedy longest-processing-time on ``costs`` (the largest item goes to
    the least-loaded rank; ties to the lower rank and the earlier item). Deterministic, so every
    rank computes the same assignment."""
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    loads = [(0.0, rank) for rank in range(world_size)]
    heapq.heapify(loads)
    owners = [0] * len(costs)
    for i in order:
        load, rank = heapq.heappop(loads)
        owners[i] = rank
        heapq.heappush(loads, (load + costs[i], rank))
    return owners


__all__ = [
    "AUTO_GROUP",
    "Distributed",
    "all_reduce_coalesced",
    "assign_owners",
    "broadcast_coalesced",
    "check_same_on_every_rank",
    "full_tensors",
    "local_part",
    "refresh_cost",
    "resolve_group",
]
