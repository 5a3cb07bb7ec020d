"""Run an algorithm on paired seeds, and the step-size tuning stage (SPEC §2).

``simulate`` runs one algorithm for R step sizes × S seeds at once, records the spectral subspace
distance after every iteration (iteration 0 is the initialization) and the other metrics at the
requested iterations, detects divergence, and stops early when the caller's stopping rule says
so. ``tune_step_size`` implements the tuning stage: on the shared grid 2**lo … 2**hi and the tuning
seeds (disjoint from the reported ones), pick the step size whose *worst* iterations-to-eps over
the tuning seeds is smallest (a diverged or censored seed counts as infinite), ties broken by the
fewest diverged tuning seeds, then by the smallest median distance at the stopping iteration.
All R × T runs go in one batched simulation, which stops as soon as one step size has brought
every tuning seed to eps: any step size not done by then is strictly worse.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from pydantic import BaseModel

from layerwise.experiments.progress import iteration_bar
from layerwise.problems.linrep.algorithms import Method
from layerwise.problems.linrep.data import (
    DTYPE,
    BatchStream,
    Instance,
    heldout_set,
    make_instance,
    transfer_set,
)
from layerwise.problems.linrep.methods import at_damping
from layerwise.problems.linrep.methods import method as registered
from layerwise.problems.linrep.metrics import squared_loss, subspace_distance, transfer_excess_risk
from layerwise.problems.linrep.settings import TUNING_SEED_OFFSET, LinrepSettings

#: A replica whose end-to-end map F G exceeds this norm has diverged (‖F⋆G⋆‖₂ ≤ 1).
DIVERGENCE_NORM = 1e6

#: Extra metrics that ``simulate`` can log (the spectral distance is always recorded).
METRICS = ("distance_fro", "train_loss", "heldout_loss", "transfer_risk")


def build_method(
    algorithm: str, params: BaseModel, instance: Instance, lr: Iterable[float], damping: float = 0.0
) -> Method:
    """Instantiate ``algorithm`` (a name of :data:`~layerwise.problems.linrep.methods.METHODS`)
    with step sizes ``lr`` (one replica each) on ``instance``; ``damping``: the value of a
    second-order method's damping grid this run uses."""
    entry = registered(algorithm)
    if entry.damping_grid:
        params = at_damping(params, damping)
    device = instance.features.device
    lr_tensor = torch.tensor(list(lr), dtype=DTYPE, device=device).reshape(-1, 1, 1, 1)
    return entry.constructor(instance.init_features, instance.init_head, lr_tensor, params)


#: ``(algorithm, params, instance, step sizes, damping) -> Method``: how a problem that reuses
#: this driver (e.g. ``deep_linrep``) builds its methods; :func:`build_method` is linrep's.
MethodBuilder = Callable[[str, BaseModel, Instance, Iterable[float], float], Method]


@dataclass
class Trace:
    """What ``simulate`` records; arrays are indexed (…, R, S)."""

    distance: np.ndarray  # (steps + 1, R, S), NaN once diverged
    first_hit: np.ndarray  # (R, S) first iteration with distance <= eps, -1 if none
    diverged: np.ndarray  # (R, S) bool
    steps: int
    seconds_per_iteration: float
    log_iterations: list[int] = field(default_factory=list)
    logged: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (L, R, S)
    transfer: dict[int, np.ndarray] = field(default_factory=dict)  # n_transfer -> (R, S), final


StopRule = Callable[[np.ndarray, np.ndarray], bool]


def all_done(first_hit: np.ndarray, diverged: np.ndarray) -> bool:
    """Stop when every replica reached eps or diverged."""
    return bool(((first_hit >= 0) | diverged).all())


def one_replica_done(first_hit: np.ndarray, diverged: np.ndarray) -> bool:
    """Stop when some replica (step size) has every seed at eps (the tuning rule)."""
    return bool((first_hit >= 0).all(axis=1).any()) or bool(diverged.all())


def never(first_hit: np.ndarray, diverged: np.ndarray) -> bool:
    return bool(diverged.all())


