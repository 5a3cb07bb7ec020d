"""Validated settings of the deep linear representation problem and its methods' parameters.

``DeepLinrepSettings`` is linrep's grid point (:class:`~layerwise.problems.linrep.settings.
LinrepSettings`: the same instance family, data stream, budget and tuning grid) plus ``depth``,
the number L of representation layers G_1 … G_L of the student ``x ↦ F G_L ⋯ G_1 x``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from layerwise.problems.linrep.settings import AdamParams, LinrepSettings, SgdParams, _Params


class DeepLinrepSettings(LinrepSettings):
    """One grid point: linrep's settings and the number of representation layers ``depth``.

    The teacher is linrep's ``y = F⋆ G⋆ x + ε`` (G⋆ (k, d) with orthonormal rows, κ(Σx),
    κ(F⋆), rotated or axis-aligned basis); the student is ``F G_L ⋯ G_1`` with G_1 (k, d),
    G_2 … G_L (k, k) and F (dy, k).
    """

    depth: int = Field(2, ge=1, le=16, description="number L of representation layers")


class DeepSgdParams(SgdParams):
    """Simultaneous gradient steps on every layer (G_1 … G_L and F)."""


class DeepAdamParams(AdamParams):
    """Adam on every layer jointly (there is no least-squares head in the deep model)."""

    head: Literal["joint"] = "joint"


class DeepKfacParams(_Params):
    """Layer-wise Gauss–Newton with exact per-batch Kronecker factors on every layer.

    Undamped: the input factor of G_1 is Σ̂x, invertible when n > d (refused otherwise), and
    the other factors are k × k Gram matrices of full-rank layers, so no damping is needed and
    the step is the exact block Gauss–Newton step.
    """


class DeepLibraryKfacParams(_Params):
    """``layerwise.optim.KFAC(model, lr, loss="mse", curvature="ggn", exact=True)`` on the
    ``nn.Sequential`` of bias-free linear layers: per-batch factors, no EMA, no damping."""


METHOD_MODELS: dict[str, type[BaseModel]] = {
    "sgd": DeepSgdParams,
    "adam": DeepAdamParams,
    "kfac": DeepKfacParams,
    "library_kfac": DeepLibraryKfacParams,
}


def check_method(settings: BaseModel, algorithm: str, params: BaseModel) -> None:
    """Refuse kfac and library_kfac (both undamped) at n <= d, where Σ̂x, the input factor of
    G_1, is singular."""
    if algorithm in ("kfac", "library_kfac") and settings.n <= settings.d:
        raise ValueError(
            f"n={settings.n} too small for undamped {algorithm}: Σ̂x is singular unless "
            f"n > d={settings.d}"
        )
