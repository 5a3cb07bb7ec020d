r"""The per-layer Kronecker state every layer-wise method shares: sides, keys, accumulation,
and the :class:`Transform` protocol.

For a matrix parameter (a *block*) :math:`W \in \mathbb{R}^{m \times n}` every layer-wise method
keeps a *left* statistic :math:`L` (m x m) and a *right* statistic :math:`R` (n x n) and
preconditions a direction :math:`X` (the gradient, or its momentum) as
:math:`X \mapsto \mathcal{P}_{L,R}(X)`. A method is three independent parts
(:class:`~layerwise.optim.parts.Parts`):

=========  =================================  ======================  ==========================
method     statistics (increments)            accumulation            transform
=========  =================================  ======================  ==========================
Shampoo    :math:`GG^\top`, :math:`G^\top G`  sum or EMA              ``InverseRoot`` (p=4)
SOAP       :math:`GG^\top`, :math:`G^\top G`  EMA                     ``EigenbasisAdam``
Muon       none                               none                    ``Orthogonalize``
KFAC       :math:`E[gg^\top]`, :math:`E[aa^\top]`  EMA or latest batch  ``InverseRoot`` (p=1)
EKFAC      as KFAC                            EMA or latest batch     ``EigenbasisAdam``
=========  =================================  ======================  ==========================

Sides (:class:`Side`). Each side of a block is dense, diagonal (longer than
``max_preconditioner_dim``: an AdaGrad-like diagonal statistic, identity eigenbasis), scalar
(size 1, for statistics whose scalar carries information: KFAC's output factor of a one-output
layer) or absent (size 1 otherwise, switched off by ``sides``, or a transform without
statistics). The statistic of a side lives under :data:`STATISTIC_KEYS` as a (d, d), (d,) or 0-D
tensor; its preconditioner (if the transform keeps one) under :data:`PRECONDITIONER_KEYS`.
"""

from __future__ import annotations

import abc
import enum
from typing import Any, ClassVar

import torch
from torch import Tensor

from layerwise.optim.matrix import (
    DecompositionError,  # noqa: F401  (re-exported for callers)
    Workspace,
)

# State keys (constants, so that parts, tests and checkpoints agree on them). The shell's:
STEP = "step"
EXP_AVG = "exp_avg"
EXP_AVG_SQ = "exp_avg_sq"
MOMENTUM_BUFFER = "momentum_buffer"
SKIPPED_STEPS = "skipped_steps"
# The preconditioner's:
LEFT_STATISTIC = "left_statistic"
RIGHT_STATISTIC = "right_statistic"
LEFT_PRECONDITIONER = "left_preconditioner"
RIGHT_PRECONDITIONER = "right_preconditioner"
EIGENBASIS_EXP_AVG_SQ = "eigenbasis_exp_avg_sq"
EIGENBASIS_EXP_AVG = "eigenbasis_exp_avg"
EIGENBASIS_READY = "eigenbasis_ready"
STATISTICS_UPDATES = "statistics_updates"
FAILED_REFRESHES = "failed_refreshes"
CONSECUTIVE_FAILURES = "consecutive_failed_refreshes"

STATISTIC_KEYS = (LEFT_STATISTIC, RIGHT_STATISTIC)
PRECONDITIONER_KEYS = (LEFT_PRECONDITIONER, RIGHT_PRECONDITIONER)


class Side(enum.StrEnum):
    """How one side of a block is preconditioned (module docstring)."""

    DENSE = "dense"
    DIAGONAL = "diagonal"
    SCALAR = "scalar"
    NONE = "none"


#: The (left, right) sides of a block.
SideLayout = tuple[Side, Side]


class Sides(enum.StrEnum):
    """Which sides precondition: both, the output (left, rows) side only, or the input (right,
    columns) side only. ``"left"`` and ``"right"`` are accepted for ``"output"`` and ``"input"``
    (for an ``nn.Linear`` weight ``(out, in)`` they are the same sides)."""

    BOTH = "both"
    OUTPUT = "output"
    INPUT = "input"

    @classmethod
    def _missing_(cls, value: object) -> Sides | None:
        return {"left": cls.OUTPUT, "right": cls.INPUT}.get(str(value).lower())

    @property
    def active(self) -> tuple[bool, bool]:
        return self is not Sides.INPUT, self is not Sides.OUTPUT


