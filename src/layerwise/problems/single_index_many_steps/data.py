"""The step batches of the many-step problem, drawn from the single-index streams.

The instance (Σ, β⋆), initialization (W0, a) and test batches are the one-step problem's
(:mod:`layerwise.problems.single_index.data`); the T step batches come from the seed's ``step``
stream, so batch 1 is the one-step experiments' batch (X1, y1).
"""

from __future__ import annotations

from torch import Tensor

from layerwise.problems.single_index.data import Instance, make_instance, sample

from .settings import BatchPolicy, ManyStepsSettings

__all__ = ["Instance", "make_instance", "sample", "step_batches"]


def step_batches(settings: ManyStepsSettings, instance: Instance) -> tuple[Tensor, Tensor]:
    """x (S, T, n, d) and y (S, T, n): the batches of the T steps of every seed.

    ``fresh``: T·n draws of the ``step`` stream cut into T batches of n; ``same``: the first n
    draws repeated at every step."""
    n, steps = settings.n, settings.steps
    draws = n * steps if settings.batches == BatchPolicy.FRESH else n
    x, y, _ = sample(instance, "step", draws)
    x = x.reshape(x.shape[0], -1, n, x.shape[-1])
    y = y.reshape(y.shape[0], -1, n)
    if settings.batches == BatchPolicy.SAME:
        x, y = x.expand(-1, steps, -1, -1), y.expand(-1, steps, -1)
    return x, y
