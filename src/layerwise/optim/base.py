r"""The ``torch.optim`` shell of every layer-wise optimizer, and the generic :class:`Layerwise`.

The shell owns the ``torch.optim`` contract — param groups with every knob per group,
``step(closure)``, LR schedulers, ``state_dict()`` / ``load_state_dict()`` that resume bit for
bit — and runs one param group's :class:`~layerwise.optim.parts.Parts` on its blocks:

1. the first moment (:class:`~layerwise.optim.policies.FirstMoment`);
2. every ``statistics_every`` steps the statistics part folds in its increments; every
   ``refresh_every`` steps (steps 1, k + 1, 2k + 1, ...) the transform refreshes its
   preconditioner under the failure policy;
3. the transform's application, then grafting or the shape scale;
4. heavy-ball momentum; clipping across the group's blocks;
5. decoupled weight decay and the step :math:`W \leftarrow (1 - \eta\lambda) W - \eta\nu D`.

Parameters that are not matrices (0-D, 1-D, and those a statistics part does not cover) take
the Adam path (:class:`~layerwise.optim.policies.AdamPath`). Tensors with more than two
dimensions are viewed as ``(shape[0], prod(shape[1:]))`` matrices.

A named optimizer is a subclass that only chooses: its constructor's knobs (the group
defaults), how the exact mode sets them (:attr:`LayerwiseOptimizer.MODE`), and
:meth:`~LayerwiseOptimizer.compose`, the function from a group's knobs to its parts. The
composition is built and checked once per group, at construction and in
:meth:`add_param_group`, and cached; it is rebuilt only when a knob of the group changes
(the learning rate is read live each step).

Robustness. Before anything changes, all gradients of the step are checked together (one
synchronization): if any is non-finite the whole step is skipped with a ``RuntimeWarning`` and
``skipped_steps`` is incremented in each block's state. The final directions are checked
again before they are written, so no NaN reaches a parameter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from torch import distributed as dist
from torch.distributed.tensor import DTensor

from layerwise.optim import matrix
from layerwise.optim.distributed import (
    AUTO_GROUP,
    REPLICATE,
    SHARD,
    Distributed,
    all_reduce_coalesced,
    assign_owners,
    broadcast_coalesced,
    check_same_on_every_rank,
    full_tensors,
    local_part,
    refresh_cost,
    resolve_group,
)
from layerwise.optim.kronecker import (
    AUTO,
    CONSECUTIVE_FAILURES,
    EXP_AVG,
    FAILED_REFRESHES,
    SKIPPED_STEPS,
    STATISTIC_KEYS,
    STATISTICS_UPDATES,
    STEP,
    init_statistics,
    statistics_dtype,
)
from layerwise.optim.matrix import DecompositionError, Workspace
from layerwise.optim.parts import Parts
from layerwise.optim.policies import AdamPath, Direction, UpdateScale
from layerwise.optim.statistics import Block, GradientSource, LayerFactors, LayerFactorSource

#: ``torch.profiler`` ranges around the three phases of a Kronecker block's step (statistics
#: and their accumulation, the preconditioner refresh, the application with post-processing).
#: They are opened only while a profiler runs, so they cost nothing otherwise.
PROFILE_STATISTICS = "layerwise.statistics"
PROFILE_REFRESH = "layerwise.refresh"
PROFILE_APPLY = "layerwise.apply"

#: Group entries read live at every step, never part of the cached composition.
LIVE_KNOBS = ("params", "lr")

#: State keys renamed since earlier versions (old -> new); checkpoints are migrated on load.
RENAMED_STATE_KEYS = {
    "left_scalar_statistic": "left_statistic",
    "right_scalar_statistic": "right_statistic",
}


class ModeDefault(NamedTuple):
    """How a knob left ``unset`` (``None``, or e.g. ``"auto"`` where ``None`` means something)
    is set by the mode: its value in the amortized and the exact mode (a value, or a function
    of the group); with ``required`` an explicitly given value that contradicts the exact one is
    refused, so ``exact=True`` always means what it says."""

    amortized: Any
    exact: Any
    required: bool = True
    unset: Any = None


#: The mode default of every precision knob (:func:`~layerwise.optim.kronecker.precision`):
#: ``"auto"`` (bf16 application for float32 parameters) in the amortized mode, full precision
#: in the exact mode, which refuses a lower one.
PRECISION_MODE = ModeDefault(AUTO, None, unset=AUTO)


class Update(NamedTuple):
    """One block's part of a step: its param group, the block and its direction."""

    group: dict[str, Any]
    block: Block
    direction: Direction


@dataclass(frozen=True)
class _Prepared:
    """A Kronecker block's step up to its application."""

    state: dict[str, Any]
    grad: Tensor
    first_moment: Tensor
    step: int
    #: Whether the transform refreshes this block's preconditioner this step.
    refresh: bool = False


