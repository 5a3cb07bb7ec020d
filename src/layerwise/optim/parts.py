r"""One param group's composition: the typed, validated parts of a layer-wise optimizer.

An optimizer of :mod:`layerwise.optim` is *statistics x accumulation x transform* inside a shell
of policies (:mod:`layerwise.optim.policies`). :class:`Parts` holds one choice per axis for a
param group; it is frozen, checks itself at construction and is cached by the optimizer, which
rebuilds it only when a knob of the group changes (the learning rate is read live). The named
optimizers (``Shampoo``, ``SOAP``, ``Muon``, ``KFAC``, ``EKFAC``) are functions from their
torch-style knobs to :class:`Parts`; :class:`~layerwise.optim.base.Layerwise` takes a
:class:`Parts` directly, so a new method needs no subclass::

    Layerwise(model.parameters(), lr=1e-3, parts=Parts(
        statistics=GradientProducts(),
        transform=InverseRoot(root=2),        # one-sided Shampoo with an AdaGrad-like root
        sides="input",
        first_moment=FirstMoment(beta=0.9),
        graft=Graft(method="adam"),
        refresh_every=10,
    ))

Precision (the rule of every optimizer of the package). Statistics, their accumulation and the
refresh (eigh, Cholesky, QR) run in the parameters' dtype, and never below float32: the small
eigenvalues of a statistic decide its inverse root and would not survive bf16 round-off. The
*application* — the per-step products with the dense preconditioners (:math:`P_L X P_R`, the
rotation back out of an eigenbasis, Newton–Schulz) — runs in the transform's
``compute_dtype``: by default ``"auto"``, which is bfloat16 for float32 parameters (what
``torch.optim.Muon`` and the peers' Muon do: several times faster where bf16 matrix units
exist; the direction then carries bf16 round-off, ~0.4–1.5 % relative on a width-1024 MLP,
more where the preconditioner cancels most of the gradient: the error is bounded by
:math:`2^{-8} \lVert |P_L||G||P_R| \rVert / \lVert P_L G P_R \rVert`) and the parameters' own
dtype otherwise, so float64 science stays float64. ``None`` keeps the parameters' dtype,
``exact=True`` requires it. :class:`~layerwise.optim.transforms.InverseRoot` stores its dense
preconditioners in the compute dtype.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

import torch

from layerwise.optim import policies, statistics, transforms
from layerwise.optim.kronecker import (
    Accumulation,
    Side,
    SideLayout,
    Sides,
    Transform,
    side_layout,
)
from layerwise.optim.policies import (
    AdamPath,
    Clipping,
    FailurePolicy,
    FirstMoment,
    Graft,
    HeavyBall,
    UpdateScale,
)
from layerwise.optim.statistics import GradientProducts, Statistics


@dataclass(frozen=True, kw_only=True)
class Parts:
    """The composition of one param group (module docstring).

    ``transform``: how the preconditioner is built and applied. ``statistics``: where its
    statistics come from (``None`` for a transform without statistics). ``accumulation``,
    ``statistics_decay``: how increments are accumulated; ``bias_correction``: an EMA is used
    as :math:`S / (1 - \\beta^k)` after k updates (KFAC). ``statistics_every``,
    ``refresh_every``: steps between statistics updates and preconditioner refreshes (steps
    1, k + 1, 2k + 1, ...). ``sides``: which sides precondition. ``max_preconditioner_dim``:
    longer sides keep a diagonal statistic. ``first_moment``, ``graft``, ``scale``,
    ``heavy_ball``, ``clipping``, ``adam``, ``failures``: the shell's policies
    (:mod:`layerwise.optim.policies`). ``weight_decay``: decoupled,
    :math:`W \\leftarrow (1 - \\eta\\lambda) W`. ``maximize``: ascend (every part sees the
    negated gradient, as in ``torch.optim``). ``preconditioned=False`` sends every parameter of
    the group down the Adam path (embeddings, heads; the group knob ``preconditioned``).
    """

    transform: Transform
    statistics: Statistics | None = field(default_factory=GradientProducts)
    accumulation: Accumulation = Accumulation.EMA
    statistics_decay: float = 0.95
    bias_correction: bool = False
    statistics_every: int = 1
    refresh_every: int = 1
    sides: Sides = Sides.BOTH
    max_preconditioner_dim: int = 8192
    first_moment: FirstMoment = field(default_factory=FirstMoment)
    graft: Graft | None = None
    scale: UpdateScale = UpdateScale.NONE
    heavy_ball: HeavyBall = field(default_factory=HeavyBall)
    clipping: Clipping | None = None
    adam: AdamPath = field(default_factory=AdamPath)
    weight_decay: float = 0.0
    maximize: bool = False
    preconditioned: bool = True
    failures: FailurePolicy = field(default_factory=FailurePolicy)

    def __post_init__(self) -> None:
        object.__setattr__(self, "accumulation", Accumulation(self.accumulation))
        object.__setattr__(self, "sides", Sides(self.sides))
        object.__setattr__(self, "scale", UpdateScale(self.scale))
        if not isinstance(self.transform, Transform):
            raise TypeError(f"transform must be a Transform, got {self.transform!r}")
        if self.transform.uses_statistics and self.statistics is None:
            raise ValueError(f"{type(self.transform).__name__} needs a statistics part")
        if not 0.0 <= self.statistics_decay < 1.0:
            raise ValueError(f"Invalid statistics_decay: {self.statistics_decay!r}")
        for name in ("statistics_every", "refresh_every", "max_preconditioner_dim"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"Invalid {name}: {value!r} (an integer >= 1)")
        if not self.weight_decay >= 0:
            raise ValueError(f"Invalid weight_decay: {self.weight_decay!r}")

    def layout(self, shape: tuple[int, int], *, scalar_sides: bool) -> SideLayout:
        """The sides of an ``(m, n)`` block (:func:`~layerwise.optim.kronecker.side_layout`)."""
        if not self.transform.uses_statistics:
            return Side.NONE, Side.NONE
        return side_layout(
            shape,
            sides=self.sides,
            max_preconditioner_dim=self.max_preconditioner_dim,
            scalar_sides=scalar_sides and self.transform.keeps_scalars,
        )

    def correction(self, updates: int) -> float:
        """The statistics' bias correction :math:`c` after ``updates`` updates (1: none)."""
        if self.bias_correction and self.accumulation is Accumulation.EMA:
            return 1.0 - self.statistics_decay**updates
        return 1.0

    # -- plain data (param groups, checkpoints, YAML) ---------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The parts as plain data (str, numbers, tuples, dicts), loadable by
        ``torch.load(..., weights_only=True)``; :meth:`from_dict` inverts it."""
        return _encode(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Parts:
        parts = _decode(data)
        if not isinstance(parts, cls):
            raise TypeError(f"not a Parts mapping: {data!r}")
        return parts


#: Every part class by name (:meth:`Parts.from_dict`); a new transform registers itself.
PART_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        Parts,
        transforms.InverseRoot,
        transforms.EigenbasisAdam,
        transforms.Orthogonalize,
        statistics.GradientProducts,
        statistics.LayerFactors,
        policies.FirstMoment,
        policies.Graft,
        policies.HeavyBall,
        policies.Clipping,
        policies.AdamPath,
        policies.FailurePolicy,
    )
}
_KIND = "part"


def register(cls: type) -> type:
    """Make a part class (e.g. a new :class:`~layerwise.optim.kronecker.Transform`) known to
    :meth:`Parts.from_dict`; usable as a class decorator."""
    PART_TYPES[cls.__name__] = cls
    return cls


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        encoded = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {_KIND: type(value).__name__, **encoded}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, tuple | list):
        return tuple(_encode(v) for v in value)
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and _KIND in value:
        fields = dict(value)
        name = fields.pop(_KIND)
        if name not in PART_TYPES:
            raise ValueError(f"unknown part {name!r} (known: {sorted(PART_TYPES)})")
        return PART_TYPES[name](**{k: _decode(v) for k, v in fields.items()})
    if isinstance(value, tuple | list):
        return tuple(_decode(v) for v in value)
    return value
