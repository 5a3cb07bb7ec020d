r"""Muon (Jordan et al., 2024): orthogonalized momentum.

.. math::
    B \leftarrow \mu B + (1 - \mu) G, \qquad
    N = \mu B + (1 - \mu) G \ \text{(Nesterov) or } B, \qquad
    W \leftarrow (1 - \eta\lambda) W - \eta\, s(m, n)\, \operatorname{polar}(N),

with :math:`\operatorname{polar}(N) = U V^\top` from :math:`N = U S V^\top` (exact SVD in exact
mode, a quintic Newton–Schulz iteration otherwise), and the shape scale :math:`s` chosen by
``scale``: ``"shape"`` :math:`\sqrt{\max(1, m/n)}` (Jordan et al.), ``"rms"``
:math:`0.2\sqrt{\max(m, n)}` (matches AdamW's update RMS, Liu et al. 2025), ``"none"`` 1.
Muon is Shampoo without accumulation: :math:`(NN^\top)^{-1/4} N (N^\top N)^{-1/4} = UV^\top`.

1-D parameters take the Adam path (:mod:`layerwise.optim.base`) at ``lr * adam_lr_ratio``;
>2-D parameters are viewed as ``(shape[0], prod(shape[1:]))`` matrices.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from typing import Any

from torch import Tensor

from layerwise.optim._modes import compute_dtype, resolve_mode
from layerwise.optim.base import Direction, LayerwiseOptimizer
from layerwise.optim.kronecker import KroneckerConfig, Orthogonalize, PolarMethod
from layerwise.optim.matrix import NEWTON_SCHULZ_QUINTIC


class MuonScale(enum.StrEnum):
    SHAPE = "shape"
    RMS = "rms"
    NONE = "none"


def muon_scale(scale: MuonScale | str, shape: tuple[int, ...]) -> float:
    """The shape scale s(m, n) of the module docstring for an ``(m, n)`` update."""
    m, n = shape
    match MuonScale(scale):
        case MuonScale.SHAPE:
            return math.sqrt(max(1.0, m / n))
        case MuonScale.RMS:
            return 0.2 * math.sqrt(max(m, n))
        case MuonScale.NONE:
            return 1.0
    raise AssertionError  # unreachable: MuonScale refuses other values


class Muon(LayerwiseOptimizer):
    r"""Muon as a ``torch.optim.Optimizer``; every argument can be set per param group.

    Args:
        params: parameters or param groups.
        lr: learning rate of matrix parameters.
        momentum: :math:`\mu` (no bias correction: the polar factor is scale-free).
        nesterov: use the Nesterov form :math:`\mu B + (1 - \mu) G`.
        weight_decay: decoupled weight decay.
        polar: ``"newton_schulz"`` or ``"svd"`` (exact mode: ``"svd"``).
        ns_coefficients, ns_steps: the Newton–Schulz iteration.
        ns_dtype: precision of the Newton–Schulz iteration: ``None`` (the parameters' dtype)
            or e.g. ``"bfloat16"`` (what Jordan et al. and ``torch.optim.Muon`` use: several
            times faster where bf16 matrix units exist, the polar factor then carries bf16
            round-off, ~4e-3). The result and the update are in the parameters' dtype.
        scale: ``"shape"``, ``"rms"`` or ``"none"`` (module docstring).
        adam_lr_ratio, betas, eps: the Adam path for non-matrix parameters, at learning rate
            ``lr * adam_lr_ratio`` (default 0.05: 1e-3 at the default lr).
        exact: exact polar factor by SVD.

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> opt = Muon(model.parameters(), lr=0.02)
    """

    first_moment_bias_correction = False

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.02,
        *,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        polar: str | None = None,
        ns_coefficients: tuple[float, float, float] = NEWTON_SCHULZ_QUINTIC,
        ns_steps: int = 5,
        ns_dtype: str | None = None,
        scale: str = "shape",
        adam_lr_ratio: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        exact: bool = False,
    ) -> None:
        mode = resolve_mode(
            exact,
            amortized={"polar": PolarMethod.NEWTON_SCHULZ},
            exact_values={"polar": PolarMethod.SVD},
            given={"polar": None if polar is None else PolarMethod(polar)},
        )
        compute_dtype(ns_dtype, knob="ns_dtype")  # refuses an unknown name
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum: {momentum!r}")
        defaults = dict(
            lr=lr,
            muon_momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            polar=mode["polar"],
            ns_coefficients=tuple(ns_coefficients),
            ns_steps=ns_steps,
            ns_dtype=ns_dtype,
            scale=MuonScale(scale),
            adam_lr_ratio=adam_lr_ratio,
            betas=betas,
            eps=eps,
            refresh_every=1,
            statistics_every=1,
            exact=exact,
        )
        super().__init__(params, defaults)

    def first_moment_beta(self, group: dict[str, Any]) -> float:
        return group["muon_momentum"]

    def heavy_ball(self, group: dict[str, Any]) -> float:
        return 0.0

    def kronecker_config(self, group: dict[str, Any]) -> KroneckerConfig:
        return KroneckerConfig(
            transform=Orthogonalize(
                method=group["polar"],
                coefficients=group["ns_coefficients"],
                steps=group["ns_steps"],
                compute_dtype=compute_dtype(group["ns_dtype"], knob="ns_dtype"),
            )
        )

    def postprocess(
        self,
        group: dict[str, Any],
        state: dict[str, Any],
        direction: Tensor,
        first_moment: Tensor,
        grad: Tensor,
    ) -> Direction:
        return Direction(direction, muon_scale(group["scale"], tuple(direction.shape)))
