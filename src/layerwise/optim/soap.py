r"""SOAP (Vyas et al., 2024): Adam run in the eigenbasis of Shampoo's statistics.

.. math::
    L \leftarrow \beta_s L + (1 - \beta_s) G G^\top, \quad
    R \leftarrow \beta_s R + (1 - \beta_s) G^\top G, \quad
    Q_L, Q_R = \operatorname{eig}(L), \operatorname{eig}(R) \ \text{every } k \text{ steps},

    \tilde G = Q_L^\top G Q_R, \quad
    V \leftarrow \beta_2 V + (1 - \beta_2) \tilde G^{\odot 2}, \quad
    D = Q_L \frac{Q_L^\top \hat M Q_R}{\sqrt{V / (1 - \beta_2^t)} + \epsilon} Q_R^\top,

with :math:`\hat M` the bias-corrected EMA of the gradient (in the original coordinates,
projected each step). With an identity basis this is exactly AdamW; that happens when every
side is longer than ``max_preconditioner_dim`` (or has dimension 1).

Bases come from ``eigh`` (float64 retry); exact mode (``exact=True``) recomputes them at every
step. ``basis_refresh="power_qr"`` refreshes them instead as the reference implementation
does, by one power-iteration step and a QR from the previous basis, reordering the second
moment with it (:class:`~layerwise.optim.kronecker.BasisRefresh`). Where this departs from the
reference: by default the bases are exact eigenbases, and they come from the first step's
statistics and the first step is taken (the reference skips it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from layerwise.optim._modes import compute_dtype, resolve_mode
from layerwise.optim.base import LayerwiseOptimizer
from layerwise.optim.kronecker import (
    Accumulation,
    BasisRefresh,
    EigenbasisAdam,
    KroneckerConfig,
)


class SOAP(LayerwiseOptimizer):
    r"""SOAP as a ``torch.optim.Optimizer``; every argument can be set per param group.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: Adam's (beta1, beta2), in the eigenbasis (and on the Adam path for 1-D params).
        eps: Adam's epsilon.
        weight_decay: decoupled weight decay (AdamW style).
        statistics_decay: EMA decay :math:`\beta_s` of :math:`L` and :math:`R`.
        refresh_every: steps between eigenbasis recomputations (exact mode: 1).
        basis_refresh: ``"eigh"`` (exact eigenvectors; the default, and exact mode) or
            ``"power_qr"`` (after a first ``eigh``, one power-iteration step and a QR from the
            previous basis, as Vyas et al.'s implementation; see
            :class:`~layerwise.optim.kronecker.BasisRefresh`). On the benchmark CPU a QR of a
            1024² matrix costs as much as its ``eigh`` (36–43 against 35–55 ms), so ``eigh``
            stays the default here.
        statistics_every: steps between statistic updates.
        max_preconditioner_dim: sides longer than this use the identity basis.
        precondition_dtype: precision of the per-step rotations into and out of the eigenbasis
            (``None``: the parameters' dtype; ``"bfloat16"``: several times faster where bf16
            matrix units exist, the direction then carries bf16 round-off, ~4e-3 relative;
            statistics and decompositions stay in the parameters' dtype). Exact mode: ``None``.
        adam_lr_ratio: the Adam path's learning rate is ``lr * adam_lr_ratio`` (a ratio, so
            LR schedulers scale both paths).
        exact: recompute the eigenbases at every step.

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> opt = SOAP(model.parameters(), lr=3e-3)
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 3e-3,
        *,
        betas: tuple[float, float] = (0.95, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        statistics_decay: float = 0.95,
        refresh_every: int | None = None,
        basis_refresh: str | None = None,
        statistics_every: int = 1,
        max_preconditioner_dim: int = 10000,
        precondition_dtype: str | None = None,
        adam_lr_ratio: float = 1.0,
        exact: bool = False,
    ) -> None:
        mode = resolve_mode(
            exact,
            amortized={
                "refresh_every": 10,
                "basis_refresh": BasisRefresh.EIGH,
                "precondition_dtype": None,
            },
            exact_values={
                "refresh_every": 1,
                "basis_refresh": BasisRefresh.EIGH,
                "precondition_dtype": None,
            },
            given={
                "refresh_every": refresh_every,
                "basis_refresh": None if basis_refresh is None else BasisRefresh(basis_refresh),
                "precondition_dtype": precondition_dtype,
            },
        )
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            statistics_decay=statistics_decay,
            refresh_every=mode["refresh_every"],
            basis_refresh=mode["basis_refresh"],
            statistics_every=statistics_every,
            max_preconditioner_dim=max_preconditioner_dim,
            precondition_dtype=mode["precondition_dtype"],
            adam_lr_ratio=adam_lr_ratio,
            exact=exact,
        )
        super().__init__(params, defaults)

    def kronecker_config(self, group: dict[str, Any]) -> KroneckerConfig:
        return KroneckerConfig(
            # The first moment is the shell's bias-corrected EMA with betas[0], so the
            # preconditioner may keep it in the eigenbasis (two products per step fewer).
            transform=EigenbasisAdam(
                beta2=group["betas"][1],
                epsilon=group["eps"],
                first_moment_decay=group["betas"][0],
                basis_refresh=group["basis_refresh"],
                compute_dtype=compute_dtype(group["precondition_dtype"], knob="precondition_dtype"),
            ),
            accumulation=Accumulation.EMA,
            decay=group["statistics_decay"],
            max_preconditioner_dim=group["max_preconditioner_dim"],
        )
