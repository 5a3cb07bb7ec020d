"""The ``mlp`` problem and the ``mlp-optimizers`` experiment: a small end-to-end comparison of
the optimizers on a synthetic teacher–student regression task.

Data. For seed ``s`` a fixed teacher :math:`y = A^\\star \\tanh(W^\\star x) + \\sigma\\varepsilon`,
:math:`x \\sim N(0, I_{d_{in}})`, :math:`W^\\star_{ij} \\sim N(0, 1/d_{in})` (shape
``teacher_hidden × d_in``), :math:`A^\\star_{ij} \\sim N(0, 1/\\text{teacher\\_hidden})`, and
:math:`\\varepsilon \\sim N(0, I)`, gives ``n_train`` training and ``n_test`` held-out samples.

Student. :math:`f(x) = A \\tanh(W x)` without biases (every parameter is a matrix, so every
layer-wise optimizer preconditions all of them), ``W`` of shape ``hidden × d_in`` and ``A`` of
shape ``d_out × hidden``, initialised with entries :math:`N(0, 1/\\text{fan\\_in})`.

Training. ``steps`` minibatch steps on the mean squared error ``mean((f(x) - y)^2)`` over the
batch and the outputs (``torch.nn.functional.mse_loss``, the loss KFAC's ``loss="mse"``
means), minibatches of ``batch_size`` training indices drawn with replacement. Everything is
float64.

Pairing. Teacher, data, initialisation and minibatch order come from three independent
streams of ``numpy.random.SeedSequence(seed)``, so for a given seed every method sees the same
instance, the same starting point and the same batches.

Rows: one per (method, seed, step) for steps ``0, eval_every, 2·eval_every, …, steps``, with
``train_loss`` (on the whole training set) and ``test_loss`` (held out), both the mean squared
error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from layerwise.experiments import plots
from layerwise.experiments.registry import (
    Claim,
    Experiment,
    Problem,
    RunTask,
    Verdict,
    register_experiment,
    register_problem,
)

#: The claim's threshold: final held-out loss over initial held-out loss (median over seeds).
HELD_OUT_RATIO = 0.5


class MLPSettings(BaseModel):
    """Settings of the teacher–student task (see the module docstring)."""

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


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(gt=0)


class SGDParams(_Params):
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)


class AdamWParams(_Params):
    lr: float = Field(1e-2, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class LayerwiseParams(_Params):
    """Hyperparameters of the project's Shampoo, SOAP and Muon (``exact``: textbook mode)."""

    lr: float = Field(1e-2, gt=0)
    exact: bool = False


class KFACParams(_Params):
    lr: float = Field(0.1, gt=0)
    curvature: Literal["empirical", "mc_fisher", "ggn"] = "ggn"
    exact: bool = False


OptimizerFactory = Callable[[torch.nn.Module, BaseModel], torch.optim.Optimizer]

#: algorithm -> (hyperparameter model, factory(model, params) -> optimizer).
METHODS: dict[str, tuple[type[BaseModel], OptimizerFactory]] = {
    "sgd": (
        SGDParams,
        lambda net, p: torch.optim.SGD(net.parameters(), lr=p.lr, momentum=p.momentum),
    ),
    "adamw": (
        AdamWParams,
        lambda net, p: torch.optim.AdamW(net.parameters(), lr=p.lr, weight_decay=p.weight_decay),
    ),
}


def _on_parameters(cls) -> OptimizerFactory:
    # Shampoo, SOAP, Muon: the torch.optim contract, on the parameters.
    return lambda net, p: cls(net.parameters(), lr=p.lr, exact=p.exact)


def _on_model(cls) -> OptimizerFactory:
    # KFAC must see the layers' activations, so it takes the model.
    return lambda net, p: cls(net, lr=p.lr, curvature=p.curvature, loss="mse", exact=p.exact)


#: algorithm -> (class in layerwise.optim, hyperparameter model, factory maker). A class this
#: build of layerwise.optim lacks is not registered.
LAYERWISE_METHODS = {
    "shampoo": ("Shampoo", LayerwiseParams, _on_parameters),
    "soap": ("SOAP", LayerwiseParams, _on_parameters),
    "muon": ("Muon", LayerwiseParams, _on_parameters),
    "kfac": ("KFAC", KFACParams, _on_model),
}


def _add_layerwise_methods() -> None:
    try:
        from layerwise import optim
    except ImportError:
        return
    for name, (class_name, params_model, make_factory) in LAYERWISE_METHODS.items():
        cls = getattr(optim, class_name, None)
        if cls is not None:
            METHODS[name] = (params_model, make_factory(cls))


_add_layerwise_methods()