def side_layout(
    shape: tuple[int, int],
    *,
    sides: Sides,
    max_preconditioner_dim: int,
    scalar_sides: bool,
) -> SideLayout:
    """The :class:`Side` of each side of an ``(m, n)`` block (module docstring);
    ``scalar_sides``: whether a side of size 1 keeps its (scalar) statistic."""
    layout = []
    for size, active in zip(shape, Sides(sides).active, strict=True):
        if not active:
            layout.append(Side.NONE)
        elif size == 1:
            layout.append(Side.SCALAR if scalar_sides else Side.NONE)
        elif size > max_preconditioner_dim:
            layout.append(Side.DIAGONAL)
        else:
            layout.append(Side.DENSE)
    return layout[0], layout[1]


class Accumulation(enum.StrEnum):
    """How statistic increments :math:`\\Delta` are accumulated into :math:`S`.

    ``sum``: :math:`S \\leftarrow S + \\Delta` (original Shampoo / AdaGrad);
    ``ema``: :math:`S \\leftarrow \\beta S + (1 - \\beta)\\Delta`;
    ``latest``: :math:`S \\leftarrow \\Delta` (exact per-batch factors, no memory).
    """

    SUM = "sum"
    EMA = "ema"
    LATEST = "latest"


def accumulation_weights(accumulation: Accumulation, decay: float) -> tuple[float, float]:
    r"""``(β, α)`` with which ``accumulation`` is :math:`S \leftarrow \beta S + \alpha \Delta`
    (for fused products; β = 0 means the old value is ignored)."""
    return {
        Accumulation.SUM: (1.0, 1.0),
        Accumulation.EMA: (decay, 1.0 - decay),
        Accumulation.LATEST: (0.0, 1.0),
    }[accumulation]


def accumulate_increment(
    accumulation: Accumulation, decay: float, statistic: Tensor, increment: Tensor
) -> None:
    """Fold one increment into one statistic in place."""
    match accumulation:
        case Accumulation.SUM:
            statistic.add_(increment)
        case Accumulation.EMA:
            statistic.lerp_(increment.to(statistic.dtype), 1.0 - decay)
        case Accumulation.LATEST:
            statistic.copy_(increment)
        case other:  # pragma: no cover - the enum refuses other values
            raise ValueError(f"unknown accumulation {other!r}")


def init_statistics(layout: SideLayout, shape: tuple[int, int], like: Tensor) -> dict[str, Tensor]:
    """Zero statistics for the sides of ``layout`` (in ``like``'s dtype and device)."""
    options = {"dtype": like.dtype, "device": like.device}
    state = {}
    for key, size, side in zip(STATISTIC_KEYS, shape, layout, strict=True):
        match side:
            case Side.DENSE:
                state[key] = torch.zeros(size, size, **options)
            case Side.DIAGONAL:
                state[key] = torch.zeros(size, **options)
            case Side.SCALAR:
                state[key] = torch.zeros((), **options)
            case Side.NONE:
                pass
    return state


def two_sided(
    left: Tensor | None,
    x: Tensor,
    right: Tensor | None,
    *,
    transpose: bool,
    workspace: Workspace | None = None,
) -> Tensor:
    """``Lᵀ X R`` (or ``L X Rᵀ`` if not ``transpose``) with ``None`` as identity and a 1-D
    factor as a diagonal; computed in the dense factors' dtype, returned in ``x``'s, as a new
    tensor. With a ``workspace`` the intermediate products reuse its buffers."""
    result_dtype = x.dtype
    dense = [f for f in (left, right) if f is not None and f.ndim == 2]
    work_dtype = dense[0].dtype if dense else x.dtype
    cast_back = work_dtype != result_dtype
    if dense and x.dtype != work_dtype:
        x = _scratch(workspace, "two_sided_in", x.shape, work_dtype, x).copy_(x)
    if left is not None:
        if left.ndim == 1:
            x = left.to(x.dtype)[:, None] * x
        else:
            scratch = workspace if (cast_back or right is not None) else None
            factor = left.mT if transpose else left
            x = _product(factor, x, scratch, "two_sided_left")
    if right is not None:
        if right.ndim == 1:
            x = x * right.to(x.dtype)[None, :]
        else:
            x = _product(
                x,
                right if transpose else right.mT,
                workspace if cast_back else None,
                "two_sided_right",
            )
    return x.to(result_dtype)


