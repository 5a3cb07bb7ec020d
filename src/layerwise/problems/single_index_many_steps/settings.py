"""Settings of the many-step single-index problem: the one-step problem's settings plus the
number of steps T, what is recorded and where each step's batch comes from; one hyperparameter
model per method, and ``check_method``."""

from __future__ import annotations

from enum import StrEnum

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from layerwise.problems.single_index.onestep import TwoLayerNetwork
from layerwise.problems.single_index.settings import SingleIndexSettings

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class BatchPolicy(StrEnum):
    """Where the batch of each step comes from."""

    FRESH = "fresh"  # a new batch of n samples each step (online)
    SAME = "same"  # the first batch at every step


class ManyStepsSettings(SingleIndexSettings):
    """The one-step problem's settings plus the number of steps and what is recorded.

    The readout fields (``readout_over_d``, ``n_validation``, ``ridge_grid``) are inherited and
    unused: the run reports alignments and losses, no readout; ``n_test`` sizes the test batch.
    """

    readout: bool = Field(False, description="unused: the many-step run has no readout")
    steps: int = Field(100, description="T, the number of small steps")
    record_every: int = Field(10, description="record the metrics every this many steps")
    batches: BatchPolicy = BatchPolicy.FRESH

    @field_validator("steps", "record_every")
    @classmethod
    def _at_least_one(cls, value: int, info) -> int:
        if value < 1:
            raise ValueError(f"{info.field_name} must be >= 1, got {value}")
        return value

    @model_validator(mode="after")
    def _record_within_run(self) -> ManyStepsSettings:
        if self.record_every > self.steps:
            raise ValueError(f"record_every={self.record_every} must be <= steps={self.steps}")
        return self

    @property
    def recorded_steps(self) -> tuple[int, ...]:
        """1 and every multiple of ``record_every`` up to ``steps`` (and ``steps`` itself)."""
        marks = {1, self.steps, *range(self.record_every, self.steps + 1, self.record_every)}
        return tuple(sorted(marks))


class _TotalStep(BaseModel):
    model_config = _FROZEN

    lr: float = Field(1.0, description="total step in one-step units (first step norm-matched)")

    @field_validator("lr")
    @classmethod
    def _lr(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"lr must be > 0, got {value}")
        return value


class ManySgdParams(_TotalStep):
    """W ← W − ηt N ∇W L̂t(W), ηt = lr/T."""


class ManyKfacParams(_TotalStep):
    """W ← W − ηt N ∇W L̂t(W) (Σ̂x,t + λG I)⁻¹ with λG = ``damping`` (absolute) on each batch."""

    damping: float = Field(1e-3, description="λG, added to each batch's Σ̂x")

    @field_validator("damping")
    @classmethod
    def _damping(cls, value: float) -> float:
        if not value >= 0:
            raise ValueError(f"damping must be >= 0, got {value}")
        return value


class OptimizerParams(_TotalStep):
    """A torch or ``layerwise.optim`` optimizer on W; ``options`` go to its constructor."""

    options: dict[str, float | int | bool | str] = Field(default_factory=dict)


def check_method(settings: ManyStepsSettings, algorithm: str, params: BaseModel) -> None:
    """Refuse what cannot run, before anything runs: undamped kfac with n <= d + 1 (each
    batch's Σ̂x is singular), and optimizer ``options`` the optimizer's constructor refuses
    (tried on a 2 × 2 network), naming the options."""
    # Imported here: methods.py imports this module's hyperparameter models.
    from .methods import library_optimizer

    if algorithm == "kfac" and params.damping == 0 and settings.n <= settings.d + 1:
        raise ValueError(
            f"kfac: damping must be > 0 when n <= d + 1 (each batch's Σ̂x is singular); got "
            f"damping=0, n={settings.n}, d={settings.d}"
        )
    if isinstance(params, OptimizerParams):
        probe = TwoLayerNetwork(torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2), "tanh")
        try:
            library_optimizer(algorithm, probe, 1.0, dict(params.options))
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{algorithm}: options {dict(params.options)} refused: {error}"
            ) from None
