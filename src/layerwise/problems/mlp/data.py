r"""The teacher of one seed, its training and held-out samples, and the seeded streams.

For seed ``s`` a fixed teacher :math:`y = A^\star \tanh(W^\star x) + \sigma\varepsilon` with
:math:`x \sim N(0, I_{d_{in}})`, :math:`W^\star_{ij} \sim N(0, 1/d_{in})` (shape
``teacher_hidden × d_in``), :math:`A^\star_{ij} \sim N(0, 1/\text{teacher\_hidden})` and
:math:`\varepsilon \sim N(0, I_{d_{out}})` gives ``n_train`` training and ``n_test`` held-out
samples, in float64.

Pairing: the teacher and data, the student's initialisation and the minibatch order come from
three independent streams of the seed (:func:`streams`, from
:func:`layerwise.problems.seeding.generator`), so for a given seed every method sees the same
instance, the same starting point and the same batches.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from layerwise.problems import seeding

from .settings import MLPSettings


class Streams(NamedTuple):
    """The independent generators of one seed."""

    data: torch.Generator
    init: torch.Generator
    batches: torch.Generator


def streams(seed: int) -> Streams:
    """Independent generators for (teacher and data, initialisation, minibatch order)."""
    return Streams(*(seeding.generator("mlp", seed, purpose) for purpose in Streams._fields))


def teacher_data(
    settings: MLPSettings, generator: torch.Generator
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``((x, y), (x_test, y_test))``: the teacher's training and held-out samples, drawn from
    ``generator`` (teacher first, then the training set, then the held-out set)."""
    s = settings
    w = torch.randn(s.teacher_hidden, s.d_in, generator=generator, dtype=torch.float64)
    a = torch.randn(s.d_out, s.teacher_hidden, generator=generator, dtype=torch.float64)
    w, a = w / s.d_in**0.5, a / s.teacher_hidden**0.5

    def sample(n: int) -> tuple[Tensor, Tensor]:
        x = torch.randn(n, s.d_in, generator=generator, dtype=torch.float64)
        noise = torch.randn(n, s.d_out, generator=generator, dtype=torch.float64)
        return x, torch.tanh(x @ w.T) @ a.T + s.noise * noise

    return sample(s.n_train), sample(s.n_test)
