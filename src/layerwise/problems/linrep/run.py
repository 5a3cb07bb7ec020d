"""Run functions of the linrep experiments: one ``RunTask`` -> tidy rows.

Each run function (1) refuses methods the settings cannot support, (2) resolves every method's
step size (a number, or the tuning stage of :mod:`driver`), (3) simulates all reported seeds of a
method in one batched run and (4) returns rows with the columns ``seed``, ``method`` (the label),
``algorithm``, ``lr``, ``lr_tuned``, ``damping`` and the experiment's metrics, plus the main
settings (``kappa_x``, ``kappa_f``, ``basis``, ``n``, ``d``, ``k``, ``noise_std``) so that claims
can group rows without knowing the grid.

Row shapes:

- ``trajectory``: one row per (seed, method, logged iteration): ``iteration``, ``distance``,
  ``distance_fro``, ``train_loss``, ``heldout_loss``, ``transfer_risk``;
- ``summary``: one row per (seed, method[, damping]): ``iterations_to_eps`` (censored at the
  budget), ``censored``, ``diverged``, ``final_distance``, ``rate`` (fitted contraction),
  ``seconds_per_iteration`` (median time of one step of all seeds, see :func:`step_cost`);
- ``transfer``: a summary row per n_transfer with ``n_transfer`` and ``transfer_risk``;
- ``floor``: a summary row with ``stationary_distance`` (median distance over the last half of
  the budget), ``n_effective`` (n, or n/2 for dfw) and ``n_effective_minus_d``.

Intra-op threads are set to 1 while a run computes: the matrices are small and batched, and
threading them costs far more than it gains (a measured 50× slowdown on a loaded 2-core machine);
parallelism comes from the runner's worker processes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from layerwise.experiments.registry import MethodSpec, RunTask
from layerwise.problems.linrep.data import BatchStream, make_instance
from layerwise.problems.linrep.driver import (
    METRICS,
    MethodBuilder,
    Trace,
    all_done,
    build_method,
    contraction_rate,
    iterations_to_eps,
    never,
    resolve_step_size,
    simulate,
)
from layerwise.problems.linrep.settings import (
    TUNING_SEED_OFFSET,
    LinrepSettings,
    check_method,
    has_enough_samples,
)

#: Steps timed by :func:`step_cost`.
COST_REPEATS = 10

SETTINGS_COLUMNS = ("kappa_x", "kappa_f", "basis", "n", "d", "k", "noise_std")


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class MethodRun:
    """One label's simulation (one damping value for second-order methods)."""

    label: str
    algorithm: str
    lr: float
    lr_tuned: bool
    damping: float
    trace: Trace


def _dampings(spec: MethodSpec) -> tuple[float, ...]:
    return tuple(getattr(spec.params, "damping", (float("nan"),)))


def _check(task: RunTask) -> tuple[LinrepSettings, dict]:
    """Validate the task; return the settings and the methods to run.

    A method the settings cannot support is refused (``check_method``), unless its
    parameters ask to skip such points (dfw with ``too_few_samples: skip``): it is then left out.
    """
    settings = task.settings
    if not isinstance(settings, LinrepSettings):
        raise TypeError(f"linrep runs need LinrepSettings, got {type(settings).__name__}")
    if any(seed >= TUNING_SEED_OFFSET or seed < 0 for seed in task.seeds):
        raise ValueError(f"reported seeds must be in [0, {TUNING_SEED_OFFSET}), got {task.seeds}")
    methods = {}
    for label, spec in task.methods.items():
        try:
            check_method(settings, spec.name, spec.params)
        except ValueError as error:
            raise ValueError(f"method {label!r}: {error}") from None
        if has_enough_samples(settings, spec.name):
            methods[label] = spec
    return settings, methods


def _bar_description(task: RunTask, label: str, damping: float) -> str:
    seeds = (
        f"seeds {task.seeds[0]}-{task.seeds[-1]}"
        if len(task.seeds) > 1
        else f"seed {task.seeds[0]}"
    )
    at = "" if np.isnan(damping) else f" damping={damping:g}"
    return f"{task.experiment} {label}{at} ({seeds})"


def run_methods(
    task: RunTask,
    *,
    log_iterations: tuple[int, ...] = (),
    metrics: tuple[str, ...] = (),
    to_budget: bool = False,
    final_transfer: bool = False,
    builder: MethodBuilder = build_method,
) -> tuple[LinrepSettings, list[MethodRun]]:
    """Tune (where asked) and simulate every method of ``task`` on the paired seeds.

    ``builder`` builds the methods (default: linrep's; ``deep_linrep`` passes its own)."""
    settings, methods = _check(task)
    runs = []
    with single_thread():
        instance = make_instance(settings, tuple(task.seeds), task.device)
        for label, spec in methods.items():
            for damping in _dampings(spec):
                damping_value = 0.0 if np.isnan(damping) else damping
                bar = _bar_description(task, label, damping) if task.progress else None
                lr, tuning = resolve_step_size(
                    settings, spec.name, spec.params, task.device, damping_value, bar, builder
                )
                method = builder(spec.name, spec.params, instance, [lr], damping_value)
                trace = simulate(
                    settings,
                    instance,
                    method,
                    stop=never if to_budget else all_done,
                    log_iterations=log_iterations,
                    metrics=metrics,
                    final_transfer=final_transfer,
                    progress=bar and f"{bar} lr={lr:g}",
                )
                trace.seconds_per_iteration = step_cost(
                    builder(spec.name, spec.params, instance, [lr], damping_value),
                    settings,
                    instance,
                )
                runs.append(MethodRun(label, spec.name, lr, tuning is not None, damping, trace))
    return settings, runs