def simulate(
    settings: LinrepSettings,
    instance: Instance,
    method: Method,
    *,
    stop: StopRule = all_done,
    log_iterations: Iterable[int] = (),
    metrics: Iterable[str] = (),
    final_transfer: bool = False,
    progress: str | None = None,
) -> Trace:
    """Run ``method`` for at most ``settings.iterations`` steps on the instance's data stream.

    ``progress``: the description of a bar over the iterations (None: no bar)."""
    log_at = set(log_iterations)
    metrics = tuple(metrics)
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {METRICS}")
    stream = BatchStream(settings, instance)
    heldout = heldout_set(settings, instance) if "heldout_loss" in metrics else None
    transfer = (
        transfer_set(settings, instance) if "transfer_risk" in metrics or final_transfer else None
    )
    shape = method.features.shape[:2]
    diverged = torch.zeros(shape, dtype=torch.bool, device=method.features.device)
    distances = [subspace_distance(method.features, instance.features)]
    first_hit = np.where(distances[0].cpu().numpy() <= settings.eps, 0, -1)
    logged: dict[str, list[np.ndarray]] = {name: [] for name in metrics}
    logged_iterations: list[int] = []

    def transfer_risk(size: int) -> torch.Tensor:
        subset = type(transfer)(transfer.x[..., :size, :], transfer.y[..., :size, :])
        task = instance.transfer
        return transfer_excess_risk(
            method.features, subset, task.head, instance.features, task.input_cov
        )

    def log(iteration: int, batch) -> None:
        logged_iterations.append(iteration)
        values = {}
        if "distance_fro" in metrics:
            values["distance_fro"] = subspace_distance(method.features, instance.features, "fro")
        if "train_loss" in metrics:
            values["train_loss"] = squared_loss(method.predict(batch.x), batch.y)
        if "heldout_loss" in metrics:
            values["heldout_loss"] = squared_loss(method.predict(heldout.x), heldout.y)
        if "transfer_risk" in metrics:
            values["transfer_risk"] = transfer_risk(settings.transfer_sizes[0])
        for name, value in values.items():
            logged[name].append(np.where(diverged.cpu().numpy(), np.nan, value.cpu().numpy()))

    start = time.perf_counter()
    steps = 0
    bar = iteration_bar(progress, settings.iterations)
    for iteration in range(1, settings.iterations + 1):
        bar.update(1)
        batch = stream.next()
        if iteration - 1 in log_at:
            # Losses at iteration t are those of the iterate before step t + 1, on its batch.
            log(iteration - 1, batch)
        method.step(batch)
        steps = iteration
        product = method.head @ method.features
        bad = ~torch.isfinite(product).all(-1).all(-1) | method.failed
        bad |= torch.linalg.matrix_norm(torch.nan_to_num(product, nan=0.0)) > DIVERGENCE_NORM
        if bad.any():
            diverged |= bad
            method.restore(bad)
        distance = subspace_distance(method.features, instance.features)
        distance = torch.where(diverged, torch.nan, distance)
        distances.append(distance)
        dist_np = distance.cpu().numpy()
        first_hit = np.where((first_hit < 0) & (dist_np <= settings.eps), iteration, first_hit)
        if stop(first_hit, diverged.cpu().numpy()):
            break
    bar.close()
    elapsed = time.perf_counter() - start
    if steps in log_at:
        log(steps, stream.next())
    trace = Trace(
        distance=torch.stack(distances).cpu().numpy(),
        first_hit=first_hit,
        diverged=diverged.cpu().numpy(),
        steps=steps,
        seconds_per_iteration=elapsed / max(steps, 1),
        log_iterations=logged_iterations,
        logged={name: np.stack(values) for name, values in logged.items() if values},
    )
    if final_transfer:
        for size in settings.transfer_sizes:
            risk = transfer_risk(size).cpu().numpy()
            trace.transfer[size] = np.where(trace.diverged, np.nan, risk)
    return trace


