r"""The student and the training loop of the ``mlp`` problem, as tidy rows.

Student: :math:`f(x) = A \tanh(W x)` without biases (every parameter is a matrix, so every
layer-wise optimizer preconditions all of them), ``W`` of shape ``hidden × d_in`` and ``A`` of
shape ``d_out × hidden``, initialised with entries :math:`N(0, 1/\text{fan\_in})`.

Training: ``steps`` minibatch steps on the mean squared error ``mean((f(x) - y)^2)`` over the
batch and the outputs (``torch.nn.functional.mse_loss``, the loss KFAC's ``loss="mse"`` means),
minibatches of ``batch_size`` training indices drawn with replacement. Everything is float64.

Rows: one per (method, seed, step) for steps ``0, eval_every, 2·eval_every, …, steps``, with
``train_loss`` (on the whole training set) and ``test_loss`` (held out), both the mean squared
error.
"""

from __future__ import annotations

import pandas as pd
import torch

from layerwise.experiments.registry import RunTask

from .data import streams, teacher_data
from .methods import build_optimizer
from .settings import MLPSettings


def student(settings: MLPSettings, generator: torch.Generator) -> torch.nn.Sequential:
    """The two-layer tanh student, its weights drawn from ``generator`` (first layer first)."""
    s = settings
    net = torch.nn.Sequential(
        torch.nn.Linear(s.d_in, s.hidden, bias=False, dtype=torch.float64),
        torch.nn.Tanh(),
        torch.nn.Linear(s.hidden, s.d_out, bias=False, dtype=torch.float64),
    )
    with torch.no_grad():
        for layer in (net[0], net[2]):
            fan_in = layer.weight.shape[1]
            layer.weight.copy_(
                torch.randn(layer.weight.shape, generator=generator, dtype=torch.float64)
                / fan_in**0.5
            )
    return net


def _mean_squared_error(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return torch.mean((net(x) - y) ** 2).item()


def run_task(task: RunTask) -> pd.DataFrame:
    """Train every method of ``task`` on the teacher of each seed; tidy rows (module docstring)."""
    settings: MLPSettings = task.settings  # type: ignore[assignment]
    device = torch.device(task.device)
    rows = []
    for seed in task.seeds:
        for label, spec in task.methods.items():
            seeded = streams(seed)
            (x, y), (x_test, y_test) = teacher_data(settings, seeded.data)
            x, y, x_test, y_test = (t.to(device) for t in (x, y, x_test, y_test))
            net = student(settings, seeded.init).to(device)
            optimizer = build_optimizer(net, spec.name, spec.params)
            for step in range(settings.steps + 1):
                if step > 0:
                    index = torch.randint(
                        settings.n_train, (settings.batch_size,), generator=seeded.batches
                    ).to(device)
                    optimizer.zero_grad()
                    loss = torch.nn.functional.mse_loss(net(x[index]), y[index])
                    loss.backward()
                    optimizer.step()
                if step % settings.eval_every == 0 or step == settings.steps:
                    rows.append(
                        dict(
                            method=label,
                            seed=seed,
                            step=step,
                            train_loss=_mean_squared_error(net, x, y),
                            test_loss=_mean_squared_error(net, x_test, y_test),
                        )
                    )
    return pd.DataFrame(rows)
