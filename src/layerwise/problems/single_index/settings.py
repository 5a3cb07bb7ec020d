"""Typed settings of the single-index problem and the hyperparameters of its one-step methods.

Every model is frozen and refuses unknown fields (``extra="forbid"``), so a misspelt key in a
config fails before anything runs, naming the field. Conventions (SPEC.md §3):

- ``n = round(n_over_d · d)`` samples in the step batch (X1, y1); the readout batch (X2, y2) has
  ``round(readout_over_d · d)`` samples (default: the same n);
- ``N = round(width_over_d · d)`` neurons;
- ``kappa`` is the condition number λmax/λmin of Σ for every covariance family;
- every step is ``W1 = W0 + ΔW``; the step sizes are ``η = lr·√N`` (Ba et al.'s large step,
  η = Θ(√N)), so that ``lr = O(1)`` moves each neuron by O(1).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator

from layerwise.problems.sizes import size_forms

if TYPE_CHECKING:
    from layerwise.experiments.registry import MethodSpec


class Link(StrEnum):
    """The teacher's link σ⋆ (all have a non-zero first Hermite coefficient)."""

    TANH = "tanh"
    RELU = "relu"
    HE1_HE2 = "he1_he2"  # He1(z) + He2(z)/√2


class Activation(StrEnum):
    """The student's activation σ."""

    TANH = "tanh"
    RELU = "relu"


class CovarianceFamily(StrEnum):
    """Families of Σ, each with condition number ``kappa``.

    - ``log_spaced``: eigenvalues log-spaced in [1/κ, 1];
    - ``spiked``: I + (κ − 1) q qᵀ (one eigenvalue κ, the rest 1);
    - ``power_law``: λi = i^(−α), α = ln κ / ln d, so that λ1/λd = κ.
    """

    LOG_SPACED = "log_spaced"
    SPIKED = "spiked"
    POWER_LAW = "power_law"


class TargetDirection(StrEnum):
    """How β⋆ is drawn (always normalized so that β⋆ᵀΣβ⋆ = 1).

    - ``random``: Gaussian;
    - ``aligned``: the top eigenvector of Σ;
    - ``orthogonal``: Gaussian, projected off the top ⌈d/10⌉ eigenvectors of Σ.
    """

    RANDOM = "random"
    ALIGNED = "aligned"
    ORTHOGONAL = "orthogonal"


class SecondLayer(StrEnum):
    """The fixed second layer a: i.i.d. N(0, 1/N) or ±1/√N."""

    GAUSSIAN = "gaussian"
    SIGN = "sign"


_FROZEN = ConfigDict(extra="forbid", frozen=True)
_FLOAT64 = 8


class SingleIndexSettings(BaseModel):
    """One problem instance family: data, network and readout sizes (SPEC.md §3)."""

    model_config = _FROZEN

    #: Accepted as input, converted into a field: an absolute step batch ``n`` gives
    #: ``n_over_d = n / d`` (the linrep problem's form); read back as the property :attr:`n`.
    derived_inputs: ClassVar[tuple[str, ...]] = ("n",)

    d: int = Field(128, ge=1, description="input dimension")
    n_over_d: float = Field(2.0, gt=0, description="step batch size over d")
    width_over_d: float = Field(1.0, gt=0, description="number of neurons N over d")
    kappa: float = Field(1.0, ge=1, description="condition number of Σ")
    covariance: CovarianceFamily = CovarianceFamily.LOG_SPACED
    rotated: bool = Field(True, description="Haar-random eigenvectors (else axis-aligned)")
    target: TargetDirection = TargetDirection.RANDOM
    link: Link = Link.TANH
    activation: Activation = Activation.TANH
    noise_std: float = Field(0.0, ge=0, description="label noise σε")
    second_layer: SecondLayer = SecondLayer.GAUSSIAN
    readout: bool = Field(True, description="fit the ridge readout and test (else NaN risks)")
    readout_over_d: float | None = Field(None, gt=0, description="readout batch over d (None: n)")
    n_validation: int = Field(1024, ge=1, description="samples to choose the ridge penalty")
    n_test: int = Field(4096, ge=1, description="samples for test MSE and excess risk")
    ridge_grid: tuple[PositiveFloat, ...] = Field(
        (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0),
        min_length=1,
        description="ridge penalties tried",
    )

    @model_validator(mode="before")
    @classmethod
    def _size_forms(cls, data: Any) -> Any:
        """``n_over_d`` or ``n`` (exactly one, or both consistent): ``n_over_d = n / d``."""
        return size_forms(data, cls.model_fields["d"].default, stored="n_over_d")

    @model_validator(mode="after")
    def _sizes(self) -> SingleIndexSettings:
        for name, size in (("n_over_d", self.n), ("width_over_d", self.width)):
            if size < 1:
                raise ValueError(f"{name} gives fewer than one sample/neuron at d={self.d}")
        if self.readout_size < 1:
            raise ValueError(f"readout_over_d gives an empty readout batch at d={self.d}")
        return self

    @property
    def n(self) -> int:
        """Samples in the step batch."""
        return round(self.n_over_d * self.d)

    @property
    def width(self) -> int:
        """Neurons N."""
        return round(self.width_over_d * self.d)

    @property
    def readout_size(self) -> int:
        """Samples in the readout batch."""
        ratio = self.n_over_d if self.readout_over_d is None else self.readout_over_d
        return round(ratio * self.d)

    def memory_bytes(self) -> int:
        """Largest working set of one seed's run (float64): Σ (d x d), the first layer (N x d),
        the batches (samples x d) and their features (samples x N)."""
        samples = self.n + self.readout_size + self.n_validation + self.n_test
        return _FLOAT64 * (
            4 * self.d * self.d + 3 * self.width * self.d + samples * (self.d + self.width)
        )