@dataclass(frozen=True)
class Tuning:
    """The tuning stage's outcome: the chosen step size and the per-step-size evidence."""

    lr: float
    grid: tuple[float, ...]
    worst_iterations: tuple[float, ...]  # inf: some tuning seed diverged or did not reach eps
    diverged_seeds: tuple[int, ...]
    median_distance: tuple[float, ...]


def tune_step_size(
    settings: LinrepSettings,
    algorithm: str,
    params: BaseModel,
    device: str = "cpu",
    damping: float = 0.0,
    progress: str | None = None,
    builder: MethodBuilder = build_method,
) -> Tuning:
    """Choose the step size on the shared grid by the worst iterations-to-eps (SPEC §2).

    ``progress``: a description for a bar over the tuning iterations (None: no bar);
    ``builder``: how the method is built (another problem's methods on linrep's instances)."""
    seeds = tuple(TUNING_SEED_OFFSET + i for i in range(settings.tuning_seeds))
    instance = make_instance(settings, seeds, device)
    grid = settings.step_sizes
    override = getattr(params, "lr_grid", None)
    if override is not None:
        grid = [2.0**e for e in range(override[0], override[1] + 1)]
    method = builder(algorithm, params, instance, grid, damping)
    if progress is not None:
        progress = f"{progress}: tuning {len(grid)} step sizes"
    trace = simulate(settings, instance, method, stop=one_replica_done, progress=progress)
    reached = (trace.first_hit >= 0) & ~trace.diverged
    worst = np.where(reached.all(axis=1), trace.first_hit.max(axis=1), np.inf)
    final = np.where(trace.diverged, np.inf, trace.distance[-1])
    median = np.median(final, axis=1)
    diverged = trace.diverged.sum(axis=1)
    # Lexicographic: fewest worst-case iterations, then (among step sizes that all fail to reach
    # eps) fewest diverged tuning seeds, then smallest median distance. The middle key keeps the
    # worst-case spirit when every step size is censored: otherwise the median distance favours
    # edge-of-stability steps that diverge on some seeds.
    order = sorted(range(len(grid)), key=lambda r: (worst[r], diverged[r], median[r]))
    return Tuning(
        lr=grid[order[0]],
        grid=tuple(grid),
        worst_iterations=tuple(float(w) for w in worst),
        diverged_seeds=tuple(int(v) for v in diverged),
        median_distance=tuple(float(m) for m in median),
    )


def resolve_step_size(
    settings: LinrepSettings,
    algorithm: str,
    params: BaseModel,
    device: str,
    damping: float = 0.0,
    progress: str | None = None,
    builder: MethodBuilder = build_method,
) -> tuple[float, Tuning | None]:
    """``params.lr`` if it is a number, else the tuned step size."""
    if params.lr != "tune":
        return float(params.lr), None
    tuning = tune_step_size(settings, algorithm, params, device, damping, progress, builder)
    return tuning.lr, tuning


def iterations_to_eps(trace: Trace, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, censored) per (R, S): a run that did not reach eps is censored at the budget."""
    censored = (trace.first_hit < 0) | trace.diverged
    return np.where(censored, budget, trace.first_hit), censored


def contraction_rate(distance: np.ndarray, eps: float) -> float:
    """Fitted per-iteration contraction of one seed's distance curve (iterations 0..T).

    Least-squares slope of log(distance) over the iterations from the first distance ≤ 0.3 (the
    local regime) to the first distance ≤ eps (or the end); exp(slope) is the rate. NaN if the
    curve diverged or has fewer than two usable points.
    """
    curve = np.asarray(distance, dtype=float)
    if not np.all(np.isfinite(curve)):
        return math.nan
    start = int(np.argmax(curve <= 0.3)) if np.any(curve <= 0.3) else 0
    stop = int(np.argmax(curve <= eps)) if np.any(curve <= eps) else len(curve) - 1
    if stop <= start:
        start = 0
    window = curve[start : stop + 1]
    if len(window) < 2 or np.any(window <= 0):
        return math.nan
    steps = np.arange(len(window))
    slope = np.polyfit(steps, np.log(window), 1)[0]
    return float(np.exp(slope))
