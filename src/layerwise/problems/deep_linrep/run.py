"""Run function of the deep linrep experiments: linrep's ``run_summary`` with these methods.

Linrep's driver does the rest (SPEC §2): paired seeds, the tuning stage (worst iterations-to-eps
over tuning seeds on the shared power-of-2 grid), divergence detection, iterations to eps
(censored at the budget) and the fitted contraction rate. Each row also carries ``depth``.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import torch
from pydantic import BaseModel

from layerwise.experiments.registry import RunTask
from layerwise.problems.deep_linrep.data import initial_layers
from layerwise.problems.deep_linrep.methods import METHODS, DeepMethod
from layerwise.problems.deep_linrep.settings import DeepLinrepSettings
from layerwise.problems.linrep.data import DTYPE, Instance
from layerwise.problems.linrep.run import run_summary as linrep_run_summary


def build_method(
    algorithm: str,
    params: BaseModel,
    instance: Instance,
    lr: Iterable[float],
    damping: float = 0.0,
    *,
    depth: int,
) -> DeepMethod:
    """``algorithm`` at step sizes ``lr`` (one replica each) on a depth-``depth`` student.

    ``damping`` is part of linrep's builder signature; these methods are undamped."""
    if algorithm not in METHODS:
        raise ValueError(f"unknown deep_linrep algorithm {algorithm!r}; known: {sorted(METHODS)}")
    device = instance.features.device
    lr_tensor = torch.tensor(list(lr), dtype=DTYPE, device=device).reshape(-1, 1, 1, 1)
    return METHODS[algorithm](
        initial_layers(instance, depth), instance.init_head, lr_tensor, params
    )


def run_summary(task: RunTask) -> pd.DataFrame:
    """Iterations to eps, censoring, divergence, fitted rate per (seed, method), with depth."""
    settings = task.settings
    if not isinstance(settings, DeepLinrepSettings):
        raise TypeError(f"deep_linrep runs need DeepLinrepSettings, got {type(settings).__name__}")

    def builder(algorithm, params, instance, lr, damping=0.0):
        return build_method(algorithm, params, instance, lr, damping, depth=settings.depth)

    return linrep_run_summary(task, builder=builder).assign(depth=settings.depth)
