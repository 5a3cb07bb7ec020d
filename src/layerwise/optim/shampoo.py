r"""Shampoo (Gupta, Koren & Singer, 2018), with the practice of Distributed Shampoo
(Shi et al., 2023): EMA statistics, amortized roots, grafting.

For a matrix parameter with gradient :math:`G_t` and first moment :math:`\hat M_t`:

.. math::
    L_t = \textstyle\sum_{s \le t} G_s G_s^\top \ \text{(or EMA)}, \qquad
    R_t = \textstyle\sum_{s \le t} G_s^\top G_s, \qquad
    D_t = (L_t + \epsilon I)^{-1/4}\, \hat M_t\, (R_t + \epsilon I)^{-1/4},

with the roots recomputed every ``refresh_every`` steps. With grafting the direction is rescaled
per parameter to the norm of the grafted method's direction (Adam:
:math:`\hat M / (\sqrt{\hat V} + \epsilon)`; SGD: :math:`\hat M`). Before
``start_preconditioning_step`` the grafted direction itself is used, so with preconditioning
switched off (a start step beyond the run) Shampoo *is* its grafted method.

Parameter rules: see :mod:`layerwise.optim.base` (1-D -> Adam path, >2-D -> matrix view) and
:mod:`layerwise.optim.kronecker` (a dimension-1 side is skipped, so a 1 x n parameter gets the
one-sided update :math:`\hat M (R + \epsilon I)^{-1/2}`, full-matrix AdaGrad; a side longer than
``max_preconditioner_dim`` gets a diagonal statistic).

Exact mode (``exact=True``): roots recomputed from the current statistics at every step, no
grafting, preconditioning from step 1.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from layerwise.optim._modes import compute_dtype, resolve_mode
from layerwise.optim.base import STEP, Direction, LayerwiseOptimizer, adam_direction
from layerwise.optim.kronecker import Accumulation, InverseRoot, KroneckerConfig
from layerwise.optim.matrix import Damping


class Grafting(enum.StrEnum):
    ADAM = "adam"
    SGD = "sgd"
    NONE = "none"


class Shampoo(LayerwiseOptimizer):
    r"""Shampoo as a ``torch.optim.Optimizer``; every argument can be set per param group.

    Args:
        params: parameters or param groups.
        lr: learning rate :math:`\eta`.
        betas: (beta1, beta2): beta1 filters the gradient (bias-corrected EMA fed to the
            preconditioner; 0 feeds the raw gradient), beta2 is the Adam second-moment decay of
            the Adam grafting and of the Adam path for 1-D parameters.
        damping: :math:`\epsilon` added to the factors' eigenvalues before the root.
        damping_mode: ``"absolute"`` or ``"relative"`` (times the largest eigenvalue).
        eps: Adam's epsilon (grafting and Adam path).
        weight_decay: decoupled weight decay :math:`W \leftarrow (1 - \eta\lambda) W`.
        momentum, nesterov: heavy-ball momentum on the preconditioned direction.
        accumulation: ``"sum"`` (original Shampoo) or ``"ema"`` with ``statistics_decay``.
        refresh_every: steps between root recomputations (exact mode: 1).
        statistics_every: steps between statistic updates.
        start_preconditioning_step: first step that uses the Shampoo direction (exact mode: 1).
        grafting: ``"adam"``, ``"sgd"`` or ``"none"`` (exact mode: ``"none"``).
        max_preconditioner_dim: sides longer than this keep a diagonal statistic.
        root: root order p; ``None`` for Shampoo's 2 x (number of preconditioned sides).
        precondition_dtype: precision of the per-step products that apply the preconditioner
            (``None``: the parameters' dtype; ``"bfloat16"``: several times faster where bf16
            matrix units exist, the direction then carries bf16 round-off, ~4e-3 relative;
            statistics and decompositions stay in the parameters' dtype). Exact mode: ``None``.
        adam_lr_ratio: the Adam path's learning rate is ``lr * adam_lr_ratio`` (a ratio, so
            LR schedulers scale both paths).
        exact: the exact mode described in the module docstring.

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> opt = Shampoo(model.parameters(), lr=1e-2)
        >>> model(torch.randn(8, 4)).square().mean().backward(); opt.step()
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        damping: float = 1e-12,
        damping_mode: str = "absolute",
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        nesterov: bool = False,
        accumulation: str = "ema",
        statistics_decay: float = 0.999,
        refresh_every: int | None = None,
        statistics_every: int = 1,
        start_preconditioning_step: int | None = None,
        grafting: str | None = None,
        max_preconditioner_dim: int = 2048,
        root: float | None = None,
        precondition_dtype: str | None = None,
        adam_lr_ratio: float = 1.0,
        exact: bool = False,
    ) -> None:
        mode = resolve_mode(
            exact,
            amortized={
                "refresh_every": 10,
                "start_preconditioning_step": 1,
                "grafting": "adam",
                "precondition_dtype": None,
            },
            exact_values={
                "refresh_every": 1,
                "start_preconditioning_step": 1,
                "grafting": "none",
                "precondition_dtype": None,
            },
            given={
                "refresh_every": refresh_every,
                "start_preconditioning_step": start_preconditioning_step,
                "grafting": grafting,
                "precondition_dtype": precondition_dtype,
            },
        )
        if damping < 0:
            raise ValueError(f"Invalid damping: {damping!r}")
        if mode["start_preconditioning_step"] < 1:
            raise ValueError(
                f"Invalid start_preconditioning_step: {mode['start_preconditioning_step']!r}"
            )
        defaults = dict(
            lr=lr,
            betas=betas,
            damping=damping,
            damping_mode=Damping(damping_mode),
            eps=eps,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            accumulation=Accumulation(accumulation),
            statistics_decay=statistics_decay,
            refresh_every=mode["refresh_every"],
            statistics_every=statistics_every,
            start_preconditioning_step=mode["start_preconditioning_step"],
            grafting=Grafting(mode["grafting"]),
            max_preconditioner_dim=max_preconditioner_dim,
            root=root,
            precondition_dtype=mode["precondition_dtype"],
            adam_lr_ratio=adam_lr_ratio,
            exact=exact,
        )
        super().__init__(params, defaults)

    def kronecker_config(self, group: dict[str, Any]) -> KroneckerConfig:
        return KroneckerConfig(
            transform=InverseRoot(
                root=group["root"],
                damping=group["damping"],
                damping_mode=group["damping_mode"],
                compute_dtype=compute_dtype(group["precondition_dtype"], knob="precondition_dtype"),
            ),
            accumulation=group["accumulation"],
            decay=group["statistics_decay"] if group["accumulation"] == Accumulation.EMA else 0.0,
            max_preconditioner_dim=group["max_preconditioner_dim"],
        )

    def postprocess(
        self,
        group: dict[str, Any],
        state: dict[str, Any],
        direction: Tensor,
        first_moment: Tensor,
        grad: Tensor,
    ) -> Direction:
        before_start = state[STEP] < group["start_preconditioning_step"]
        match Grafting(group["grafting"]):
            case Grafting.NONE:
                return Direction(first_moment if before_start else direction)
            case Grafting.SGD:
                grafted = Direction(first_moment)
            case Grafting.ADAM:
                grafted = adam_direction(
                    state, first_moment, grad, group["betas"][1], group["eps"], state[STEP]
                )
        if before_start:
            return grafted
        # The graft's norm as the direction's factor (0-D: no synchronization, no pass).
        norm = torch.linalg.matrix_norm(direction)
        grafted_norm = torch.linalg.matrix_norm(grafted.tensor) * grafted.factor
        return Direction(direction, torch.where(norm > 0, grafted_norm / norm, 0.0))


__all__ = ["Grafting", "Shampoo"]