def state_bytes(optimizers: Iterable[torch.optim.Optimizer]) -> int:
    """Bytes of every tensor held in the optimizers' state (each storage counted once)."""
    seen: set[tuple[str, int]] = set()
    total = 0

    def visit(value: Any) -> None:
        nonlocal total
        if isinstance(value, DTensor):  # a sharded state (torch.optim under FSDP2): this shard
            value = value.to_local()
        if isinstance(value, Tensor):
            storage = value.untyped_storage()
            key = (str(value.device), storage.data_ptr())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, list | tuple):
            for item in value:
                visit(item)

    for optimizer in optimizers:
        visit(list(optimizer.state.values()))
        source = getattr(optimizer, "_source", None)
        if isinstance(source, GradientSource):  # KFAC's factor all-reduce in flight
            visit(source.in_flight_tensors())
    return total


def knobs(arguments: dict[str, Any]) -> dict[str, Any]:
    """A named optimizer's constructor arguments (its ``locals()``) as group defaults: plain
    data (enum members as their strings, sequences as tuples), so that checkpoints load with
    ``torch.load(..., weights_only=True)``; the parts rebuild the enums when composed."""
    skipped = ("self", "params", "model", "__class__", "process_group", "distributed")
    return {k: _plain(v) for k, v in arguments.items() if k not in skipped}


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    return value


def adam_path(group: dict[str, Any]) -> AdamPath:
    """The Adam path of a group from the knobs every named optimizer shares (``betas``,
    ``eps``, ``adam_lr_ratio``)."""
    return AdamPath(betas=group["betas"], eps=group["eps"], lr_ratio=group["adam_lr_ratio"])


