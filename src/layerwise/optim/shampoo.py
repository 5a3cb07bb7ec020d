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

The composition: :class:`~layerwise.optim.statistics.GradientProducts` x sum or EMA x
:class:`~layerwise.optim.transforms.InverseRoot`, with :class:`~layerwise.optim.policies.Graft`
and :class:`~layerwise.optim.policies.HeavyBall`. Parameter rules: 1-D parameters take the Adam
path, >2-D ones are viewed as matrices (:mod:`layerwise.optim.base`); a dimension-1 side is
skipped, so a 1 x n parameter gets the one-sided update :math:`\hat M (R + \epsilon I)^{-1/2}`
(full-matrix AdaGrad); a side longer than ``max_preconditioner_dim`` gets a diagonal statistic.
``sides="input"`` (or ``"output"``) preconditions one side only, with the root p = 2.

Exact mode (``exact=True``): roots recomputed from the current statistics at every step, no
grafting, preconditioning from step 1, full precision.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from layerwise.optim.base import PRECISION_MODE, LayerwiseOptimizer, ModeDefault, adam_path, knobs
from layerwise.optim.kronecker import AUTO
from layerwise.optim.parts import Parts
from layerwise.optim.policies import FirstMoment, Graft, Grafting, HeavyBall
from layerwise.optim.statistics import GradientProducts
from layerwise.optim.transforms import InverseRoot


class Shampoo(LayerwiseOptimizer):
    r"""Shampoo as a ``torch.optim.Optimizer``; every argument can be set per param group.

    Args:
        params: parameters or param groups.
        lr: learning rate :math:`\eta`.
        betas: (beta1, beta2): beta1 filters the gradient (bias-corrected EMA fed to the
            preconditioner; 0 feeds the raw gradient), beta2 is the second-moment decay of the
            Adam grafting and of the Adam path for 1-D parameters.
        damping: :math:`\epsilon` added to the factors' eigenvalues before the root.
        damping_mode: ``"absolute"`` or ``"relative"`` (times the largest eigenvalue).
        eps: Adam's epsilon (grafting and Adam path).
        weight_decay: decoupled weight decay :math:`W \leftarrow (1 - \eta\lambda) W`.
        momentum, nesterov: heavy-ball momentum on the preconditioned direction (with
            ``momentum=0``, ``nesterov`` acts on the first moment).
        accumulation: ``"sum"`` (original Shampoo), ``"ema"`` with ``statistics_decay``, or
            ``"latest"``.
        refresh_every: steps between root recomputations (default 10; exact mode: 1).
        statistics_every: steps between statistic updates.
        start_preconditioning_step: first step that uses the Shampoo direction.
        grafting: ``"adam"`` (default), ``"sgd"`` or ``"none"`` (exact mode: ``"none"``).
        sides: ``"both"``, ``"input"`` or ``"output"`` (one-sided Shampoo).
        max_preconditioner_dim: sides longer than this keep a diagonal statistic.
        root: root order p; ``None`` for Shampoo's 2 x (number of preconditioned sides).
        precondition_dtype: precision of the per-step products that apply the roots:
            ``"auto"`` (bf16 for float32 parameters, their own dtype otherwise), ``None``
            (always the parameters' dtype) or a dtype name; see :mod:`layerwise.optim.parts`.
        adam_lr_ratio: the Adam path's learning rate is ``lr * adam_lr_ratio``.
        maximize: ascend instead of descend (the gradient is negated), as ``torch.optim``.
        exact: the exact mode of the module docstring.
        process_group, distributed: data-parallel training
            (:mod:`layerwise.optim.distributed`): ``"replicate"`` (every rank does all the
            work), ``"split"`` (each block's refresh on one rank, broadcast) or
            ``"shard"`` (each matrix's whole step on one rank, which alone keeps its state,
            the directions broadcast; ``consolidated_state_dict()`` gathers all of it).

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> opt = Shampoo(model.parameters(), lr=1e-2)
        >>> model(torch.randn(8, 4)).square().mean().backward(); opt.step()
    """

    MODE: ClassVar[dict[str, ModeDefault]] = {
        "precondition_dtype": PRECISION_MODE,
        "refresh_every": ModeDefault(10, 1),
        "start_preconditioning_step": ModeDefault(1, 1),
        "grafting": ModeDefault("adam", "none"),
    }

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
        sides: str = "both",
        max_preconditioner_dim: int = 2048,
        root: float | None = None,
        precondition_dtype: str | None = AUTO,
        adam_lr_ratio: float = 1.0,
        maximize: bool = False,
        exact: bool = False,
        process_group: Any = "auto",
        distributed: str = "replicate",
    ) -> None:
        super().__init__(
            params, knobs(locals()), process_group=process_group, distributed=distributed
        )

    @staticmethod
    def compose(group: dict[str, Any]) -> Parts:
        beta1, beta2 = group["betas"]
        return Parts(
            statistics=GradientProducts(),
            transform=InverseRoot(
                root=group["root"],
                damping=group["damping"],
                damping_mode=group["damping_mode"],
                compute_dtype=group["precondition_dtype"],
            ),
            accumulation=group["accumulation"],
            statistics_decay=group["statistics_decay"],
            statistics_every=group["statistics_every"],
            refresh_every=group["refresh_every"],
            sides=group.get("sides", "both"),
            max_preconditioner_dim=group["max_preconditioner_dim"],
            # Nesterov acts on the heavy ball when there is one, else on the first moment.
            first_moment=FirstMoment(
                beta=beta1, nesterov=group["nesterov"] and not group["momentum"]
            ),
            heavy_ball=HeavyBall(momentum=group["momentum"], nesterov=group["nesterov"]),
            graft=Graft(
                method=group["grafting"],
                beta2=beta2,
                eps=group["eps"],
                start_preconditioning_step=group["start_preconditioning_step"],
            ),
            adam=adam_path(group),
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
        )


__all__ = ["Grafting", "Shampoo"]
