r"""The shell's parts: what happens to a block's direction around its preconditioner.

One step of a Kronecker block, with :math:`G` its gradient (viewed as a matrix):

1. :class:`FirstMoment` :math:`M \leftarrow \beta M + (1 - \beta) G`, fed on as
   :math:`\hat M = M / (1 - \beta^t)` (or :math:`M` without bias correction, Muon), or in
   Nesterov form :math:`\beta \hat M + (1 - \beta) G`; :math:`\beta = 0` feeds :math:`G`;
2. the transform (:mod:`layerwise.optim.transforms`) preconditions it;
3. :class:`Graft` rescales the result to the norm of a simpler method's direction (Shampoo),
   :class:`UpdateScale` multiplies it by a shape scale (Muon);
4. :class:`HeavyBall` :math:`B \leftarrow \mu B + D`, :math:`D \leftarrow B` (or
   :math:`D + \mu B`, Nesterov);
5. :class:`Clipping` scales every block of a param group by one factor :math:`\nu \le 1`
   (KFAC's KL clip), and the update is :math:`W \leftarrow (1 - \eta\lambda) W - \eta\nu D`.

Parameters that are not matrices take :class:`AdamPath` (exactly AdamW, at
``lr * lr_ratio``). A failed preconditioner refresh goes through :class:`FailurePolicy`.

Each part is a frozen, keyword-only dataclass that checks itself; enum fields accept their
string values (so YAML configs work).
"""

from __future__ import annotations

import enum
import math
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from layerwise.optim.kfac_damping import clip_scale
from layerwise.optim.kronecker import (
    CONSECUTIVE_FAILURES,
    EXP_AVG,
    EXP_AVG_SQ,
    FAILED_REFRESHES,
    MOMENTUM_BUFFER,
    Transform,
)
from layerwise.optim.matrix import DecompositionError

#: A scalar on a direction — a float, or a 0-D tensor (no synchronization) — that is folded into
#: the parameter update (``add_``'s alpha, or one ``addcmul_``) instead of costing a pass.
Factor = float | Tensor


class Direction(NamedTuple):
    """A block's update direction as ``factor * tensor`` (see :data:`Factor`)."""

    tensor: Tensor
    factor: Factor = 1.0

    def materialized(self, dtype: torch.dtype | None = None) -> Tensor:
        """``factor * tensor`` as one tensor (the tensor itself when the factor is 1); with
        ``dtype``, the tensor is converted first (a bf16 tensor is not rounded again after its
        scale)."""
        tensor, factor = self.tensor, self.factor
        if dtype is not None:
            tensor = tensor.to(dtype)
            if isinstance(factor, Tensor):
                factor = factor.to(dtype)
        if isinstance(factor, float) and factor == 1.0:
            return tensor
        return tensor * factor


def _unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"Invalid {name}: {value!r} (must be in [0, 1))")


def first_moment(
    state: dict[str, Any],
    grad: Tensor,
    step: int,
    *,
    beta: float,
    nesterov: bool,
    bias_correction: bool,
) -> Tensor:
    """The direction of :class:`FirstMoment` (updates ``state[EXP_AVG]``)."""
    if beta == 0.0:
        return grad
    exp_avg: Tensor = state[EXP_AVG]
    exp_avg.lerp_(grad, 1.0 - beta)
    if nesterov:
        # β M̂ + (1 − β) G as one lerp (torch.optim.Muon's form): no copy of M.
        moment = exp_avg / (1.0 - beta**step) if bias_correction else exp_avg
        return torch.lerp(grad, moment, beta)
    return exp_avg / (1.0 - beta**step) if bias_correction else exp_avg.clone()


@dataclass(frozen=True, kw_only=True)
class FirstMoment:
    """The EMA of the gradient fed to the transform (module docstring, step 1)."""

    beta: float = 0.9
    nesterov: bool = False
    bias_correction: bool = True

    def __post_init__(self) -> None:
        _unit_interval("first-moment beta", self.beta)

    def direction(self, state: dict[str, Any], grad: Tensor, step: int) -> Tensor:
        return first_moment(
            state,
            grad,
            step,
            beta=self.beta,
            nesterov=self.nesterov,
            bias_correction=self.bias_correction,
        )


def adam_direction(
    state: dict[str, Any], first_moment: Tensor, grad: Tensor, beta2: float, eps: float, step: int
) -> Direction:
    r"""AdamW's direction :math:`\hat M / (\sqrt{V / (1 - \beta_2^t)} + \epsilon)`; updates ``V``.

    Returned as :math:`\sqrt{c_2}\cdot \hat M / (\sqrt V + \epsilon \sqrt{c_2})` with
    :math:`c_2 = 1 - \beta_2^t` (the same number; the scalar rides on the update, three passes
    instead of five). ``first_moment`` is already bias-corrected. Shared by :class:`AdamPath`
    and Adam grafting.
    """
    exp_avg_sq = state.get(EXP_AVG_SQ)
    if exp_avg_sq is None:
        exp_avg_sq = state[EXP_AVG_SQ] = torch.zeros_like(grad)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    root_correction = math.sqrt(1.0 - beta2**step)
    denominator = exp_avg_sq.sqrt().add_(eps * root_correction)
    return Direction(torch.div(first_moment, denominator, out=denominator), root_correction)


