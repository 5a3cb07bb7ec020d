r"""Many small first-layer steps instead of one large one (claim C17): the training run.

The network is the one-step problem's ``f(x) = (1/√N) aᵀ σ(W x)`` with a fixed (the
:class:`~.onestep.TwoLayerNetwork` module: W is its only parameter), on the same instance
(Σ, β⋆) and initialization (W0, a) of a seed. Instead of one step of size ``lr`` it takes T
steps on the loss L̂t(W) = (1/2n) Σi (yi − f(xi))² of batch t:

    sgd      W ← W − ηt N ∇W L̂t(W)
    kfac     W ← W − ηt N ∇W L̂t(W) (Σ̂x,t + λG I)⁻¹   (the problem's layer-wise step, right factor)
    adam     torch.optim.Adam on W
    shampoo, soap, muon   layerwise.optim's Shampoo, SOAP, Muon on W (config ``options``)

**Batches.** Fresh batches of n samples each step (online, the default: T·n samples in all),
so that the picture is not one of fitting a fixed batch of n ≈ 2d samples for T steps; with
``batches: same`` every step reuses the first batch (the one-step data).

**Step sizes (norm-matched first step).** For every method the per-step learning rate ηt is
set once per seed so that its first update has the Frobenius norm of the sgd first update with
step ``lr/T``, ‖ΔW1‖F = (lr/T) N ‖∇W L̂1(W0)‖F; ``lr`` is the config's total step in the one-step
problem's units (lr = 1: the one-step experiments' step, split into T pieces). The first update
of every method here is linear in its learning rate (no weight decay), so ηt comes from one
trial step at learning rate 1 on a copy of the module and optimizer. Later steps keep ηt: the
methods then differ in direction and in how their step norms evolve.

**Recorded.** At t = 1 and every ``record_every`` steps up to T: the accumulated update
ΔWt = Wt − W0 (the learned part of the first layer; W0's random part has no leading direction),
its spike (top right singular vector: alignment with β⋆ and Σβ⋆, separation σ1/σ2), its row
alignments (:func:`.metrics.row_alignment`), the loss on the step's batch and on a fresh test
batch. At t = 1 the directions are those of the one-step methods on batch 1.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from enum import StrEnum

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor

from layerwise import optim
from layerwise.experiments.registry import MethodSpec, RunTask

from . import metrics
from .data import Instance, make_instance, sample
from .onestep import TwoLayerNetwork, empirical_covariance, one_step_loss
from .settings import SingleIndexSettings

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


METHOD_MODELS: dict[str, type[BaseModel]] = {
    "sgd": ManySgdParams,
    "kfac": ManyKfacParams,
    "adam": OptimizerParams,
    "shampoo": OptimizerParams,
    "soap": OptimizerParams,
    "muon": OptimizerParams,
}


def check_method(settings: ManyStepsSettings, algorithm: str, params: BaseModel) -> None:
    """Refuse what cannot run, before anything runs: undamped kfac with n <= d + 1 (each
    batch's Σ̂x is singular), and optimizer ``options`` the optimizer's constructor refuses
    (tried on a 2 × 2 network), naming the options."""
    if algorithm == "kfac" and params.damping == 0 and settings.n <= settings.d + 1:
        raise ValueError(
            f"kfac: damping must be > 0 when n <= d + 1 (each batch's Σ̂x is singular); got "
            f"damping=0, n={settings.n}, d={settings.d}"
        )
    if isinstance(params, OptimizerParams):
        probe = TwoLayerNetwork(torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2), "tanh")
        try:
            _library_optimizer(algorithm, probe, 1.0, dict(params.options))
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{algorithm}: options {dict(params.options)} refused: {error}"
            ) from None


def batch_loss(model: TwoLayerNetwork, x: Tensor, y: Tensor) -> Tensor:
    """L̂(W) = (1/2n) Σi (yi − f(xi))² (the one-step problem's loss)."""
    return 0.5 * (y - model(x).squeeze(-1)).pow(2).mean()


#: A step rule: (model, x, y) -> None, updating the model's W in place.
Stepper = Callable[[TwoLayerNetwork, Tensor, Tensor], None]


def _gradient(model: TwoLayerNetwork, x: Tensor, y: Tensor) -> Tensor:
    weight = model.first.weight
    (gradient,) = torch.autograd.grad(batch_loss(model, x, y), weight)
    return gradient


def make_stepper(spec: MethodSpec, model: TwoLayerNetwork, lr: float) -> Stepper:
    """The update rule of ``spec`` at per-step learning rate ``lr`` (module docstring)."""
    width = model.first.weight.shape[0]
    params = spec.params
    match spec.name:
        case "sgd" | "kfac":
            damping = params.damping if spec.name == "kfac" else None

            def functional_step(module: TwoLayerNetwork, x: Tensor, y: Tensor) -> None:
                direction = _gradient(module, x, y)
                if damping is not None:
                    factor = empirical_covariance(x) + damping * torch.eye(
                        x.shape[-1], dtype=x.dtype, device=x.device
                    )
                    # G (Σ̂x + λI)⁻¹ = ((Σ̂x + λI)⁻¹ Gᵀ)ᵀ, the factor being symmetric.
                    direction = torch.linalg.solve(factor, direction.T).T
                with torch.no_grad():
                    module.first.weight.sub_(lr * width * direction)

            return functional_step
        case "adam" | "shampoo" | "soap" | "muon":
            optimizer = _library_optimizer(spec.name, model, lr, dict(params.options))

            def optimizer_step(module: TwoLayerNetwork, x: Tensor, y: Tensor) -> None:
                optimizer.zero_grad()
                batch_loss(module, x, y).backward()
                optimizer.step()

            return optimizer_step
        case other:
            raise ValueError(f"unknown many-step method {other!r}; known: {list(METHOD_MODELS)}")


def _library_optimizer(
    algorithm: str, model: TwoLayerNetwork, lr: float, options: dict
) -> torch.optim.Optimizer:
    match algorithm:
        case "adam":
            return torch.optim.Adam(model.parameters(), lr=lr, **options)
        case "shampoo":
            return optim.Shampoo(model.parameters(), lr=lr, **options)
        case "soap":
            return optim.SOAP(model.parameters(), lr=lr, **options)
        case "muon":
            return optim.Muon(model.parameters(), lr=lr, **options)
        case other:  # pragma: no cover - make_stepper matches first
            raise ValueError(f"unknown optimizer {other!r}")


def matched_learning_rate(
    spec: MethodSpec, model: TwoLayerNetwork, x: Tensor, y: Tensor, target_norm: float
) -> float:
    """ηt such that the method's first update on (x, y) has Frobenius norm ``target_norm``: one
    trial step at learning rate 1 on a copy (first updates are linear in the learning rate)."""
    trial = copy.deepcopy(model)
    start = trial.first.weight.detach().clone()
    make_stepper(spec, trial, 1.0)(trial, x, y)
    moved = float(torch.linalg.matrix_norm(trial.first.weight.detach() - start))
    if not moved > 0 or not math.isfinite(moved):
        raise ValueError(f"{spec.name}: the first update has norm {moved}; cannot match it")
    return target_norm / moved


def _batches(settings: ManyStepsSettings, instance: Instance) -> tuple[Tensor, Tensor]:
    """x (S, T, n, d) and y (S, T, n): the step batches of every seed."""
    n, steps = settings.n, settings.steps
    draws = n * steps if settings.batches == BatchPolicy.FRESH else n
    x, y, _ = sample(instance, "step", draws)
    x = x.reshape(x.shape[0], -1, n, x.shape[-1])
    y = y.reshape(y.shape[0], -1, n)
    if settings.batches == BatchPolicy.SAME:
        x, y = x.expand(-1, steps, -1, -1), y.expand(-1, steps, -1)
    return x, y


def train(
    spec: MethodSpec, settings: ManyStepsSettings, w0: Tensor, a: Tensor, x: Tensor, y: Tensor
) -> tuple[dict[int, Tensor], dict[int, float]]:
    """One seed: T steps of ``spec`` from (W0, a) on batches x (T, n, d), y (T, n).

    Returns Wt (N, d) at the recorded steps and the loss on each recorded step's batch (before
    that step's update is taken, i.e. at Wt−1, the loss the step saw)."""
    model = TwoLayerNetwork(w0, a, settings.activation)
    width = w0.shape[0]
    with torch.enable_grad():
        sgd_gradient = _gradient(model, x[0], y[0])
    target = spec.params.lr / settings.steps * width * float(torch.linalg.matrix_norm(sgd_gradient))
    with torch.enable_grad():
        rate = matched_learning_rate(spec, model, x[0], y[0], target)
    step = make_stepper(spec, model, rate)
    recorded = set(settings.recorded_steps)
    weights, losses = {}, {}
    with torch.enable_grad():
        for t in range(1, settings.steps + 1):
            if t in recorded:
                with torch.no_grad():
                    losses[t] = float(batch_loss(model, x[t - 1], y[t - 1]))
            step(model, x[t - 1], y[t - 1])
            if t in recorded:
                weights[t] = model.first.weight.detach().clone()
    return weights, losses


def run_seeds(
    settings: ManyStepsSettings, methods: dict[str, MethodSpec], seeds: tuple[int, ...]
) -> pd.DataFrame:
    """Every method on every seed (paired: one instance, initialization and batch stream per
    seed); one row per seed × method × recorded step (module docstring)."""
    for label, spec in methods.items():
        try:
            check_method(settings, spec.name, spec.params)
        except ValueError as error:
            raise ValueError(f"method {label!r}: {error}") from None
    instance = make_instance(settings, seeds)
    x, y = _batches(settings, instance)
    x_test, y_test, _ = sample(instance, "test", settings.n_test)
    covariance = instance.covariance
    steps = settings.recorded_steps
    frames = []
    for label, spec in methods.items():
        per_seed = [
            train(spec, settings, instance.w0[s], instance.a[s], x[s], y[s])
            for s in range(len(seeds))
        ]
        for t in steps:
            w = torch.stack([weights[t] for weights, _ in per_seed])  # (S, N, d)
            delta = w - instance.w0
            top = metrics.spike(delta)
            spike_align = metrics.alignments(top.direction, instance.beta, covariance)
            row_align = metrics.row_alignments(delta, instance.beta, covariance)
            test_loss = one_step_loss(w, instance.a, x_test, y_test, settings.activation)
            columns = {
                "spike_align_beta": spike_align["beta"],
                "spike_align_sigma_beta": spike_align["sigma_beta"],
                "spike_separation": top.separation,
                "row_align_beta": row_align["beta"],
                "row_align_sigma_beta": row_align["sigma_beta"],
                "update_norm": torch.linalg.matrix_norm(delta),
                "test_loss": test_loss,
            }
            frame = pd.DataFrame({k: v.detach().numpy() for k, v in columns.items()})
            frame.insert(0, "seed", list(seeds))
            frame.insert(1, "method", label)
            frame.insert(2, "algorithm", spec.name)
            frame.insert(3, "step", t)
            frame.insert(4, "batch_loss", [losses[t] for _, losses in per_seed])
            for position, (name, value) in enumerate(
                (
                    ("steps", settings.steps),
                    ("lr", spec.params.lr),
                    ("d", settings.d),
                    ("n_over_d", settings.n_over_d),
                    ("kappa", settings.kappa),
                    ("link", str(settings.link)),
                    ("batches", str(settings.batches)),
                ),
                start=5,
            ):
                frame.insert(position, name, value)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def run_task(task: RunTask) -> pd.DataFrame:
    """The registered run function: one grid point, its methods and seeds (CPU).

    One intra-op thread: the matrices are small (d ≤ a few hundred), and several threads per
    process on a shared machine made the steps tens of times slower (measured)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_seeds(task.settings, dict(task.methods), tuple(task.seeds))
    finally:
        torch.set_num_threads(previous)
