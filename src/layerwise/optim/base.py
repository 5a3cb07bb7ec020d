r"""The ``torch.optim`` shell shared by every layer-wise optimizer of the package.

One step for a block (a parameter viewed as a matrix, or for KFAC a weight with its bias):

1. first moment (all methods): :math:`M \leftarrow \beta_1 M + (1 - \beta_1) G`, bias-corrected
   :math:`\hat M = M / (1 - \beta_1^t)`; with ``nesterov`` the direction fed on is
   :math:`\beta_1 \hat M + (1 - \beta_1) G` (Muon's Nesterov momentum). ``beta1 = 0`` feeds the
   raw gradient.
2. every ``statistics_every`` steps the block's statistics get their increments (gradients for
   Shampoo / SOAP; activations and output gradients for KFAC); every ``refresh_every`` steps
   (steps 1, k + 1, 2k + 1, ...) the preconditioners are recomputed
   (:mod:`layerwise.optim.kronecker`);
3. the direction is preconditioned and post-processed (grafting, Muon's scale);
4. optional heavy-ball momentum on the preconditioned direction (Kronecker blocks only):
   :math:`B \leftarrow \mu B + D`, and :math:`D \leftarrow B` (or :math:`D + \mu B` with
   ``nesterov``) — for KFAC and Shampoo;
5. decoupled weight decay and the step: :math:`W \leftarrow (1 - \eta\lambda) W - \eta D`.

Parameters that are not matrices. 0-D and 1-D tensors (biases, norm scales) take the **Adam
path**: :math:`D = \hat M / (\sqrt{V / (1 - \beta_2^t)} + \epsilon)`, exactly AdamW with the
group's betas, ``eps`` and weight decay, at learning rate ``lr * adam_lr_ratio`` (a ratio so
that LR schedulers scale both paths). Tensors with more than two dimensions are viewed as
matrices of shape ``(shape[0], prod(shape[1:]))`` (output channels x everything else, e.g. a
conv kernel).

Robustness. Before anything changes, all gradients of the step are checked together (one
synchronization): if any is non-finite the whole step is skipped, a ``RuntimeWarning`` is
issued and ``skipped_steps`` in each parameter's state is incremented. Preconditioner failures
keep the previous preconditioner (:func:`layerwise.optim.kronecker.refresh`). The final
directions are checked again before they are written, so no NaN reaches a parameter.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from layerwise.optim import kronecker, matrix
from layerwise.optim._modes import COMPUTE_DTYPES
from layerwise.optim.kronecker import KroneckerConfig

# State keys of the shell.
STEP = "step"
EXP_AVG = "exp_avg"
EXP_AVG_SQ = "exp_avg_sq"
MOMENTUM_BUFFER = "momentum_buffer"
SKIPPED_STEPS = "skipped_steps"

#: ``torch.profiler`` ranges around the three phases of a Kronecker block's step (statistics
#: and their accumulation, the preconditioner refresh, the application with post-processing).
#: They are opened only while a profiler runs, so they cost nothing otherwise.
PROFILE_STATISTICS = "layerwise.statistics"
PROFILE_REFRESH = "layerwise.refresh"
PROFILE_APPLY = "layerwise.apply"


@dataclass(frozen=True)
class _Prepared:
    """A Kronecker block's step up to its application (see ``_prepare_direction``)."""

    state: dict[str, Any]
    grad: Tensor
    first_moment: Tensor
    step: int
    momentum: float
    nesterov: bool


