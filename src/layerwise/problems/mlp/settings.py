"""Settings of the teacher–student task and the hyperparameters of every method.

Sizes (:class:`MLPSettings`): input ``d_in``, student ``hidden``, teacher ``teacher_hidden``,
output ``d_out``; ``n_train`` training and ``n_test`` held-out samples; ``steps`` minibatch
steps of ``batch_size`` samples (at most ``n_train``); losses recorded every ``eval_every``
steps; the teacher's outputs carry Gaussian noise of standard deviation ``noise``.

Every model is frozen and refuses unknown fields, so a misspelt key in a config is an error
that names it before anything runs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_FLOAT64 = 8


class MLPSettings(BaseModel):
    """One teacher–student task (see :mod:`layerwise.problems.mlp.data`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    d_in: int = Field(16, ge=1)
    hidden: int = Field(32, ge=1)
    teacher_hidden: int = Field(8, ge=1)
    d_out: int = Field(1, ge=1)
    n_train: int = Field(1024, ge=1)
    n_test: int = Field(1024, ge=1)
    steps: int = Field(200, ge=1)
    batch_size: int = Field(64, ge=1)
    noise: float = Field(0.05, ge=0)
    eval_every: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _batch_fits(self) -> MLPSettings:
        if self.batch_size > self.n_train:
            raise ValueError(f"batch_size={self.batch_size} must be <= n_train={self.n_train}")
        return self

    def memory_bytes(self) -> int:
        """Largest working set of one run (float64): the samples with their hidden activations,
        and a few copies of the weights (gradients, optimizer state, preconditioner factors)."""
        samples = self.n_train + self.n_test
        weights = self.hidden * (self.d_in + self.d_out + self.hidden)
        return _FLOAT64 * (samples * (self.d_in + self.hidden + self.d_out) + 8 * weights)


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(gt=0)


class SGDParams(_Params):
    """``torch.optim.SGD`` (heavy-ball ``momentum``)."""

    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)


class AdamWParams(_Params):
    """``torch.optim.AdamW``."""

    lr: float = Field(1e-2, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class LayerwiseParams(_Params):
    """Hyperparameters of the project's Shampoo, SOAP and Muon (``exact``: textbook mode)."""

    lr: float = Field(1e-2, gt=0)
    exact: bool = False


class KFACParams(_Params):
    """The project's KFAC on the mean squared error (``curvature``: which Fisher/GGN)."""

    lr: float = Field(0.1, gt=0)
    curvature: Literal["empirical", "mc_fisher", "ggn"] = "ggn"
    exact: bool = False