def _scratch(
    workspace: Workspace | None, name: str, shape: Any, dtype: torch.dtype, like: Tensor
) -> Tensor:
    if workspace is None:
        return torch.empty(tuple(shape), dtype=dtype, device=like.device)
    return workspace.empty(name, shape, dtype=dtype, device=like.device)


def _product(a: Tensor, b: Tensor, workspace: Workspace | None, name: str) -> Tensor:
    """``a @ b``, into the workspace's buffer ``name`` if one is given (an intermediate)."""
    if workspace is None:
        return a @ b
    out = workspace.empty(name, (a.shape[0], b.shape[1]), dtype=a.dtype, device=a.device)
    return torch.matmul(a, b, out=out)


#: Precisions the per-step products of a preconditioner may run in, by name.
COMPUTE_DTYPES = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float64,
}
#: The default precision: bfloat16 application for float32 parameters (module docstring).
AUTO = "auto"


def precision(value: torch.dtype | str | None, *, knob: str = "precondition_dtype") -> Any:
    """``value`` checked as a precision: ``"auto"``, ``None`` (the parameters' own dtype), a
    floating dtype or its name; a ValueError names ``knob`` and the choices otherwise."""
    if value is None or value == AUTO:
        return value
    if isinstance(value, torch.dtype) and value.is_floating_point:
        return value
    if isinstance(value, str) and value in COMPUTE_DTYPES:
        return COMPUTE_DTYPES[value]
    raise ValueError(
        f"Invalid {knob}: {value!r} (one of {[AUTO, *sorted(COMPUTE_DTYPES)]} or None)"
    )


def resolve_precision(value: torch.dtype | str | None, dtype: torch.dtype) -> torch.dtype | None:
    r"""The dtype the application of a preconditioner runs in for parameters of ``dtype``
    (``None``: ``dtype`` itself).

    ``"auto"`` (the default of every optimizer): bfloat16 for float32 parameters — the per-step
    products then run on bf16 matrix units, several times faster, and carry bf16 round-off
    (~4e-3 relative) — and the parameters' own dtype otherwise, so float64 science stays
    float64. Statistics and decompositions never run below float32 (see
    :mod:`layerwise.optim.parts`, "Precision").
    """
    if value == AUTO:
        return torch.bfloat16 if dtype == torch.float32 else None
    if isinstance(value, str):
        value = COMPUTE_DTYPES[value]
    return None if value == dtype else value


def statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics and decompositions of parameters of ``dtype`` run in at least float32 (eigh
    and Cholesky have no bf16 kernels, and the small eigenvalues decide the inverse)."""
    return dtype if dtype.itemsize >= 4 else torch.float32


class Transform(abc.ABC):
    r"""How a block's preconditioner is built from its statistics and applied: three methods.

    A transform is a frozen dataclass of its knobs; its state lives in the block's state
    mapping (``torch.optim.Optimizer.state``, so that ``state_dict`` carries it).

    - :meth:`init`: fresh state for a block of ``shape`` with side ``layout`` (preconditioners
      the identity, so a failed first refresh leaves an un-preconditioned step);
    - :meth:`refresh`: recompute the preconditioners from the statistics (under
      :data:`STATISTIC_KEYS`), used as :math:`S / c` with ``correction`` :math:`c` (the EMA
      bias correction; 1 for none). It raises
      :class:`~layerwise.optim.matrix.DecompositionError` *before* changing any state when a
      decomposition fails; the optimizer's failure policy then keeps the previous one;
    - :meth:`apply`: the preconditioned direction (a new tensor).

    Class attributes: ``uses_statistics`` (False: no statistics, no refresh; Muon),
    ``keeps_scalars`` (whether a size-1 side's scalar statistic matters: for an inverse it
    does, an eigenbasis ignores it) and ``batches`` (``apply_batched`` runs several blocks as
    one batched product); ``uses_workspace``: :meth:`apply` takes a ``workspace`` keyword
    (:class:`~layerwise.optim.matrix.Workspace`) for its intermediates.

    Precision: ``compute_dtype`` is a dtype, ``None`` (the parameters' dtype) or ``"auto"``
    (bfloat16 for float32 parameters, their own dtype otherwise), resolved per block by
    :meth:`resolved_dtype`; see :mod:`layerwise.optim.parts` ("Precision").
    """

    uses_statistics: ClassVar[bool] = True
    keeps_scalars: ClassVar[bool] = False
    batches: ClassVar[bool] = False
    #: Whether :meth:`apply` takes a ``workspace`` (scratch tensors kept between steps).
    uses_workspace: ClassVar[bool] = False

    compute_dtype: torch.dtype | str | None

    @abc.abstractmethod
    def init(self, layout: SideLayout, shape: tuple[int, int], like: Tensor) -> dict[str, Any]:
        """Fresh preconditioner state (statistics are initialized by the statistics part)."""

    def refresh(self, state: dict[str, Any], *, correction: float = 1.0) -> None:  # noqa: B027
        """Recompute the preconditioners (default: nothing to refresh)."""

    @abc.abstractmethod
    def apply(self, state: dict[str, Any], direction: Tensor, *, grad: Tensor, step: int) -> Tensor:
        """Precondition ``direction`` (an ``(m, n)`` matrix); ``grad`` is the raw gradient and
        ``step`` the block's step count (for transforms with moments of their own)."""

    def apply_batched(
        self,
        states: list[dict[str, Any]],
        directions: list[Tensor],
        grads: list[Tensor],
        steps: list[int],
        workspace: Workspace | None = None,
    ) -> list[Tensor]:
        """:meth:`apply` for several blocks of one param group (overridden where batching pays;
        ``workspace``: the group's scratch tensors, reused from step to step)."""
        return [
            self.apply(s, d, grad=g, step=t)
            for s, d, g, t in zip(states, directions, grads, steps, strict=True)
        ]

    def resolved_dtype(self, dtype: torch.dtype) -> torch.dtype | None:
        """The compute dtype for parameters of ``dtype`` (``None``: ``dtype`` itself)."""
        return resolve_precision(self.compute_dtype, dtype)

    def refreshed_keys(self, state: dict[str, Any]) -> list[str]:
        """The state tensors a successful :meth:`refresh` writes (in place), in a fixed order:
        what ``distributed="split"`` broadcasts from the rank that refreshed the block
        (default: the preconditioners)."""
        return [key for key in PRECONDITIONER_KEYS if isinstance(state.get(key), Tensor)]

    def adopt_refresh(self, state: dict[str, Any]) -> None:  # noqa: B027
        """On the other ranks, after a block's refreshed tensors arrived by broadcast: the rest
        of what a successful :meth:`refresh` changes besides them (default: nothing)."""


def preconditioner_count(layout: SideLayout) -> int:
    """How many sides of ``layout`` precondition (for Shampoo's root rule p = 2 x count)."""
    return sum(side is not Side.NONE for side in layout)


def layout_of(state: dict[str, Any]) -> SideLayout:
    """The side layout of a block from its statistics' shapes (2-D dense, 1-D diagonal, 0-D
    scalar, missing: none)."""
    kinds = {2: Side.DENSE, 1: Side.DIAGONAL, 0: Side.SCALAR}
    left, right = (kinds[state[key].ndim] if key in state else Side.NONE for key in STATISTIC_KEYS)
    return left, right


def __getattr__(name: str) -> Any:
    # Checkpoints written before the transforms got their own module pickled these enums as
    # attributes of this module; they keep loading.
    if name in ("BasisRefresh", "PolarMethod", "InverseRoot", "EigenbasisAdam", "Orthogonalize"):
        from layerwise.optim import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
