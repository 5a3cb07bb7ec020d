"""Validated settings of the linear representation problem and its methods' hyperparameters.

All models are frozen pydantic models that refuse unknown fields and impossible values, naming
the field. ``LinrepSettings`` describes one grid point (problem instance family, data, budget,
tuning grid); each ``*Params`` model holds one algorithm's hyperparameters.

A step size is either a positive float or the string ``"tune"``: the run function then chooses it
by the tuning stage of SPEC §2 (shared power-of-2 grid ``2**lr_grid[0] .. 2**lr_grid[1]``, the
``tuning_seeds`` seeds 1_000_000, 1_000_001, ... which are disjoint from reported seeds, the
worst iterations-to-eps over those seeds, ties broken by the median distance).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from layerwise.problems.sizes import size_forms

#: A step size: a positive number, or "tune" for the tuning stage.
StepSize = float | Literal["tune"]

#: First tuning seed; reported seeds must stay below it so the two sets are disjoint.
TUNING_SEED_OFFSET = 1_000_000

_FLOAT64 = 8


def _check_step_size(value: StepSize, field: str) -> StepSize:
    if value != "tune" and not value > 0:
        raise ValueError(f"{field} must be > 0 or 'tune', got {value!r}")
    return value


class LinrepSettings(BaseModel):
    """One grid point of the linear representation problem (SPEC §2).

    Model ``y = F⋆ G⋆ x + ε`` with ``x = Σx^{1/2} u``; G⋆ is (k, d) with orthonormal rows,
    F⋆ is (dy, k) with singular values log-spaced in [1/kappa_f, 1], Σx has eigenvalues
    log-spaced in [1/kappa_x, 1] with a Haar ("rotated") or identity ("axis_aligned") basis.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Accepted as input, converted into a field: ``n_over_d`` gives ``n = round(n_over_d·d)``
    #: (the single-index problem's form); read back as the property :attr:`n_over_d`.
    derived_inputs: ClassVar[tuple[str, ...]] = ("n_over_d",)

    d: int = Field(50, ge=1, description="input dimension")
    k: int = Field(3, ge=1, description="representation dimension (rows of G)")
    dy: int = Field(6, ge=1, description="output dimension (rows of F)")
    kappa_x: float = Field(100.0, ge=1, description="condition number of Σx (train task)")
    kappa_f: float = Field(1.0, ge=1, description="condition number of F⋆ (both tasks)")
    kappa_x_transfer: float | None = Field(
        None, ge=1, description="κ(Σx) of the transfer task; None: kappa_x"
    )
    basis: Literal["rotated", "axis_aligned"] = "rotated"
    inputs: Literal["rademacher", "gaussian"] = "rademacher"
    noise_std: float = Field(0.0, ge=0.0, description="label noise σε")
    n: int = Field(100, ge=1, description="samples per step (a fresh batch each step if online)")
    data: Literal["online", "fixed"] = "online"
    iterations: int = Field(2000, ge=1, description="iteration budget")
    eps: float = Field(
        1e-3, gt=0, lt=1, description="target subspace distance for iterations-to-eps"
    )
    n_heldout: int = Field(1000, ge=1, description="held-out samples for the held-out loss")
    n_transfer: tuple[int, ...] | None = Field(
        None, description="transfer-head sample sizes; None: (d,)"
    )
    tuning_seeds: int = Field(3, ge=1, description="number of tuning seeds")
    lr_grid: tuple[int, int] = Field((-12, 1), description="exponents (lo, hi) of the 2**e grid")
    log_points: int = Field(100, ge=2, description="iterations logged in trajectories")

    @model_validator(mode="before")
    @classmethod
    def _size_forms(cls, data: Any) -> Any:
        """``n`` or ``n_over_d`` (exactly one, or both consistent): ``n = round(n_over_d·d)``."""
        return size_forms(data, cls.model_fields["d"].default, stored="n")

    @property
    def n_over_d(self) -> float:
        """Samples per step over the input dimension, ``n / d``."""
        return self.n / self.d

    def memory_bytes(self) -> int:
        """Largest working set of one seed's run (float64): Σx and the KFAC/Shampoo factors
        (d x d), a step batch and the held-out set (samples x d), with room for the products of
        one step."""
        return _FLOAT64 * (
            4 * self.d * self.d + 3 * (self.n + self.n_heldout) * self.d + 4 * self.dy * self.d
        )

    @field_validator("lr_grid")
    @classmethod
    def _grid_ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] > value[1]:
            raise ValueError(f"lr_grid must be (lo, hi) with lo <= hi, got {value!r}")
        return value

    @model_validator(mode="after")
    def _dimensions(self) -> LinrepSettings:
        if self.k > self.d:
            raise ValueError(f"k must be <= d, got k={self.k}, d={self.d}")
        if self.dy < self.k:
            raise ValueError(f"dy must be >= k, got dy={self.dy}, k={self.k}")
        if self.n < self.k:
            raise ValueError(f"n must be >= k (least-squares head), got n={self.n}, k={self.k}")
        for size in self.transfer_sizes:
            if size < self.k:
                raise ValueError(f"n_transfer entries must be >= k={self.k}, got {size}")
        return self

    @property
    def transfer_sizes(self) -> tuple[int, ...]:
        return self.n_transfer if self.n_transfer is not None else (self.d,)

    @property
    def step_sizes(self) -> list[float]:
        """The shared tuning grid 2**lo, ..., 2**hi."""
        return [2.0**e for e in range(self.lr_grid[0], self.lr_grid[1] + 1)]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: StepSize = "tune"

    @field_validator("lr")
    @classmethod
    def _lr_positive(cls, value: StepSize) -> StepSize:
        return _check_step_size(value, "lr")