def _streams(seed: int) -> tuple[torch.Generator, torch.Generator, torch.Generator]:
    """Independent generators for (teacher and data, initialisation, minibatch order)."""
    children = np.random.SeedSequence(seed).spawn(3)
    return tuple(
        torch.Generator().manual_seed(int(child.generate_state(1, dtype=np.uint64)[0] >> 1))
        for child in children
    )


def _teacher_data(settings: MLPSettings, generator: torch.Generator):
    s = settings
    w = torch.randn(s.teacher_hidden, s.d_in, generator=generator, dtype=torch.float64)
    a = torch.randn(s.d_out, s.teacher_hidden, generator=generator, dtype=torch.float64)
    w, a = w / s.d_in**0.5, a / s.teacher_hidden**0.5

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, s.d_in, generator=generator, dtype=torch.float64)
        noise = torch.randn(n, s.d_out, generator=generator, dtype=torch.float64)
        return x, torch.tanh(x @ w.T) @ a.T + s.noise * noise

    return sample(s.n_train), sample(s.n_test)


def _student(settings: MLPSettings, generator: torch.Generator) -> torch.nn.Sequential:
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


def run(task: RunTask) -> pd.DataFrame:
    """Train every method of ``task`` on the teacher of each seed; tidy rows (module docstring)."""
    settings: MLPSettings = task.settings  # type: ignore[assignment]
    device = torch.device(task.device)
    rows = []
    for seed in task.seeds:
        for label, spec in task.methods.items():
            data_gen, init_gen, batch_gen = _streams(seed)
            (x, y), (x_test, y_test) = _teacher_data(settings, data_gen)
            x, y, x_test, y_test = (t.to(device) for t in (x, y, x_test, y_test))
            net = _student(settings, init_gen).to(device)
            _, factory = METHODS[spec.name]
            optimizer = factory(net, spec.params)
            for step in range(settings.steps + 1):
                if step > 0:
                    index = torch.randint(
                        settings.n_train, (settings.batch_size,), generator=batch_gen
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


def decide_held_out(table: pd.DataFrame) -> Verdict:
    """Holds if, for every method, the median over seeds of final / initial held-out loss is
    below :data:`HELD_OUT_RATIO`."""
    ratios = {}
    for method, rows in table.groupby("method", sort=True):
        first = rows[rows["step"] == rows["step"].min()].set_index("seed")["test_loss"]
        last = rows[rows["step"] == rows["step"].max()].set_index("seed")["test_loss"]
        ratios[str(method)] = float((last / first).median())
    if not ratios:
        raise ValueError("no rows to decide on")
    worst = max(ratios, key=lambda method: ratios[method])
    holds = all(ratio < HELD_OUT_RATIO for ratio in ratios.values())
    listed = ", ".join(f"{method} {ratio:.3g}" for method, ratio in ratios.items())
    return Verdict(
        holds=bool(holds),
        evidence={"threshold": HELD_OUT_RATIO, "final_over_initial_test_loss": ratios},
        summary=f"median final/initial held-out loss: {listed}; worst {worst} "
        f"({ratios[worst]:.3g} vs threshold {HELD_OUT_RATIO})",
    )


def figure_losses(table: pd.DataFrame):
    """Training and held-out loss vs step, median over seeds with the interquartile band."""
    fig, (train_ax, test_ax) = plots.new_figure(2)
    for ax, column, title in (
        (train_ax, "train_loss", "training"),
        (test_ax, "test_loss", "held-out"),
    ):
        plots.median_band(ax, table, x="step", y=column)
        ax.set_yscale("log")
        ax.set_xlabel("step (minibatch updates)")
        ax.set_ylabel(f"{title} loss (mean squared error)")
        ax.set_title(f"{title} loss")
    test_ax.legend(fontsize=8)
    return fig


PROBLEM = register_problem(
    Problem(
        name="mlp",
        settings_model=MLPSettings,
        method_models={name: model for name, (model, _) in METHODS.items()},
    )
)

EXPERIMENT = register_experiment(
    Experiment(
        name="mlp-optimizers",
        problem="mlp",
        description=(
            "Two-layer tanh MLP student on a synthetic teacher–student regression task, "
            "trained with each optimizer from the same teacher, data, initialisation and batches."
        ),
        run=run,
        claims=(
            Claim(
                id="MLP1",
                statement=(
                    "every optimizer reduces the median held-out loss to below "
                    f"{HELD_OUT_RATIO:.0%} of its initial value"
                ),
                decide=decide_held_out,
            ),
        ),
        figures={"losses": figure_losses},
        seeds_per_run=1,
        split_methods=True,
    )
)