@dataclass(frozen=True)
class Block:
    """Parameters preconditioned together as one ``(m, n)`` matrix (state lives on the first).

    ``kronecker=False`` sends the block down the Adam path (each tensor entry-wise).
    """

    params: tuple[torch.nn.Parameter, ...]
    kronecker: bool

    @property
    def key(self) -> torch.nn.Parameter:
        return self.params[0]

    def matrix(self, tensors: Sequence[Tensor]) -> Tensor:
        """View (and for a weight + bias pair, concatenate) the block's tensors as a matrix."""
        if not self.kronecker:
            return tensors[0]
        first = tensors[0].reshape(tensors[0].shape[0], -1)
        if len(tensors) == 1:
            return first
        return torch.cat([first, *(t.reshape(first.shape[0], -1) for t in tensors[1:])], dim=1)

    def split(self, matrix: Tensor) -> list[Tensor]:
        """Inverse of :meth:`matrix`: the block's tensors from a matrix of its shape."""
        if len(self.params) == 1:
            return [matrix.reshape(self.params[0].shape)]
        widths = [p.numel() // p.shape[0] for p in self.params]
        pieces = torch.split(matrix, widths, dim=1)
        return [piece.reshape(p.shape) for piece, p in zip(pieces, self.params, strict=True)]


#: A scalar on a direction — a float, or a 0-D tensor (no synchronization) — that is folded into
#: the parameter update (``add_``'s alpha, or one ``addcmul_``) instead of costing a pass.
Factor = float | Tensor


class Direction(NamedTuple):
    """A block's update direction as ``factor * tensor`` (see :data:`Factor`)."""

    tensor: Tensor
    factor: Factor = 1.0

    def materialized(self) -> Tensor:
        """``factor * tensor`` as one tensor (the tensor itself when the factor is 1)."""
        if isinstance(self.factor, float) and self.factor == 1.0:
            return self.tensor
        return self.tensor * self.factor


class Update(NamedTuple):
    """One block's part of a step: its param group, the block and its direction."""

    group: dict[str, Any]
    block: Block
    direction: Direction


def adam_direction(
    state: dict[str, Any], first_moment: Tensor, grad: Tensor, beta2: float, eps: float, step: int
) -> Direction:
    r"""AdamW's direction :math:`\hat M / (\sqrt{V / (1 - \beta_2^t)} + \epsilon)`; updates ``V``.

    Returned as :math:`\sqrt{c_2}\cdot \hat M / (\sqrt V + \epsilon \sqrt{c_2})` with
    :math:`c_2 = 1 - \beta_2^t` (the same number; the scalar rides on the update, three passes
    instead of five). ``first_moment`` is already bias-corrected. Shared by the Adam path and
    Shampoo's Adam grafting.
    """
    exp_avg_sq = state.get(EXP_AVG_SQ)
    if exp_avg_sq is None:
        exp_avg_sq = state[EXP_AVG_SQ] = torch.zeros_like(grad)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    root_correction = math.sqrt(1.0 - beta2**step)
    denominator = exp_avg_sq.sqrt().add_(eps * root_correction)
    return Direction(torch.div(first_moment, denominator, out=denominator), root_correction)


def check_hyperparameters(**values: Any) -> None:
    """Refuse impossible hyperparameters, naming the value (the torch.optim habit)."""
    rules: dict[str, Callable[[Any], bool]] = {
        "lr": lambda v: v >= 0,
        "adam_lr_ratio": lambda v: v >= 0,
        "eps": lambda v: v >= 0,
        "weight_decay": lambda v: v >= 0,
        "momentum": lambda v: 0 <= v < 1,
        "refresh_every": lambda v: isinstance(v, int) and v >= 1,
        "statistics_every": lambda v: isinstance(v, int) and v >= 1,
        "precondition_dtype": lambda v: v is None or v in COMPUTE_DTYPES,
        "ns_dtype": lambda v: v is None or v in COMPUTE_DTYPES,
    }
    for name, value in values.items():
        if name == "betas":
            if not (len(value) == 2 and all(0.0 <= b < 1.0 for b in value)):
                raise ValueError(f"Invalid betas: {value!r} (each must be in [0, 1))")
        elif name in rules and not rules[name](value):
            raise ValueError(f"Invalid {name}: {value!r}")


class LayerwiseOptimizer(torch.optim.Optimizer):
    """Base class: the torch.optim contract around :mod:`layerwise.optim.kronecker`.

    Subclasses provide :meth:`kronecker_config` (the per-layer parts for a group) and may
    override :meth:`blocks`, :meth:`accumulate_statistics` and :meth:`postprocess`.
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        check_hyperparameters(**{k: v for k, v in defaults.items() if k in _CHECKED_DEFAULTS})
        super().__init__(params, defaults)
        for group in self.param_groups:
            check_hyperparameters(**{k: v for k, v in group.items() if k in _CHECKED_DEFAULTS})

    # -- hooks for subclasses --------------------------------------------------------------
    #: Whether the first moment of Kronecker blocks is divided by 1 - beta1^t (Adam-style).
    #: Muon's direction is scale-free after orthogonalization, and torch's Muon does not.
    first_moment_bias_correction: bool = True

    def first_moment_beta(self, group: dict[str, Any]) -> float:
        """beta1 of the first moment fed to the preconditioner (Adam-path blocks always use
        ``group["betas"][0]``)."""
        return group["betas"][0]

    def heavy_ball(self, group: dict[str, Any]) -> float:
        """Momentum applied to the preconditioned direction (0: none)."""
        return group.get("momentum", 0.0)

    def kronecker_config(self, group: dict[str, Any]) -> KroneckerConfig:
        raise NotImplementedError

    def blocks(self, group: dict[str, Any]) -> list[Block]:
        """One block per parameter with a gradient: matrices (after the >2-D reshape rule) go
        to the Kronecker path, everything else to the Adam path."""
        return [Block((p,), kronecker=p.ndim >= 2) for p in group["params"] if p.grad is not None]

    def accumulate_statistics(
        self,
        group: dict[str, Any],
        block: Block,
        config: KroneckerConfig,
        grad: Tensor,
        state: dict[str, Any],
    ) -> None:
        """Update ``block``'s statistics; default: Shampoo's gradient products, each fused
        with its accumulation."""
        kronecker.accumulate_gradient_statistics(config, state, grad)

    def postprocess(
        self,
        group: dict[str, Any],
        state: dict[str, Any],
        direction: Tensor,
        first_moment: Tensor,
        grad: Tensor,
    ) -> Direction:
        """Adjust the preconditioned direction (grafting, scaling), preferably through the
        factor of the returned :class:`Direction`; default: unchanged."""
        return Direction(direction)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As ``torch.optim.Optimizer.load_state_dict``; knobs added to the optimizer after the
        checkpoint was written take their defaults, so old checkpoints keep loading."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def update_scales(self, updates: list[Update]) -> list[float]:
        """For all ``(group, block, direction)`` of the step, a factor on each one's step size
        (folded into the parameter update: no pass over the direction). The place for rules
        that couple layers (KFAC's KL clipping); default: all 1."""
        return [1.0] * len(updates)

    # -- the step --------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = [(group, self.blocks(group)) for group in self.param_groups]
        grads = [p.grad for _, blocks in work for b in blocks for p in b.params]
        if not grads:
            return loss
        if not matrix.all_finite(grads):
            self._skip(work, "non-finite gradient")
            return loss

        updates: list[Update] = []
        for group, blocks in work:
            config = self.kronecker_config(group) if any(b.kronecker for b in blocks) else None
            if config is not None and kronecker.applies_batched(config):
                updates += self._batched_directions(group, blocks, config)
                continue
            for block in blocks:
                updates.append(Update(group, block, self._direction(group, block, config)))
        scales = self.update_scales(updates)
        checked = [u.direction.tensor for u in updates]
        checked += [u.direction.factor for u in updates if isinstance(u.direction.factor, Tensor)]
        if not matrix.all_finite(checked):
            self._skip(work, "non-finite update")
            return loss
        for (group, block, (tensor, factor)), scale in zip(updates, scales, strict=True):
            lr = group["lr"] if block.kronecker else group["lr"] * group.get("adam_lr_ratio", 1.0)
            for param, piece in zip(block.params, block.split(tensor), strict=True):
                if group["weight_decay"]:
                    param.mul_(1.0 - lr * group["weight_decay"])
                if isinstance(factor, Tensor):
                    param.addcmul_(piece, factor, value=-lr * scale)
                else:
                    param.add_(piece, alpha=-lr * scale * factor)
        return loss

    def _direction(
        self, group: dict[str, Any], block: Block, config: KroneckerConfig | None
    ) -> Direction:
        prepared = self._prepare_direction(group, block, config)
        if isinstance(prepared, Direction):  # the Adam path is done
            return prepared
        assert config is not None
        with _phase(PROFILE_APPLY):
            applied = kronecker.apply(
                config,
                prepared.state,
                prepared.first_moment,
                grad=prepared.grad,
                step=prepared.step,
            )
        return self._finish_direction(group, prepared, applied)

    def _batched_directions(
        self, group: dict[str, Any], blocks: list[Block], config: KroneckerConfig
    ) -> list[Update]:
        """As :meth:`_direction` for every block, with the (stateless) application of all
        Kronecker blocks in one :func:`~layerwise.optim.kronecker.apply_batched` call, which
        runs same-shape matrices as one batched product (Muon's Newton–Schulz)."""
        prepared = [self._prepare_direction(group, block, config) for block in blocks]
        pending = [p for p in prepared if isinstance(p, _Prepared)]
        with _phase(PROFILE_APPLY):
            applied = iter(kronecker.apply_batched(config, [p.first_moment for p in pending]))
        return [
            Update(
                group,
                block,
                self._finish_direction(group, p, next(applied)) if isinstance(p, _Prepared) else p,
            )
            for block, p in zip(blocks, prepared, strict=True)
        ]

    def _prepare_direction(
        self, group: dict[str, Any], block: Block, config: KroneckerConfig | None
    ) -> Direction | _Prepared:
        """Everything of a block's step before the application: state, first moment,
        statistics and refresh. Returns the final direction for Adam-path blocks."""
        state = self.state[block.key]
        grad = block.matrix([p.grad for p in block.params])
        if not state:
            self._init_state(state, block, config, grad)
        state[STEP] += 1
        step = state[STEP]
        beta1, beta2 = group["betas"]
        momentum = self.heavy_ball(group)
        if block.kronecker:
            beta1 = self.first_moment_beta(group)
        # Nesterov acts on the outer (heavy-ball) momentum when there is one, else on the first
        # moment (Muon's form).
        nesterov = group.get("nesterov", False)
        first_moment = self._first_moment(
            state,
            grad,
            beta1,
            step,
            kronecker=block.kronecker,
            nesterov=nesterov and block.kronecker and not momentum,
        )

        if not block.kronecker:
            return adam_direction(state, first_moment, grad, beta2, group["eps"], step)
        assert config is not None
        if config.uses_statistics and (step - 1) % group["statistics_every"] == 0:
            with _phase(PROFILE_STATISTICS):
                self.accumulate_statistics(group, block, config, grad, state)
        if config.uses_statistics and (step - 1) % group["refresh_every"] == 0:
            with _phase(PROFILE_REFRESH):
                self.refresh(group, block, config, state)
        return _Prepared(state, grad, first_moment, step, momentum, nesterov)

    def _finish_direction(
        self, group: dict[str, Any], prepared: _Prepared, applied: Tensor
    ) -> Direction:
        """Post-processing (grafting, scaling) and heavy-ball momentum of a Kronecker block."""
        state, momentum, nesterov = prepared.state, prepared.momentum, prepared.nesterov
        with _phase(PROFILE_APPLY):
            result = self.postprocess(group, state, applied, prepared.first_moment, prepared.grad)
        if not momentum:
            return result
        direction = result.materialized()
        buffer = state.get(MOMENTUM_BUFFER)
        if buffer is None:
            buffer = state[MOMENTUM_BUFFER] = torch.zeros_like(direction)
        buffer.mul_(momentum).add_(direction)
        # Directions are only read after this (the update), so the buffer itself can serve.
        return Direction(direction + momentum * buffer if nesterov else buffer)

    def refresh(
        self, group: dict[str, Any], block: Block, config: KroneckerConfig, state: dict[str, Any]
    ) -> None:
        kronecker.refresh(config, state)

    def _first_moment(
        self,
        state: dict[str, Any],
        grad: Tensor,
        beta1: float,
        step: int,
        *,
        kronecker: bool,
        nesterov: bool,
    ) -> Tensor:
        if beta1 == 0.0:
            return grad
        exp_avg: Tensor = state[EXP_AVG]
        exp_avg.lerp_(grad, 1.0 - beta1)
        bias_correction = not kronecker or self.first_moment_bias_correction
        if nesterov:
            # β₁ M̂ + (1 − β₁) G as one lerp (torch.optim.Muon's form): no copy of M.
            moment = exp_avg / (1.0 - beta1**step) if bias_correction else exp_avg
            return torch.lerp(grad, moment, beta1)
        return exp_avg / (1.0 - beta1**step) if bias_correction else exp_avg.clone()

    def _init_state(
        self,
        state: dict[str, Any],
        block: Block,
        config: KroneckerConfig | None,
        grad: Tensor,
    ) -> None:
        state[STEP] = 0
        state[SKIPPED_STEPS] = 0
        state[EXP_AVG] = torch.zeros_like(grad)
        if block.kronecker and config is not None:
            state.update(kronecker.init_state(config, tuple(grad.shape), grad))

    def _skip(self, work: list[tuple[dict[str, Any], list[Block]]], reason: str) -> None:
        warnings.warn(
            f"{type(self).__name__}: step skipped ({reason})", RuntimeWarning, stacklevel=3
        )
        for _, blocks in work:
            for block in blocks:
                state = self.state[block.key]
                state[SKIPPED_STEPS] = state.get(SKIPPED_STEPS, 0) + 1

    def failure_counts(self) -> dict[str, int]:
        """Totals over all blocks: failed preconditioner refreshes and skipped steps."""
        totals = {kronecker.FAILED_REFRESHES: 0, SKIPPED_STEPS: 0}
        for state in self.state.values():
            for key in totals:
                totals[key] += int(state.get(key, 0))
        return totals


_CHECKED_DEFAULTS = (
    "lr",
    "adam_lr_ratio",
    "eps",
    "weight_decay",
    "momentum",
    "betas",
    "refresh_every",
    "statistics_every",
    "precondition_dtype",
    "ns_dtype",
)


def _phase(name: str) -> contextlib.AbstractContextManager[Any]:
    """A profiler range named ``name`` while a profiler runs; otherwise a no-op."""
    # The flag is private; where it is missing the range is always opened (a few µs).
    if getattr(torch.autograd.profiler, "_is_profiler_enabled", True):
        return torch.profiler.record_function(name)
    return contextlib.nullcontext()