class _StepParams(BaseModel):
    model_config = _FROZEN

    lr: float = Field(1.0, gt=0, description="η/√N")


class SgdParams(_StepParams):
    """``W1 = W0 − η √N ∇W L̂(W0)``, η = lr·√N."""


class KfacParams(_StepParams):
    """``W1 = W0 − η √N ∇W L̂(W0) (Σ̂x + λG I)⁻¹`` with λG = ``damping`` (absolute).

    Damping is required when n ≤ d (Σ̂x is singular); the run refuses that combination.
    """

    damping: float = Field(0.0, ge=0, description="λG, added to Σ̂x")


class AdamParams(_StepParams):
    """One Adam step from zero state: ΔW = −s·sign(∇W L̂).

    From zero moments the bias-corrected Adam update is g/(|g| + ε) ≈ sign(g) (ε → 0). Scaling
    rule: s is chosen so that ‖ΔW‖F equals the Frobenius norm of the sgd step with the same
    ``lr``, i.e. s = ‖ΔW_sgd‖F / √(N d) when no gradient entry is zero.
    """


class BatchNormParams(_StepParams):
    """The sgd step on the network (1/√N) aᵀσ(BN(W x)), BN without affine parameters."""


class ShampooParams(_StepParams):
    """One exact Shampoo step from zero state, no accumulation, no grafting:
    ΔW = −s (GGᵀ + εI)^{-1/4} G (GᵀG + εI)^{-1/4}, G = ∇W L̂(W0), ε = ``damping``·σ1(G)²
    (relative: one gradient has no natural scale), s matching the sgd step's Frobenius norm
    (the adam rule). ε → 0 is muon's polar step; ε → ∞ is the sgd step.
    """

    damping: float = Field(1e-12, gt=0, description="ε relative to σ1(G)² (→ 0: the muon step)")


class Polar(StrEnum):
    """How the muon step computes the polar factor U Vᵀ of the gradient."""

    SVD = "svd"  # exact
    NEWTON_SCHULZ = "newton_schulz"  # the library's quintic iteration, 5 steps


class MuonParams(_StepParams):
    """One Muon step from zero momentum: ΔW = −s·polar(∇W L̂(W0)), s matching the sgd step's
    Frobenius norm (the adam rule)."""

    polar: Polar = Polar.SVD


class RandomFeaturesParams(BaseModel):
    """No step: W1 = W0 (random features)."""

    model_config = _FROZEN


class OracleParams(BaseModel):
    """Rows of W1 along β⋆: w_i = s_i β⋆ with s_i ~ N(0, 1) (so ⟨w_i, x⟩ ~ N(0, s_i²))."""

    model_config = _FROZEN


def check_methods(settings: SingleIndexSettings, methods: Mapping[str, MethodSpec]) -> None:
    """Refuse combinations a single model cannot see (:func:`check_method`), naming the label."""
    for label, spec in methods.items():
        try:
            check_method(settings, spec.name, spec.params)
        except ValueError as error:
            raise ValueError(f"method {label!r}: {error}") from None


def check_method(settings: SingleIndexSettings, algorithm: str, params: BaseModel) -> None:
    """Refuse a method that cannot run on these settings, naming the field and value.

    The problem's ``check_method``: configs call it for every grid point and method before
    anything runs. Undamped kfac needs n > d + 1 (Σ̂x is singular or the OLS variance infinite
    otherwise)."""
    if algorithm == "kfac" and params.damping == 0 and settings.n <= settings.d + 1:
        raise ValueError(
            f"kfac: damping must be > 0 when n <= d + 1 (Σ̂x is singular or the OLS variance "
            f"infinite); got damping=0, n={settings.n}, d={settings.d}"
        )