@dataclass(frozen=True, kw_only=True)
class AdamPath:
    """AdamW for parameters that are not matrices (0-D, 1-D; and those a statistics part does
    not cover), at learning rate ``lr * lr_ratio`` (a ratio, so LR schedulers scale both
    paths)."""

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    lr_ratio: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        if not (len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas)):
            raise ValueError(f"Invalid betas: {self.betas!r} (each must be in [0, 1))")
        if not self.eps >= 0:
            raise ValueError(f"Invalid eps: {self.eps!r}")
        if not self.lr_ratio >= 0:
            raise ValueError(f"Invalid adam_lr_ratio: {self.lr_ratio!r}")

    def direction(self, state: dict[str, Any], grad: Tensor, step: int) -> Direction:
        moment = first_moment(
            state, grad, step, beta=self.betas[0], nesterov=False, bias_correction=True
        )
        return adam_direction(state, moment, grad, self.betas[1], self.eps, step)


class Grafting(enum.StrEnum):
    """The method whose direction norm :class:`Graft` borrows: Adam's, SGD's (the first
    moment's), or none."""

    ADAM = "adam"
    SGD = "sgd"
    NONE = "none"


@dataclass(frozen=True, kw_only=True)
class Graft:
    r"""Grafting (Agarwal et al., 2020; Shampoo's practice): the preconditioned direction
    :math:`D` is rescaled per block to the norm of the grafted method's direction :math:`D_g`,
    :math:`D \leftarrow (\lVert D_g \rVert_F / \lVert D \rVert_F)\, D`. Before
    ``start_preconditioning_step`` the grafted direction itself is used (the first moment with
    ``method="none"``), so with preconditioning switched off the optimizer *is* its grafted
    method. Adam grafting keeps its own second moment (``beta2``, ``eps``)."""

    method: Grafting = Grafting.ADAM
    beta2: float = 0.999
    eps: float = 1e-8
    start_preconditioning_step: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", Grafting(self.method))
        if not (
            isinstance(self.start_preconditioning_step, int)
            and self.start_preconditioning_step >= 1
        ):
            raise ValueError(
                f"Invalid start_preconditioning_step: {self.start_preconditioning_step!r}"
            )

    def direction(
        self,
        state: dict[str, Any],
        applied: Tensor,
        first_moment: Tensor,
        grad: Tensor,
        step: int,
    ) -> Direction:
        before_start = step < self.start_preconditioning_step
        match self.method:
            case Grafting.NONE:
                return Direction(first_moment if before_start else applied)
            case Grafting.SGD:
                grafted = Direction(first_moment)
            case Grafting.ADAM:
                grafted = adam_direction(state, first_moment, grad, self.beta2, self.eps, step)
            case other:  # pragma: no cover - the enum refuses other values
                raise ValueError(f"unknown grafting {other!r}")
        if before_start:
            return grafted
        # The graft's norm as the direction's factor (0-D: no synchronization, no pass).
        norm = torch.linalg.matrix_norm(applied)
        grafted_norm = torch.linalg.matrix_norm(grafted.tensor) * grafted.factor
        return Direction(applied, torch.where(norm > 0, grafted_norm / norm, 0.0))


class UpdateScale(enum.StrEnum):
    r"""A shape scale :math:`s(m, n)` on an ``(m, n)`` block's direction: ``shape``
    :math:`\sqrt{\max(1, m/n)}` (Jordan et al.'s Muon), ``rms`` :math:`0.2\sqrt{\max(m, n)}`
    (matches AdamW's update RMS, Liu et al. 2025), ``none`` 1."""

    SHAPE = "shape"
    RMS = "rms"
    NONE = "none"

    def factor(self, shape: tuple[int, ...]) -> float:
        m, n = shape
        match self:
            case UpdateScale.SHAPE:
                return math.sqrt(max(1.0, m / n))
            case UpdateScale.RMS:
                return 0.2 * math.sqrt(max(m, n))
            case UpdateScale.NONE:
                return 1.0
        raise AssertionError  # unreachable: the enum has no other members


