"""Instances of deep linear representation learning: linrep's, plus the middle layers' start.

The teacher, the input covariance, the data stream and (G_1, F) at initialization are linrep's
(:func:`layerwise.problems.linrep.data.make_instance`: G_1 = G0 with Haar-orthonormal rows,
F = F0 with i.i.d. N(0, 1/k) entries). Each middle layer G_ℓ (ℓ ≥ 2) starts Haar orthogonal
(k, k), drawn from the stream ``layerwise.problems.seeding.generator("deep_linrep", seed,
"layer ℓ")``: paired over methods, and the same for a given seed and ℓ whatever the depth, so
deeper students extend shallower ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from layerwise.problems import seeding
from layerwise.problems.linrep.data import Instance, haar_orthogonal


def initial_layers(instance: Instance, depth: int) -> list[Tensor]:
    """``[G_1, …, G_depth]`` at initialization, each with a leading seed axis."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth!r}")
    k = instance.init_features.shape[-2]
    device = instance.init_features.device
    layers = [instance.init_features]
    for index in range(2, depth + 1):
        draws = [
            haar_orthogonal(k, k, seeding.generator("deep_linrep", seed, f"layer {index}"))
            for seed in instance.seeds
        ]
        layers.append(torch.stack(draws).to(device))
    return layers