class SgdParams(_Params):
    """Joint simultaneous gradient steps on (F, G)."""


class AmdParams(_Params):
    """Least-squares head, gradient step on G, QR of G's rows."""


class DfwParams(_Params):
    """Split batch: least-squares head on the first half, whitened G step on the second.

    ``too_few_samples``: what to do at a grid point where the halves are too small
    (n/2 <= d + 1): ``refuse`` the config, or ``skip`` the method there (no rows).
    """

    too_few_samples: Literal["refuse", "skip"] = "refuse"


class KfacParams(_Params):
    """The stylized two-sided KFAC update (SPEC §1 Eq. 5).

    ``damping_g`` is λG added to Σ̂x, ``damping_f`` is λF added to FᵀF (absolute values).
    ``head``: ``least_squares`` (ηF = 1) or ``preconditioned`` (a step of size ``lr_head``
    preconditioned by (G Σ̂x Gᵀ)⁻¹).
    """

    damping_g: float = Field(0.0, ge=0.0)
    damping_f: float = Field(0.0, ge=0.0)
    head: Literal["least_squares", "preconditioned"] = "least_squares"
    lr_head: float = Field(1.0, gt=0.0)
    orthonormalize: bool = True


class AdamParams(_Params):
    """Adam on G and F jointly (``head: joint``) or on G after a least-squares head."""

    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.999, ge=0.0, lt=1.0)
    eps: float = Field(1e-8, gt=0.0)
    head: Literal["joint", "least_squares"] = "joint"


class BatchnormParams(_Params):
    """SGD on the network F · BN(G x) (BN without affine parameters)."""

    momentum: float = Field(0.1, gt=0.0, le=1.0, description="running-statistics EMA weight")
    bn_eps: float = Field(1e-5, gt=0.0)


class SecondOrderParams(BaseModel):
    """Damped Gauss–Newton or Newton on (vec F, vec G) jointly; one run per damping value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: StepSize = 1.0
    damping: tuple[float, ...] = (1e-3,)

    @field_validator("lr")
    @classmethod
    def _lr_positive(cls, value: StepSize) -> StepSize:
        return _check_step_size(value, "lr")

    @field_validator("damping")
    @classmethod
    def _damping_positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(not v > 0 for v in value):
            raise ValueError(f"damping must be a non-empty list of values > 0, got {value!r}")
        return value


class LibraryParams(_Params):
    """A ``layerwise.optim`` optimizer on the ``nn.Module`` version of the model.

    The base of each optimizer's parameters (:mod:`layerwise.problems.linrep.library`), which
    add ``options``: the optimizer's constructor keywords, typed from its signature.
    ``lr_grid`` (exponents (lo, hi)) replaces the settings' tuning grid for this method: these
    rows step one module per seed and step size, so a narrower grid keeps their tuning
    affordable.
    """

    lr_grid: tuple[int, int] | None = None

    @field_validator("lr_grid")
    @classmethod
    def _grid_ordered(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and value[0] > value[1]:
            raise ValueError(f"lr_grid must be (lo, hi) with lo <= hi, got {value!r}")
        return value


def has_enough_samples(settings: LinrepSettings, algorithm: str) -> bool:
    """False where dfw's half batches are too small for Σ̂x⁻¹ (n/2 <= d + 1)."""
    return not (algorithm == "dfw" and settings.n // 2 <= settings.d + 1)


def check_method(settings: BaseModel, algorithm: str, params: BaseModel) -> None:
    """Refuse a method that cannot run on these settings, naming the field and value.

    The problem's ``check_method``: configs call it for every grid point and method before
    anything runs. dfw with ``too_few_samples: skip`` is allowed (the run leaves it out).
    """
    skip = getattr(params, "too_few_samples", "refuse") == "skip"
    if not has_enough_samples(settings, algorithm) and not skip:
        raise ValueError(
            f"n={settings.n} too small for dfw: each half batch needs "
            f"n/2 > d + 1 = {settings.d + 1}"
        )
    needs_inverse = algorithm in ("kfac",) and getattr(params, "damping_g", 0.0) == 0.0
    if needs_inverse and settings.n <= settings.d:
        raise ValueError(
            f"n={settings.n} too small for undamped kfac: Σ̂x is singular unless n > d={settings.d}"
        )