@dataclass(frozen=True, kw_only=True)
class HeavyBall:
    """Momentum on the preconditioned direction (module docstring, step 4); 0: none."""

    momentum: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        _unit_interval("momentum", self.momentum)

    def direction(self, state: dict[str, Any], result: Direction) -> Direction:
        if not self.momentum:
            return result
        direction = result.materialized()
        buffer = state.get(MOMENTUM_BUFFER)
        if buffer is None:
            buffer = state[MOMENTUM_BUFFER] = torch.zeros_like(direction)
        buffer.mul_(self.momentum).add_(direction)
        # Directions are only read after this (the update), so the buffer itself can serve.
        return Direction(direction + self.momentum * buffer if self.nesterov else buffer)


@dataclass(frozen=True, kw_only=True)
class Clipping:
    r"""One factor :math:`\nu \le 1` on the steps of a param group's Kronecker blocks:
    the KL clip :math:`\nu = \min(1, \sqrt{c / (\eta_0^2 \sum \langle D, \nabla \rangle)})` (Ba et
    al., 2017; ``kl_clip`` = c, 0: off) and an update-norm clip :math:`\eta \nu \lVert D
    \rVert_F \le` ``max_update_norm`` (None: off).

    :math:`\eta_0` is the group's learning rate before any LR scheduler (``initial_lr``, which
    torch's schedulers record; the current lr without one). With the current lr instead, a
    clipped step :math:`\eta\nu D = \sqrt{c / \sum\langle D, \nabla\rangle}\, D` would not
    depend on the lr at all, and a schedule would do nothing while the clip is active; with
    :math:`\eta_0` the clipped step scales with :math:`\eta / \eta_0`."""

    kl_clip: float = 0.0
    max_update_norm: float | None = None

    def __post_init__(self) -> None:
        if not self.kl_clip >= 0:
            raise ValueError(f"Invalid kl_clip: {self.kl_clip!r}")
        if self.max_update_norm is not None and not self.max_update_norm > 0:
            raise ValueError(f"Invalid max_update_norm: {self.max_update_norm!r}")

    @property
    def active(self) -> bool:
        return bool(self.kl_clip) or self.max_update_norm is not None

    def scale(
        self,
        lr: float,
        directions: list[tuple[list[Tensor], list[Tensor], Direction]],
        *,
        initial_lr: float | None = None,
    ) -> float:
        """ν for the group's ``(pieces, grads, direction)`` triples (a block's direction split
        into its parameters' shapes, their gradients, the direction) at learning rate ``lr``
        (``initial_lr``: the lr before scheduling, for the KL clip)."""
        inner = 0.0
        squared_norm = 0.0
        for pieces, grads, direction in directions:
            factor = float(direction.factor)
            if self.kl_clip:
                # ⟨D, ∇⟩ parameter by parameter (no concatenated copy of the gradient).
                inner += (
                    sum(
                        float(torch.vdot(piece.reshape(-1), g.reshape(-1).to(piece.dtype)))
                        for piece, g in zip(pieces, grads, strict=True)
                    )
                    * factor
                )
            if self.max_update_norm is not None:
                squared_norm += float(direction.tensor.square().sum()) * factor**2
        return clip_scale(
            lr,
            kl_clip=self.kl_clip,
            max_update_norm=self.max_update_norm,
            inner=inner,
            squared_norm=squared_norm,
            kl_lr=initial_lr,
        )


@dataclass(frozen=True, kw_only=True)
class FailurePolicy:
    """What a failed refresh does: the previous preconditioner is kept, the failure counted in
    the block's state (``failed_refreshes``) and warned about; after
    ``max_consecutive_failures`` failures in a row the error is raised (``None``: never; 0: the
    first failure raises, as exact modes do)."""

    max_consecutive_failures: int | None = None

    def __post_init__(self) -> None:
        limit = self.max_consecutive_failures
        if limit is not None and not (isinstance(limit, int) and limit >= 0):
            raise ValueError(f"Invalid max_consecutive_failures: {limit!r}")

    def refresh(self, transform: Transform, state: dict[str, Any], *, correction: float) -> bool:
        """``transform.refresh`` under the policy; whether it succeeded."""
        try:
            transform.refresh(state, correction=correction)
        except DecompositionError as error:
            state[FAILED_REFRESHES] += 1
            state[CONSECUTIVE_FAILURES] += 1
            limit = self.max_consecutive_failures
            if limit is not None and state[CONSECUTIVE_FAILURES] > limit:
                raise DecompositionError(
                    f"{state[CONSECUTIVE_FAILURES]} consecutive preconditioner refreshes "
                    f"failed: {error}"
                ) from error
            warnings.warn(
                f"preconditioner refresh failed ({error}); keeping the previous one "
                f"({state[FAILED_REFRESHES]} failures so far)",
                RuntimeWarning,
                stacklevel=4,
            )
            return False
        state[CONSECUTIVE_FAILURES] = 0
        return True
