"""A toy problem for the experiment-system tests, importable by worker processes.

The conftest puts this folder on ``sys.path`` before any worker starts, so a run function
pickled by reference (``experiment_toys.run``) imports in forkserver/spawn workers too.

The run is a closed form, so tests can recompute any row independently:
``value = scale * kappa * (seed + 1) + offset(method) * step`` for ``step`` in 0..2, with
``offset = lr`` (method ``alpha``) or ``lr * repeats`` (method ``beta``).

Test hooks (settings fields, so that they are part of every run id and identical between an
interrupted and an uninterrupted invocation):

- ``log``: a file to which each executed run appends one line (counts executions);
- ``kill_marker``: while this file exists, a run carrying seed 1 SIGKILLs its own process;
- ``fail_marker``: while this file exists, a run carrying seed 1 raises ``RuntimeError``.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from layerwise.experiments.registry import RunTask


class ToySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    d: int = Field(4, ge=1)
    k: int = Field(2, ge=1)
    kappa: float = Field(1.0, ge=1)
    scale: float = Field(1.0, gt=0)
    log: str = ""
    kill_marker: str = ""
    fail_marker: str = ""

    @model_validator(mode="after")
    def _k_at_most_d(self) -> ToySettings:
        if self.k > self.d:
            raise ValueError(f"k={self.k} must be <= d={self.d}")
        return self


class AlphaParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(0.1, gt=0)


class BetaParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(0.1, gt=0)
    repeats: int = Field(1, ge=1)


METHOD_MODELS = {"alpha": AlphaParams, "beta": BetaParams}


def offset(method: str, params: BaseModel) -> float:
    return params.lr * (params.repeats if method == "beta" else 1)


def expected_value(settings: ToySettings, seed: int, method: str, params: BaseModel, step: int):
    return settings.scale * settings.kappa * (seed + 1) + offset(method, params) * step


def run(task: RunTask) -> pd.DataFrame:
    settings: ToySettings = task.settings  # type: ignore[assignment]
    if settings.log:
        with open(settings.log, "a") as log:
            log.write(f"{settings.kappa} {sorted(task.methods)} {list(task.seeds)}\n")
    if 1 in task.seeds and settings.kill_marker and Path(settings.kill_marker).exists():
        os.kill(os.getpid(), signal.SIGKILL)
    if 1 in task.seeds and settings.fail_marker and Path(settings.fail_marker).exists():
        raise RuntimeError("toy failure requested by the fail marker")
    rows = [
        dict(
            seed=seed,
            method=label,
            step=step,
            value=expected_value(settings, seed, spec.name, spec.params, step),
        )
        for seed in task.seeds
        for label, spec in task.methods.items()
        for step in range(3)
    ]
    return pd.DataFrame(rows)
