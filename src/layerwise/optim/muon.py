r"""Muon (Jordan et al., 2024): orthogonalized momentum.

.. math::
    B \leftarrow \mu B + (1 - \mu) G, \qquad
    N = \mu B + (1 - \mu) G \ \text{(Nesterov) or } B, \qquad
    W \leftarrow (1 - \eta\lambda) W - \eta\, s(m, n)\, \operatorname{polar}(N),

with :math:`\operatorname{polar}(N) = U V^\top` from :math:`N = U S V^\top` (exact SVD in exact
mode, a quintic Newton–Schulz iteration in bf16 otherwise, as ``torch.optim.Muon``) and the
shape scale :math:`s` of :class:`~layerwise.optim.policies.UpdateScale`. Muon is Shampoo without
accumulation: :math:`(NN^\top)^{-1/4} N (N^\top N)^{-1/4} = UV^\top`.

The composition: no statistics x :class:`~layerwise.optim.transforms.Orthogonalize`, with an
un-bias-corrected :class:`~layerwise.optim.policies.FirstMoment` (the polar factor is
scale-free). 1-D parameters take the Adam path at ``lr * adam_lr_ratio``; >2-D parameters are
viewed as ``(shape[0], prod(shape[1:]))`` matrices.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from layerwise.optim.base import PRECISION_MODE, LayerwiseOptimizer, ModeDefault, knobs
from layerwise.optim.kronecker import AUTO
from layerwise.optim.matrix import NEWTON_SCHULZ_QUINTIC
from layerwise.optim.parts import Parts
from layerwise.optim.policies import AdamPath, FirstMoment, UpdateScale
from layerwise.optim.transforms import Orthogonalize

#: The name checkpoints of earlier versions pickled the shape-scale enum under.
MuonScale = UpdateScale


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
        ns_dtype: precision of the Newton–Schulz iteration: ``"auto"`` (bf16 for float32
            parameters, as Jordan et al. and ``torch.optim.Muon``), ``None`` (the parameters'
            dtype) or a dtype name; see :mod:`layerwise.optim.parts`.
        scale: ``"shape"``, ``"rms"`` or ``"none"``
            (:class:`~layerwise.optim.policies.UpdateScale`).
        adam_lr_ratio, adam_betas, eps: the Adam path for non-matrix parameters, at learning
            rate ``lr * adam_lr_ratio`` (default 0.05: 1e-3 at the default lr). The Adam betas
            are not called ``betas``, so that a momentum-cycling scheduler (``OneCycleLR``,
            ``CyclicLR``) cycles ``momentum``, the matrix momentum.
        maximize: ascend instead of descend (the gradient is negated), as ``torch.optim``.
        exact: exact polar factor by SVD.
        process_group, distributed: data-parallel training
            (:mod:`layerwise.optim.distributed`): ``"replicate"`` (every rank does all the
            work), ``"split"`` (each block's Newton–Schulz on one rank, broadcast) or
            ``"shard"`` (each matrix's whole step on one rank, which alone keeps its state,
            the directions broadcast; ``consolidated_state_dict()`` gathers all of it).

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> opt = Muon(model.parameters(), lr=0.02)
    """

    MODE: ClassVar[dict[str, ModeDefault]] = {
        "ns_dtype": PRECISION_MODE,
        "polar": ModeDefault("newton_schulz", "svd"),
    }
    RENAMED_KNOBS: ClassVar[dict[str, str]] = {"muon_momentum": "momentum", "betas": "adam_betas"}

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
        ns_dtype: str | None = AUTO,
        scale: str = "shape",
        adam_lr_ratio: float = 0.05,
        adam_betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
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
        return Parts(
            statistics=None,
            transform=Orthogonalize(
                method=group["polar"],
                coefficients=group["ns_coefficients"],
                steps=group["ns_steps"],
                compute_dtype=group["ns_dtype"],
            ),
            first_moment=FirstMoment(
                beta=group["momentum"], nesterov=group["nesterov"], bias_correction=False
            ),
            scale=group["scale"],
            adam=AdamPath(
                betas=group["adam_betas"], eps=group["eps"], lr_ratio=group["adam_lr_ratio"]
            ),
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
        )


__all__ = ["Muon", "MuonScale"]