def scalar(value: float | Tensor) -> float:
    """A learning rate given as a number or a one-element tensor, as a float (the step's
    arithmetic is the same for both; a tensor of several elements is refused)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"Invalid lr: a tensor of shape {tuple(value.shape)} (one element)")
        return float(value)
    return float(value)


def check_hyperparameters(group: dict[str, Any]) -> None:
    """Refuse impossible values of the knobs every optimizer shares, naming the knob (the
    torch.optim habit); the parts check the rest when they are composed."""
    rules: dict[str, Callable[[Any], bool]] = {
        "lr": lambda v: math.isfinite(scalar(v)) and scalar(v) >= 0,
        "adam_lr_ratio": lambda v: v >= 0,
        "eps": lambda v: v >= 0,
        "weight_decay": lambda v: v >= 0,
        "damping": lambda v: v >= 0,
        "momentum": lambda v: 0 <= v < 1,
        "refresh_every": lambda v: isinstance(v, int) and v >= 1,
        "statistics_every": lambda v: isinstance(v, int) and v >= 1,
    }
    for name, value in group.items():
        if name == "betas":
            if not (len(value) == 2 and all(0.0 <= b < 1.0 for b in value)):
                raise ValueError(f"Invalid betas: {value!r} (each must be in [0, 1))")
        elif name in rules and not rules[name](value):
            raise ValueError(f"Invalid {name}: {value!r}")


class LayerwiseOptimizer(torch.optim.Optimizer):
    """The torch.optim shell around :class:`~layerwise.optim.parts.Parts` (module docstring).

    ``model``: needed when the statistics are layer factors captured by hooks (KFAC); a
    ``DistributedDataParallel`` wrapper or its ``.module``.
    ``process_group``: ``"auto"`` (the default process group when ``torch.distributed`` is
    initialized with several ranks), ``None`` (single process) or a group; ``distributed``:
    ``"replicate"``, ``"split"`` or ``"shard"`` (:mod:`layerwise.optim.distributed`). Neither
    is a param-group knob nor part of ``state_dict()``.
    """

    #: Knobs set by the mode when left as ``None`` (see :class:`ModeDefault`).
    MODE: ClassVar[dict[str, ModeDefault]] = {}
    #: Group knobs renamed since earlier versions (old -> new); checkpoints are migrated.
    RENAMED_KNOBS: ClassVar[dict[str, str]] = {}
    #: Knobs whose default changed since earlier versions wrote checkpoints without them:
    #: knob -> (new default, old default). A checkpoint lacking the knob continues with the
    #: old default unless the optimizer was constructed with another value.
    CHANGED_DEFAULTS: ClassVar[dict[str, tuple[Any, Any]]] = {}

    def __init__(
        self,
        params: Iterable[Any],
        defaults: dict[str, Any],
        *,
        model: nn.Module | None = None,
        skip_layers: Sequence[str | type] = (),
        process_group: Any = AUTO_GROUP,
        distributed: str = REPLICATE,
    ) -> None:
        group = resolve_group(process_group)
        initialized = dist.is_available() and dist.is_initialized()
        auto_without_group = isinstance(process_group, str) and not initialized
        self._distributed = Distributed(group, distributed, auto_without_group)
        self._parts_cache: dict[int, tuple[dict[str, Any], Parts]] = {}
        # The optimizer's own knobs (torch.optim adds entries of its own to ``defaults``).
        self._knobs = tuple(defaults)
        self._source: GradientSource = GradientSource()
        #: Scratch tensors of each param group's batched application, kept between steps.
        self._workspaces: dict[int, Workspace] = {}
        #: During a step, the full gradients of sharded (FSDP2, DTensor) parameters.
        self._full_grads: dict[Tensor, Tensor] = {}
        #: Per param-group index, the factor by which the last step's Kronecker directions
        #: were scaled by clipping (groups without clipping are absent).
        self.last_update_scales: dict[int, float] = {}
        #: ``distributed="shard"``: the parameters it was computed for (ids) and their owners.
        self._owner_cache: tuple[tuple[int, ...], dict[Tensor, int]] | None = None
        super().__init__(params, defaults)
        factors = [
            statistics
            for statistics in (self.parts(g).statistics for g in self.param_groups)
            if isinstance(statistics, LayerFactors)
        ]
        if factors:
            if model is None:
                raise ValueError("layer-factor statistics need the model (model=...)")
            if distributed == SHARD:
                raise ValueError(
                    "distributed='shard' needs statistics from the gradient, which DDP makes "
                    "the same on every rank; layer factors (KFAC) come from each rank's own "
                    "activations: use distributed='split'"
                )
            self._source = LayerFactorSource(
                model,
                factors[0],
                parts_of=self.parts,
                state_of=self._state_of,
                skip_layers=skip_layers,
                distributed=self._distributed,
            )
        self._source.index(self.param_groups)
        if self._distributed.active:
            device = next((p.device for g in self.param_groups for p in g["params"]), None)
            check_same_on_every_rank(self._signature(), self._distributed.group, device)

    def _signature(self) -> list[str]:
        """One line per parameter (group, shape, dtype) and per KFAC layer (its block): what
        must agree on every rank, checked once at construction under a process group."""
        lines = [
            f"param group {index}, parameter {position}: {tuple(p.shape)} {p.dtype}"
            for index, group in enumerate(self.param_groups)
            for position, p in enumerate(group["params"])
        ]
        if isinstance(self._source, LayerFactorSource):
            source = self._source
            lines += [
                f"KFAC layer {index} ({type(layer).__name__}): block {source.block_shape(layer)}"
                for index, layer in enumerate(source.layers)
            ]
        return lines

    @staticmethod
    def compose(group: dict[str, Any]) -> Parts:
        """The parts of a param group from its knobs (what a named optimizer chooses)."""
        raise NotImplementedError

    def __getstate__(self) -> dict[str, Any]:
        # torch.optim keeps only defaults, state and groups: a copy also needs its statistics
        # source (KFAC's hooks, re-registered on the copied model); caches start empty. KFAC's
        # factor all-reduce in flight is folded first (a local wait), so the copy's are complete.
        self._source.synchronize()
        state = super().__getstate__()
        state.update(
            _knobs=self._knobs,
            _source=self._source,
            _distributed=self._distributed,
            _parts_cache={},
            _workspaces={},
            _full_grads={},
            _owner_cache=None,
            last_update_scales=dict(self.last_update_scales),
        )
        return state

    def _state_of(self, param: nn.Parameter) -> dict[str, Any] | None:
        # A method, not a closure: a deep copy of the optimizer then reads its own state.
        return self.state.get(param)

    # -- param groups and their composition ------------------------------------------------
    def parts(self, group: dict[str, Any]) -> Parts:
        """The cached composition of ``group``, rebuilt (and checked) when a knob changed."""
        knobs = {k: v for k, v in group.items() if k not in LIVE_KNOBS}
        cached = self._parts_cache.get(id(group))
        if cached is not None and cached[0] == knobs:
            return cached[1]
        check_hyperparameters(group)
        parts = self.compose(group)
        if group.get("preconditioned", True) is False:  # the routing knob every group may set
            parts = dataclasses.replace(parts, preconditioned=False)
        self._parts_cache[id(group)] = (knobs, parts)
        return parts

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As ``torch.optim.Optimizer.add_param_group``; the group's mode is resolved and its
        composition checked at once (a bad knob leaves the optimizer unchanged)."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._resolve_mode(group)
            self.parts(group)
            if hasattr(self, "_source"):  # not during torch.optim.Optimizer.__init__
                self._source.index(self.param_groups)
        except (ValueError, TypeError):
            self.param_groups.pop()
            raise

    def _resolve_mode(self, group: dict[str, Any]) -> None:
        exact = bool(group.get("exact", False))
        for knob, default in self.MODE.items():
            value = group.get(knob, default.unset)
            wanted = default.exact if exact else default.amortized
            if callable(wanted):
                wanted = wanted(group)
            given = value != default.unset
            if exact and default.required and given and value != wanted:
                raise ValueError(f"exact=True requires {knob}={wanted!r}; got {knob}={value!r}")
            if not given:
                group[knob] = wanted

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """As ``torch.optim.Optimizer.state_dict``. Under a process group KFAC first waits for
        its factor all-reduce in flight and folds it (:mod:`layerwise.optim.factor_sync`), so
        the checkpoint holds the global factors; the wait is local, not a collective: rank 0
        alone may call it (``if rank == 0: torch.save(...)``), or every rank (DCP).

        With ``distributed="shard"`` it is this rank's share: the state of the blocks it owns
        and of the Adam path (what DCP saves from every rank); for one file that holds all of
        it, every rank calls :meth:`consolidated_state_dict`."""
        self._source.synchronize()
        state = super().state_dict()
        state.update(self._source.state_dict())
        return state

    def consolidated_state_dict(self, to: int = 0) -> dict[str, Any] | None:
        """The whole state, every block's gathered from its owner, on rank ``to`` of the group
        (``None`` on the others): with ``distributed="shard"`` a collective that every rank
        calls (``torch.distributed.gather_object``; the gathered tensors arrive on the CPU).
        It loads in one process, or under any mode, where each rank keeps what it owns.
        Otherwise the same as :meth:`state_dict`."""
        state = self.state_dict()
        spread = self._distributed
        if not spread.shard:
            return state
        owned = self._owned_indices(spread.rank)
        mine = {
            index: {
                key: value.cpu() if isinstance(value, Tensor) else value
                for key, value in entry.items()
            }
            for index, entry in state["state"].items()
            if index in owned
        }
        gathered: list[Any] | None = [None] * spread.world_size if spread.rank == to else None
        dist.gather_object(mine, gathered, dst=spread.global_rank(to), group=spread.group)
        if gathered is None:
            return None
        for rank, share in enumerate(gathered):
            if rank != spread.rank:
                state["state"].update(share)
        state["state"] = dict(sorted(state["state"].items()))
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As ``torch.optim.Optimizer.load_state_dict``. Checkpoints of earlier versions keep
        loading: knobs added since take their defaults, renamed knobs and state keys are
        migrated, enum values are stored as plain strings."""
        self._source.synchronize()  # nothing in flight folds into the loaded factors afterwards
        state_dict = dict(state_dict)
        extra = {k: state_dict.pop(k) for k in list(state_dict) if k not in _TORCH_ENTRIES}
        super().load_state_dict(state_dict)
        self._restore_dtypes(state_dict)
        for group in self.param_groups:
            for old, new in self.RENAMED_KNOBS.items():
                if old in group:
                    group.setdefault(new, group.pop(old))
            for key in self._knobs:
                if key not in group:
                    value = self.defaults[key]
                    new, old = self.CHANGED_DEFAULTS.get(key, (object(), None))
                    group[key] = old if value == new else value
            for key, value in group.items():
                if key != "params":
                    group[key] = _plain(value)
            self._resolve_mode(group)
        for state in self.state.values():
            for old, new in RENAMED_STATE_KEYS.items():
                if old in state:
                    state[new] = state.pop(old)
        self._parts_cache.clear()
        for group in self.param_groups:
            self.parts(group)
        self._source.index(self.param_groups)
        self._source.load_state_dict(extra)
        if self._distributed.shard:  # a consolidated checkpoint: each rank keeps its own
            for param, owner in self._owners().items():
                if owner != self._distributed.rank:
                    self.state.pop(param, None)

    def _restore_dtypes(self, state_dict: dict[str, Any]) -> None:
        """``torch.optim`` casts every floating state tensor to its parameter's dtype on load;
        ours keep the dtype they were saved in (float32 statistics of bf16 parameters, bf16
        preconditioners of float32 ones)."""
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, param in zip(saved_ids, params, strict=True):
            saved = state_dict["state"].get(saved_id)
            state = self.state.get(param)
            if not saved or not state:
                continue
            for key, value in saved.items():
                loaded = state.get(key)
                if (
                    isinstance(value, Tensor)
                    and isinstance(loaded, Tensor)
                    and loaded.dtype != value.dtype
                ):
                    state[key] = loaded.to(value.dtype)

    # -- the step --------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        self._distributed.check_still_valid(type(self).__name__)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        try:
            # KFAC's factor all-reduce of the last step (in flight during the forward and
            # backward pass) is folded before this step's increments.
            self._source.synchronize()
            self._step()
        finally:
            self._full_grads = {}
            self._source.step_done()
        return loss

    def _grad(self, param: Tensor) -> Tensor:
        """The parameter's gradient; the full matrix for a sharded (DTensor) parameter."""
        return self._full_grads.get(param, param.grad)

    def _blocks(self, group: dict[str, Any], parts: Parts) -> list[Block]:
        if parts.preconditioned:
            return self._source.blocks(group)
        return [
            Block((p,), kronecker=False)
            for p in group["params"]
            if p.grad is not None and p.numel() > 0
        ]

    def _step(self) -> None:
        composed = [(g, self.parts(g)) for g in self.param_groups]
        work = [(g, parts, self._blocks(g, parts)) for g, parts in composed]
        params = [p for _, _, blocks in work for b in blocks for p in b.params]
        # FSDP2: each sharded gradient is gathered whole (the preconditioners need the full
        # matrix; docs/composition.md), and each rank writes back its own shard of the step.
        self._full_grads = full_tensors(params)
        grads = [self._grad(p) for p in params]
        if not grads:
            return
        if not matrix.all_finite(grads):
            self._skip(work, "non-finite gradient")
            return
        updates: list[Update] = []
        if self._distributed.shard:
            updates = self._sharded_directions(work)
        else:
            for group, parts, blocks in work:
                updates += self._directions(group, parts, blocks)
        scales = self._clip_scales(work, updates)
        checked = [u.direction.tensor for u in updates]
        checked += [u.direction.factor for u in updates if isinstance(u.direction.factor, Tensor)]
        if not matrix.all_finite(checked):
            self._skip(work, "non-finite update")
            return
        # Each parameter takes its own group's learning rate and weight decay (a folded bias
        # may sit in another group than its weight).
        group_of = {p: (g, parts) for g, parts, _ in work for p in g["params"]}
        for (_, block, (tensor, factor)), scale in zip(updates, scales, strict=True):
            for param, piece in zip(block.params, block.split(tensor), strict=True):
                group, parts = group_of[param]
                lr = scalar(group["lr"])
                if not block.kronecker:
                    lr *= parts.adam.lr_ratio
                target, piece = local_part(param, piece)
                if parts.weight_decay:
                    target.mul_(1.0 - lr * parts.weight_decay)
                if isinstance(factor, Tensor):
                    if factor.dim():
                        factor = local_part(param, factor)[1]
                    target.addcmul_(piece, factor, value=-lr * scale)
                else:
                    target.add_(piece, alpha=-lr * scale * factor)

    def _directions(self, group: dict[str, Any], parts: Parts, blocks: list[Block]) -> list[Update]:
        """The blocks' directions: every block prepared (first moment, statistics), the
        refreshes of the step (:meth:`_refresh`), then the application. A transform that
        batches (Newton–Schulz) applies all of the group's blocks in one call; the others
        block by block, so that only one block's intermediate tensors are alive at a time."""
        transform = parts.transform
        workspace = self._workspaces.setdefault(id(group), Workspace())
        prepared_blocks = [self._prepare(parts, block) for block in blocks]
        pending = [p for p in prepared_blocks if isinstance(p, _Prepared)]
        # The factors are read now: this step's all-reduce of KFAC's increments folded in.
        if any(_refreshes(p) for p in prepared_blocks):
            self._source.synchronize()
        self._refresh(parts, [p for p in pending if p.refresh])
        if not transform.batches:
            extra = {"workspace": workspace} if transform.uses_workspace else {}
            updates = []
            for block, prepared in zip(blocks, prepared_blocks, strict=True):
                if isinstance(prepared, _Prepared):
                    with _phase(PROFILE_APPLY):
                        applied = transform.apply(
                            prepared.state,
                            prepared.first_moment,
                            grad=prepared.grad,
                            step=prepared.step,
                            **extra,
                        )
                    prepared = self._finish(parts, prepared, applied)
                updates.append(Update(group, block, prepared))
            return updates
        applied_blocks: Iterable[Tensor] = ()
        if pending:
            with _phase(PROFILE_APPLY):
                applied_blocks = self._apply_batched(transform, pending, workspace)
        applied = iter(applied_blocks)
        return [
            Update(
                group,
                block,
                self._finish(parts, p, next(applied)) if isinstance(p, _Prepared) else p,
            )
            for block, p in zip(blocks, prepared_blocks, strict=True)
        ]

    # -- distributed="shard" ---------------------------------------------------------------
    def _owners(self) -> dict[Tensor, int]:
        """Each Kronecker-path parameter's rank under ``distributed="shard"``:
        :func:`assign_owners` on the cube of its matrix's sides, over every matrix parameter
        of the preconditioned groups in order. Fixed while the groups are, and the same on
        every rank whichever parameters a step has gradients for."""
        params = [
            p
            for group in self.param_groups
            if self.parts(group).preconditioned
            for p in group["params"]
            if GradientSource.is_matrix(p)
        ]
        ids = tuple(map(id, params))
        if self._owner_cache is None or self._owner_cache[0] != ids:
            shapes = [(p.shape[0], p.numel() // p.shape[0]) for p in params]
            ranks = assign_owners([refresh_cost(s) for s in shapes], self._distributed.world_size)
            self._owner_cache = (ids, dict(zip(params, ranks, strict=True)))
        return self._owner_cache[1]

    def _owned_indices(self, rank: int) -> set[int]:
        """The ``state_dict()`` indices of the parameters ``rank`` owns."""
        owners = self._owners()
        params = [p for group in self.param_groups for p in group["params"]]
        return {index for index, p in enumerate(params) if owners.get(p) == rank}

    def _holder(self, owners: dict[Tensor, int] | None = None) -> Callable[[Block], bool]:
        """Whether this rank keeps a block's state: always, but under ``"shard"``, where a
        Kronecker block's state lives on its owner alone (``owners``: :meth:`_owners`)."""
        if not self._distributed.shard:
            return lambda block: True
        owners, rank = owners or self._owners(), self._distributed.rank
        return lambda block: not block.kronecker or owners[block.key] == rank

    def _sharded_directions(
        self, work: list[tuple[dict[str, Any], Parts, list[Block]]]
    ) -> list[Update]:
        """``distributed="shard"``: this rank computes the directions of the Kronecker blocks
        it owns and of every Adam-path block (:meth:`_directions`); then each owner's
        directions are broadcast, materialized (``factor * tensor``) in the statistics dtype
        (one flat buffer per owner and dtype), and every rank applies the same bits. A failure
        on one rank is shared first (one small ``all_reduce``), so that every rank raises."""
        spread = self._distributed
        owners = self._owners()
        holds = self._holder(owners)
        mine = [(g, parts, list(filter(holds, blocks))) for g, parts, blocks in work]
        computed: dict[Tensor, Direction] = {}
        failure: Exception | None = None
        try:
            for group, parts, blocks in mine:
                for update in self._directions(group, parts, blocks):
                    computed[update.block.key] = update.direction
        except Exception as error:  # re-raised below, once the other ranks know of it
            failure = error
        device = next(self._grad(b.key) for _, _, blocks in work for b in blocks).device
        codes = torch.zeros(spread.world_size, dtype=torch.float64, device=device)
        codes[spread.rank] = 0.0 if failure is None else _failure_code(failure)
        all_reduce_coalesced([codes], spread.group)
        if failure is not None:
            raise failure
        if codes.any():
            rank = int(codes.nonzero()[0])
            if codes[rank] == 1.0:
                raise DecompositionError(
                    f"a preconditioner refresh failed on rank {rank}, its owner "
                    "(distributed='shard'; that rank raised the error itself)"
                )
            raise RuntimeError(f"the optimizer step raised on rank {rank} (distributed='shard')")
        updates, sent = [], {rank: [] for rank in range(spread.world_size)}
        for group, _, blocks in work:
            for block in blocks:
                if not block.kronecker:
                    updates.append(Update(group, block, computed[block.key]))
                    continue
                grad = self._grad(block.key)
                dtype = statistics_dtype(grad.dtype)
                owner = owners[block.key]
                if owner == spread.rank:
                    tensor = computed[block.key].materialized(dtype)
                else:
                    rows = grad.shape[0]
                    shape = (rows, sum(p.numel() for p in block.params) // rows)
                    tensor = torch.empty(shape, dtype=dtype, device=grad.device)
                sent[owner].append(tensor)
                updates.append(Update(group, block, Direction(tensor)))
        for rank, tensors in sent.items():
            if tensors:
                broadcast_coalesced(tensors, spread.global_rank(rank), spread.group)
        return updates

    def _refresh(self, parts: Parts, pending: list[_Prepared]) -> None:
        """The refreshes of a group's blocks this step, under the failure policy. With
        ``distributed="split"`` each block is refreshed on one rank (:func:`assign_owners` on
        the cube of its sides; the same on every rank), whose fresh tensors are broadcast
        (one flat buffer per rank and dtype), and the outcome — success or failure — is
        shared first, so that the policy counts, warns and raises alike on every rank."""
        if not pending:
            return
        transform = parts.transform
        with _phase(PROFILE_REFRESH):
            for prepared in pending:
                _reset_if_overflowed(prepared.state)
            corrections = [parts.correction(p.state.get(STATISTICS_UPDATES, 0)) for p in pending]
            spread = self._distributed
            if not spread.split:
                for prepared, correction in zip(pending, corrections, strict=True):
                    parts.failures.refresh(transform, prepared.state, correction=correction)
                return
            owners = assign_owners([refresh_cost(p.grad.shape) for p in pending], spread.world_size)
            errors: list[DecompositionError | None] = [None] * len(pending)
            for index, (prepared, correction, owner) in enumerate(
                zip(pending, corrections, owners, strict=True)
            ):
                if owner == spread.rank:
                    try:
                        transform.refresh(prepared.state, correction=correction)
                    except DecompositionError as error:
                        errors[index] = error
            failed = torch.tensor(  # on the blocks' device: NCCL reduces no CPU tensor
                [float(e is not None) for e in errors],
                dtype=torch.float64,
                device=pending[0].grad.device,
            )
            all_reduce_coalesced([failed], spread.group)  # each block's flag from its owner
            for rank in range(spread.world_size):
                tensors = [
                    prepared.state[key]
                    for prepared, owner, flag in zip(pending, owners, failed.tolist(), strict=True)
                    if owner == rank and not flag
                    for key in transform.refreshed_keys(prepared.state)
                ]
                if tensors:
                    broadcast_coalesced(tensors, spread.global_rank(rank), spread.group)
            for index, (prepared, correction, owner, flag) in enumerate(
                zip(pending, corrections, owners, failed.tolist(), strict=True)
            ):
                error = errors[index]
                if flag and error is None:
                    error = DecompositionError(f"the refresh failed on rank {owner}")
                if owner != spread.rank and not flag:
                    transform.adopt_refresh(prepared.state)
                parts.failures.refresh(_Outcome(error), prepared.state, correction=correction)

    def _apply_batched(
        self, transform: Any, pending: list[_Prepared], workspace: Workspace
    ) -> list[Tensor]:
        """``transform.apply_batched`` of the group's blocks; with ``distributed="split"`` and
        a transform without statistics (Muon's Newton–Schulz) each block is computed on one
        rank and broadcast."""
        spread = self._distributed
        if not (spread.split and not transform.uses_statistics):
            return transform.apply_batched(
                [p.state for p in pending],
                [p.first_moment for p in pending],
                [p.grad for p in pending],
                [p.step for p in pending],
                workspace,
            )
        owners = assign_owners([refresh_cost(p.grad.shape) for p in pending], spread.world_size)
        mine = [i for i, owner in enumerate(owners) if owner == spread.rank]
        results: list[Tensor] = []
        for prepared in pending:
            dtype = transform.resolved_dtype(prepared.first_moment.dtype)
            results.append(
                torch.empty_like(prepared.first_moment, dtype=dtype or prepared.first_moment.dtype)
            )
        if mine:
            computed = transform.apply_batched(
                [pending[i].state for i in mine],
                [pending[i].first_moment for i in mine],
                [pending[i].grad for i in mine],
                [pending[i].step for i in mine],
                workspace,
            )
            for i, result in zip(mine, computed, strict=True):
                results[i].copy_(result)
        for rank in range(spread.world_size):
            tensors = [results[i] for i, owner in enumerate(owners) if owner == rank]
            if tensors:
                broadcast_coalesced(tensors, spread.global_rank(rank), spread.group)
        return results

    def _prepare(self, parts: Parts, block: Block) -> Direction | _Prepared:
        """Everything of a block's step before the application: state, first moment,
        statistics and refresh. Returns the final direction for Adam-path blocks."""
        state = self.state[block.key]
        grad = block.matrix([self._grad(p) for p in block.params])
        if block.kronecker:
            # bf16 / fp16 parameters: the whole Kronecker path (moments included) runs in
            # float32, and only the update is rounded to the parameters' dtype. Adam's own
            # normalization would otherwise turn the rounding gap between a bf16 first moment
            # and the gradient into full-size steps in an eigenbasis (SOAP's first step
            # moved weights by 400).
            grad = grad.to(statistics_dtype(grad.dtype))
        if parts.maximize:
            grad = -grad
        if not state:
            self._init_state(parts, state, block, grad)
        state[STEP] += 1
        step = state[STEP]
        if not block.kronecker:
            return parts.adam.direction(state, grad, step)
        first_moment = parts.first_moment.direction(state, grad, step)
        transform = parts.transform
        if transform.uses_statistics and (step - 1) % parts.statistics_every == 0:
            with _phase(PROFILE_STATISTICS):
                layout = parts.layout(tuple(grad.shape), scalar_sides=self._source.scalar_sides)
                if self._source.accumulate(
                    block, state, grad, layout, parts.accumulation, parts.statistics_decay
                ):
                    state[STATISTICS_UPDATES] = state.get(STATISTICS_UPDATES, 0) + 1
        refresh = transform.uses_statistics and (step - 1) % parts.refresh_every == 0
        return _Prepared(state, grad, first_moment, step, refresh)

    def _finish(self, parts: Parts, prepared: _Prepared, applied: Tensor) -> Direction:
        """Grafting or the shape scale, then heavy-ball momentum, of a Kronecker block."""
        with _phase(PROFILE_APPLY):
            if parts.graft is not None:
                result = parts.graft.direction(
                    prepared.state, applied, prepared.first_moment, prepared.grad, prepared.step
                )
            else:
                result = Direction(applied)
            if parts.scale is not UpdateScale.NONE:
                result = Direction(result.tensor, result.factor * parts.scale.factor(applied.shape))
        return parts.heavy_ball.direction(prepared.state, result)

    def _init_state(self, parts: Parts, state: dict[str, Any], block: Block, grad: Tensor) -> None:
        state[STEP] = 0
        state[SKIPPED_STEPS] = 0
        state[EXP_AVG] = torch.zeros_like(grad)
        if not block.kronecker:
            return
        shape = (grad.shape[0], grad.shape[1])
        layout = parts.layout(shape, scalar_sides=self._source.scalar_sides)
        state[FAILED_REFRESHES] = 0
        state[CONSECUTIVE_FAILURES] = 0
        if parts.transform.uses_statistics:
            like = grad.new_empty((), dtype=statistics_dtype(grad.dtype))
            state.update(init_statistics(layout, shape, like))
            state[STATISTICS_UPDATES] = 0
        state.update(parts.transform.init(layout, shape, grad))

    def _clip_scales(
        self, work: list[tuple[dict[str, Any], Parts, list[Block]]], updates: list[Update]
    ) -> list[float]:
        """Per update, the clipping factor of its group (1 for the Adam path and groups without
        clipping); recorded in :attr:`last_update_scales` by group index."""
        scales: dict[int, float] = {}
        for index, (group, parts, _) in enumerate(work):
            if parts.clipping is None or not parts.clipping.active:
                continue
            mine = [(b, d) for g, b, d in updates if g is group and b.kronecker]
            if not mine:
                continue
            sign = -1.0 if parts.maximize else 1.0
            initial = group.get("initial_lr")
            scales[index] = parts.clipping.scale(
                scalar(group["lr"]),
                [(b.split(d.tensor), [sign * self._grad(p) for p in b.params], d) for b, d in mine],
                initial_lr=None if initial is None else scalar(initial),
            )
        self.last_update_scales = scales
        by_group = {id(group): i for i, (group, _, _) in enumerate(work)}
        return [scales.get(by_group[id(g)], 1.0) if b.kronecker else 1.0 for g, b, _ in updates]

    def _skip(self, work: list[tuple[dict[str, Any], Parts, list[Block]]], reason: str) -> None:
        warnings.warn(
            f"{type(self).__name__}: step skipped ({reason})", RuntimeWarning, stacklevel=4
        )
        holds = self._holder()
        for _, _, blocks in work:
            for block in filter(holds, blocks):
                state = self.state[block.key]
                state[SKIPPED_STEPS] = state.get(SKIPPED_STEPS, 0) + 1

    def failure_counts(self) -> dict[str, int]:
        """Totals over all blocks: failed preconditioner refreshes and skipped steps."""
        totals = {FAILED_REFRESHES: 0, SKIPPED_STEPS: 0}
        for state in self.state.values():
            for key in totals:
                totals[key] += int(state.get(key, 0))
        return totals

    def remove_hooks(self) -> None:
        """Remove the module hooks of layer-factor statistics (KFAC; the optimizer cannot take
        preconditioned steps afterwards). Nothing to do for other statistics."""
        if isinstance(self._source, LayerFactorSource):
            self._source.remove_hooks()


_TORCH_ENTRIES = ("state", "param_groups")


def _failure_code(error: Exception) -> float:
    """What a rank tells the others of its failed step: 1 a failed decomposition (the failure
    policy raised), 2 anything else."""
    return 1.0 if isinstance(error, DecompositionError) else 2.0


class Layerwise(LayerwiseOptimizer):
    r"""A layer-wise optimizer composed from parts, no subclass needed.

    Args:
        params: parameters or param groups; a group may carry its own ``parts``.
        parts: the composition (:class:`~layerwise.optim.parts.Parts`).
        lr: learning rate :math:`\eta` (the Adam path runs at ``lr * parts.adam.lr_ratio``).
        model: the model, when the statistics are layer factors (its hooks are registered).

    The parts are stored in each param group as plain data (``Parts.to_dict()``), so
    checkpoints load with ``torch.load(..., weights_only=True)``.

    Example (KFAC's factors with an inverse 4th root):
        >>> from layerwise.optim import InverseRoot, LayerFactors, Parts
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
        ...                             torch.nn.Linear(8, 3))
        >>> parts = Parts(statistics=LayerFactors(loss="cross_entropy"),
        ...               transform=InverseRoot(root=4, damping=1e-3), bias_correction=True,
        ...               first_moment=FirstMoment(beta=0.0), refresh_every=10)
        >>> opt = Layerwise(model.parameters(), parts, lr=0.05, model=model)
    """

    def __init__(
        self,
        params: Iterable[Any],
        parts: Parts,
        lr: float = 1e-3,
        *,
        model: nn.Module | None = None,
        process_group: Any = AUTO_GROUP,
        distributed: str = REPLICATE,
    ) -> None:
        if not isinstance(parts, Parts):
            raise TypeError(f"parts must be a Parts, got {type(parts).__name__}")
        super().__init__(
            params,
            dict(lr=lr, parts=parts.to_dict()),
            model=model,
            process_group=process_group,
            distributed=distributed,
        )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if isinstance(param_group.get("parts"), Parts):
            param_group = {**param_group, "parts": param_group["parts"].to_dict()}
        super().add_param_group(param_group)

    @staticmethod
    def compose(group: dict[str, Any]) -> Parts:
        return Parts.from_dict(group["parts"])


class _Outcome:
    """What the failure policy is handed on every rank after a split refresh: a transform
    whose refresh only re-raises the owner's error (or succeeds: the state is already
    fresh)."""

    def __init__(self, error: DecompositionError | None) -> None:
        self._error = error

    def refresh(self, state: dict[str, Any], *, correction: float = 1.0) -> None:
        if self._error is not None:
            raise self._error


def _refreshes(prepared: Direction | _Prepared) -> bool:
    return isinstance(prepared, _Prepared) and prepared.refresh


def _reset_if_overflowed(state: dict[str, Any]) -> None:
    """Statistics that overflowed (finite gradients whose squares exceed the format, e.g.
    |g| > 1.8e19 in float32) would make every later refresh fail: they are restarted from zero,
    with a warning and a counted failure."""
    statistics = [state[key] for key in STATISTIC_KEYS if key in state]
    if not statistics or matrix.all_finite(statistics):
        return
    for statistic in statistics:
        statistic.zero_()
    state[STATISTICS_UPDATES] = 0
    state[FAILED_REFRESHES] += 1
    warnings.warn(
        "preconditioner statistics overflowed (gradients too large for their squares); they "
        "restart from zero",
        RuntimeWarning,
        stacklevel=5,
    )


def _phase(name: str) -> contextlib.AbstractContextManager[Any]:
    """A profiler range named ``name`` while a profiler runs; otherwise a no-op."""
    # The flag is private; where it is missing the range is always opened (a few µs).
    if getattr(torch.autograd.profiler, "_is_profiler_enabled", True):
        return torch.profiler.record_function(name)
    return contextlib.nullcontext()
