r"""SOAP (Vyas et al., 2024): Adam run in the eigenbasis of Shampoo's statistics.

.. math::
    L \leftarrow \beta_s L + (1 - \beta_s) G G^\top, \quad
    R \leftarrow \beta_s R + (1 - \beta_s) G^\top G, \quad
    Q_L, Q_R = \operatorname{eig}(L), \operatorname{eig}(R) \ \text{every } k \text{ steps},

    \tilde G = Q_L^\top G Q_R, \quad
    V \leftarrow \beta_2 V + (1 - \beta_2) \tilde G^{\odot 2}, \quad
    D = Q_L \frac{Q_L^\top \hat M Q_R}{\sqrt{V / (1 - \beta_2^t)} + \epsilon} Q_R^\top,

with :math:`\hat M` the bias-corrected EMA of the gradient (kept in the eigenbasis between
refreshes). With an identity basis this is exactly AdamW; that happens when every side is longer
than ``max_preconditioner_dim`` (or has dimension 1).

The composition: :class:`~layerwise.optim.statistics.GradientProducts` x EMA x
:class:`~layerwise.optim.transforms.EigenbasisAdam`. Bases come from ``eigh`` (float64 retry);
inside degenerate eigenspaces (the null space of early, rank-deficient statistics) they are the
basis closest to the previous one (:func:`~layerwise.optim.matrix.stable_eigenbasis`), so that
round-off does not choose them and runs agree across world sizes and batch splits. Exact mode
(``exact=True``) recomputes them at every step. ``basis_refresh="power_qr"`` refreshes
them as the reference implementation does, by one power-iteration step and a QR from the
previous basis (:class:`~layerwise.optim.transforms.BasisRefresh`). Where this departs from the
reference: by default the bases are exact eigenbases, and they come from the first step's
statistics and the first step is taken (the reference skips it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from layerwise.optim.base import PRECISION_MODE, LayerwiseOptimizer, ModeDefault, adam_path, knobs
from layerwise.optim.kronecker import AUTO
from layerwise.optim.parts import Parts
from layerwise.optim.policies import FirstMoment
from layerwise.optim.statistics import GradientProducts
from layerwise.optim.transforms import EigenbasisAdam


class SOAP(LayerwiseOptimizer):
    r"""SOAP as a ``torch.optim.Optimizer``; every argument can be set per param group.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: Adam's (beta1, beta2), in the eigenbasis (and on the Adam path for 1-D params).
        eps: Adam's epsilon.
        weight_decay: decoupled weight decay (AdamW style).
        statistics_decay: EMA decay :math:`\beta_s` of :math:`L` and :math:`R`.
        refresh_every: steps between eigenbasis recomputations (default 10; exact mode: 1).
        basis_refresh: ``"eigh"`` (exact eigenvectors; the default, and exact mode) or
            ``"power_qr"``. On the benchmark CPU a QR of a 1024² matrix costs as much as its
            ``eigh`` (36–43 against 35–55 ms), so ``eigh`` stays the default here.
        statistics_every: steps between statistic updates.
        sides: ``"both"``, ``"input"`` or ``"output"`` (a one-sided eigenbasis).
        max_preconditioner_dim: sides longer than this use the identity basis.
        precondition_dtype: precision of the rotation back out of the eigenbasis (``"auto"``:
            bf16 for float32 parameters; see :mod:`layerwise.optim.parts`).
        adam_lr_ratio: the Adam path's learning rate is ``lr * adam_lr_ratio``.
        maximize: ascend instead of descend (the gradient is negated), as ``torch.optim``.
        exact: recompute the eigenbases at every step, in full precision.
        process_group, distributed: data-parallel training
            (:mod:`layerwise.optim.distributed`): ``"replicate"`` (every rank does all the
            work), ``"split"`` (each block's refresh on one rank, broadcast) or
            ``"shard"`` (each matrix's whole step on one rank, which alone keeps its state,
            the directions broadcast; ``consolidated_state_dict()`` gathers all of it).

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> opt = SOAP(model.parameters(), lr=3e-3)
    """

    MODE: ClassVar[dict[str, ModeDefault]] = {
        "precondition_dtype": PRECISION_MODE,
        "refresh_every": ModeDefault(10, 1),
        "basis_refresh": ModeDefault("eigh", "eigh"),
    }

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
        sides: str = "both",
        max_preconditioner_dim: int = 10000,
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
            # The first moment is the shell's bias-corrected EMA with beta1, so the transform
            # may keep it in the eigenbasis (two products per step fewer).
            transform=EigenbasisAdam(
                beta2=beta2,
                epsilon=group["eps"],
                first_moment_decay=beta1,
                basis_refresh=group["basis_refresh"],
                compute_dtype=group["precondition_dtype"],
            ),
            accumulation="ema",
            statistics_decay=group["statistics_decay"],
            statistics_every=group["statistics_every"],
            refresh_every=group["refresh_every"],
            sides=group.get("sides", "both"),
            max_preconditioner_dim=group["max_preconditioner_dim"],
            first_moment=FirstMoment(beta=beta1),
            adam=adam_path(group),
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
        )