def step_cost(method, settings: LinrepSettings, instance, repeats: int = COST_REPEATS) -> float:
    """Median wall seconds of one ``method.step`` (all seeds) over ``repeats`` steps on one batch.

    Measured apart from the run so that a run that stops after one step (kfac at η = 1) still
    gets a stable cost, and metrics and data generation are not counted.
    """
    batch = BatchStream(settings, instance).next()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        method.step(batch)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _base_row(settings: LinrepSettings, run: MethodRun, seed: int) -> dict:
    row = {
        "seed": seed,
        "method": run.label,
        "algorithm": run.algorithm,
        "lr": run.lr,
        "lr_tuned": run.lr_tuned,
        "damping": run.damping,
    }
    row.update({name: getattr(settings, name) for name in SETTINGS_COLUMNS})
    return row


def _summary(settings: LinrepSettings, run: MethodRun, index: int, seed: int) -> dict:
    trace = run.trace
    iterations, censored = iterations_to_eps(trace, settings.iterations)
    curve = trace.distance[:, 0, index]
    row = _base_row(settings, run, seed)
    row.update(
        iterations_to_eps=int(iterations[0, index]),
        censored=bool(censored[0, index]),
        diverged=bool(trace.diverged[0, index]),
        final_distance=float(curve[-1]),
        rate=contraction_rate(curve, settings.eps),
        seconds_per_iteration=trace.seconds_per_iteration,
        eps=settings.eps,
        budget=settings.iterations,
    )
    return row


def run_summary(task: RunTask, *, builder: MethodBuilder = build_method) -> pd.DataFrame:
    """Iterations to eps, censoring, divergence and the fitted rate per seed and method."""
    settings, runs = run_methods(task, builder=builder)
    rows = [_summary(settings, run, i, seed) for run in runs for i, seed in enumerate(task.seeds)]
    return pd.DataFrame(rows)


def log_schedule(iterations: int, points: int) -> tuple[int, ...]:
    """About ``points`` iterations: log- and linearly spaced in 0..iterations, ends included."""
    geometric = np.geomspace(1, iterations, points)
    linear = np.linspace(0, iterations, points // 2)
    values = np.unique(np.concatenate([[0], np.round(geometric), np.round(linear)]).astype(int))
    return tuple(int(v) for v in values)


def run_trajectories(task: RunTask) -> pd.DataFrame:
    """Losses, distances and transfer risk against iterations (the Figure 1 analogue)."""
    settings = task.settings
    schedule = log_schedule(settings.iterations, settings.log_points)
    settings, runs = run_methods(task, log_iterations=schedule, metrics=METRICS, to_budget=True)
    rows = []
    for run in runs:
        trace = run.trace
        for j, iteration in enumerate(trace.log_iterations):
            for i, seed in enumerate(task.seeds):
                row = _base_row(settings, run, seed)
                row["iteration"] = iteration
                row["distance"] = float(trace.distance[min(iteration, trace.steps), 0, i])
                for name in METRICS:
                    row[name] = float(trace.logged[name][j, 0, i])
                rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["seed", "method"])


def run_transfer(task: RunTask) -> pd.DataFrame:
    """Transfer excess risk of each method's representation after the full budget."""
    settings, runs = run_methods(task, to_budget=True, final_transfer=True)
    rows = []
    for run in runs:
        for i, seed in enumerate(task.seeds):
            base = _summary(settings, run, i, seed)
            for size, risk in run.trace.transfer.items():
                rows.append({**base, "n_transfer": size, "transfer_risk": float(risk[0, i])})
    return pd.DataFrame(rows)


def run_floor(task: RunTask) -> pd.DataFrame:
    """Stationary distance (median over the last half of the budget) per seed and method."""
    settings, runs = run_methods(task, to_budget=True)
    rows = []
    for run in runs:
        tail = run.trace.distance[settings.iterations // 2 :, 0, :]
        effective = settings.n // 2 if run.algorithm == "dfw" else settings.n
        for i, seed in enumerate(task.seeds):
            row = _summary(settings, run, i, seed)
            row.update(
                stationary_distance=float(np.median(tail[:, i])),
                n_effective=effective,
                n_effective_minus_d=effective - settings.d,
            )
            rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["seed", "method"])


def mode_of(params) -> str:
    """``exact`` or ``amortized`` for a library optimizer (its ``exact`` option), ``paper`` for
    the paper's algorithms."""
    options = getattr(params, "options", None)
    if options is None:
        return "paper"
    return "exact" if options.exact else "amortized"


def run_layerwise(task: RunTask) -> pd.DataFrame:
    """linrep-layerwise (C14, C18): ``run_summary`` rows with the column ``mode``
    (``exact``/``amortized``/``paper``)."""
    table = run_summary(task)
    modes = {label: mode_of(spec.params) for label, spec in task.methods.items()}
    return table.assign(mode=table["method"].map(modes))
