r"""T small first-layer steps per method and seed (claim C17), as tidy rows.

Every method of the task starts from the same instance (Σ, β⋆) and initialization (W0, a) of a
seed (the one-step problem's) and sees the same step batches (:func:`.data.step_batches`):
fresh batches of n samples each step (online, the default: T·n samples in all), so that the
picture is not one of fitting a fixed batch of n ≈ 2d samples for T steps; with
``batches: same`` every step reuses the first batch (the one-step data). The step rules and
their norm-matched learning rates are :mod:`.methods`'.

**Recorded.** At t = 1 and every ``record_every`` steps up to T: the accumulated update
ΔWt = Wt − W0 (the learned part of the first layer; W0's random part has no leading direction),
its spike (top right singular vector: alignment with β⋆ and Σβ⋆, separation σ1/σ2), its row
alignments (:func:`layerwise.problems.single_index.metrics.row_alignment`), the loss on the
step's batch and on a fresh test batch. At t = 1 the directions are those of the one-step
methods on batch 1.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from layerwise.experiments.registry import MethodSpec, RunTask
from layerwise.problems.single_index import metrics
from layerwise.problems.single_index.onestep import TwoLayerNetwork, one_step_loss

from .data import make_instance, sample, step_batches
from .methods import batch_loss, gradient, make_stepper, matched_learning_rate
from .settings import ManyStepsSettings, check_method


def train(
    spec: MethodSpec, settings: ManyStepsSettings, w0: Tensor, a: Tensor, x: Tensor, y: Tensor
) -> tuple[dict[int, Tensor], dict[int, float]]:
    """One seed: T steps of ``spec`` from (W0, a) on batches x (T, n, d), y (T, n).

    Returns Wt (N, d) at the recorded steps and the loss on each recorded step's batch (before
    that step's update is taken, i.e. at Wt−1, the loss the step saw)."""
    model = TwoLayerNetwork(w0, a, settings.activation)
    width = w0.shape[0]
    with torch.enable_grad():
        sgd_gradient = gradient(model, x[0], y[0])
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
    x, y = step_batches(settings, instance)
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
