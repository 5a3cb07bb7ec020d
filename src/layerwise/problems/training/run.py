"""The training loop, the tuning stage and the run function of every training experiment.

One run is one method on one workload: (1) the tuning stage trains every learning rate of the
method's ``lr_grid`` on the tuning seeds (:data:`~.settings.TUNING_SEED_OFFSET` + i) and keeps
the one with the lowest mean final validation loss; (2) the reported seeds (all below the
offset, checked) are trained at that learning rate. Both stages' rows are stored (column
``phase``: ``tune`` or ``report``); claims and figures read the ``report`` rows.

Pairing. For a seed, the initialisation and the minibatch order come from two independent
streams of ``numpy.random.SeedSequence(seed)``, so every method sees the same starting point
and the same batches; the data split is fixed by ``split_seed``. (The other problems seed their
streams with :mod:`layerwise.problems.seeding`; these stay as they are because the measured
full runs the README reports, wall-clock included, were made with them.)

Rows: one per (phase, lr, seed, step) at steps 0, ``eval_every``, ..., ``steps``, with
``train_loss`` (mean minibatch loss since the previous row), ``val_loss`` and ``val_accuracy``
(cross-entropy and accuracy on the whole validation set; for the language model per
character), ``wall_seconds`` (training time up to that step: forward, backward, optimizer and
scheduler steps; evaluation excluded), and per run ``step_seconds`` (mean time of a step),
``state_bytes`` (optimizer state after the last step) and ``diverged``. A run whose training
loss or validation loss becomes non-finite stops there and is recorded as diverged: its later
rows carry an infinite validation loss. So is a run whose optimizer raises
``torch.linalg.LinAlgError`` (a peer's decomposition failing). An unavailable peer gives one
row per reported seed with ``available`` False and the reason in ``note``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from layerwise.experiments.registry import MethodSpec, RunTask
from layerwise.optim.base import state_bytes

from . import data as data_module
from . import methods, models
from .settings import FAMILIES, TUNING_SEED_OFFSET, TrainingSettings

#: A run prints one line per finished training to stderr once it has taken this long.
PROGRESS_AFTER_SECONDS = 30.0


@dataclass(frozen=True)
class Training:
    """One training's rows and its final validation loss (inf if it diverged)."""

    rows: list[dict]
    final_val_loss: float
    seconds: float


def tuning_seeds(settings: TrainingSettings) -> tuple[int, ...]:
    return tuple(TUNING_SEED_OFFSET + i for i in range(settings.tuning_seeds))


def check_seeds(seeds) -> None:
    """Reported seeds must be disjoint from the tuning seeds (all below the offset)."""
    clash = [seed for seed in seeds if seed >= TUNING_SEED_OFFSET or seed < 0]
    if clash:
        raise ValueError(
            f"reported seeds {clash} are not in [0, {TUNING_SEED_OFFSET}): seeds from "
            f"{TUNING_SEED_OFFSET} on are the tuning seeds"
        )


def eval_steps(settings: TrainingSettings) -> list[int]:
    """The steps after 0 with a row: every ``eval_every`` steps, and the last step."""
    return sorted(
        set(range(settings.eval_every, settings.steps + 1, settings.eval_every)) | {settings.steps}
    )


def _streams(seed: int) -> tuple[torch.Generator, torch.Generator]:
    children = np.random.SeedSequence(seed).spawn(2)
    return tuple(
        torch.Generator().manual_seed(int(child.generate_state(1, dtype=np.uint64)[0] >> 1))
        for child in children
    )


def _evaluate(model, x_val, y_val) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x_val)
        loss = F.cross_entropy(logits, y_val).item()
        accuracy = (logits.argmax(-1) == y_val).double().mean().item()
    model.train()
    return loss, accuracy


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(
    settings: TrainingSettings, data, spec: MethodSpec, lr: float, seed: int, device: torch.device
) -> Training:
    """Train ``spec`` at peak learning rate ``lr`` from ``seed``; rows as the module says."""
    s = settings
    init_gen, batch_gen = _streams(seed)
    inputs = data.x_train.shape[1] if isinstance(data, data_module.ClassificationData) else 0
    model = models.build(s, inputs, data.classes, init_gen).to(device)
    optimizers = methods.build_optimizers(model, spec.name, lr, spec.params)
    schedulers = methods.schedulers(optimizers, s)
    x_val, y_val = (t.to(device) for t in data_module.validation_set(data))
    rows: list[dict] = []
    wall = 0.0
    losses: list[float] = []
    diverged = False
    val_loss, accuracy = _evaluate(model, x_val, y_val)
    rows.append(
        dict(
            step=0, train_loss=math.nan, val_loss=val_loss, val_accuracy=accuracy, wall_seconds=0.0
        )
    )
    for step in range(1, s.steps + 1):
        x, y = (t.to(device) for t in data_module.sample_batch(data, s, batch_gen))
        _synchronize(device)
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        try:
            for optimizer in optimizers:
                optimizer.step()
        except torch.linalg.LinAlgError:
            # A peer's decomposition failing on a non-finite or degenerate statistic: the run
            # cannot go on, and is recorded as diverged (ours keep the previous preconditioner).
            loss = torch.tensor(math.nan)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        for scheduler in schedulers:
            scheduler.step()
        value = loss.item()  # synchronizes, so the clock below includes the whole step
        wall += time.perf_counter() - start
        losses.append(value)
        if not math.isfinite(value):
            diverged = True
        if diverged or step % s.eval_every == 0 or step == s.steps:
            val_loss, accuracy = _evaluate(model, x_val, y_val)
            diverged = diverged or not math.isfinite(val_loss)
            rows.append(
                dict(
                    step=step,
                    train_loss=float(np.mean(losses)),
                    val_loss=val_loss if not diverged else math.inf,
                    val_accuracy=accuracy,
                    wall_seconds=wall,
                )
            )
            losses = []
        if diverged:
            break
    steps_taken = step
    # A diverged run keeps its place in every later median: infinite validation loss.
    for later in eval_steps(s):
        if later > rows[-1]["step"]:
            rows.append(
                dict(
                    step=later,
                    train_loss=math.nan,
                    val_loss=math.inf,
                    val_accuracy=math.nan,
                    wall_seconds=wall,
                )
            )
    memory = state_bytes(optimizers)
    for row in rows:
        row.update(
            seed=seed,
            lr=lr,
            step_seconds=wall / max(1, steps_taken),
            state_bytes=memory,
            diverged=diverged,
        )
    return Training(rows, math.inf if diverged else rows[-1]["val_loss"], wall)


def _unavailable_rows(
    label: str, spec: MethodSpec, workload: str, reason: str, seeds: Sequence[int]
) -> pd.DataFrame:
    """One row per reported seed with ``available`` False and the reason: a task that holds
    only this peer (methods split into tasks) still stores rows with the runner's required
    columns (``seed``, ``method``) instead of failing."""
    family, method_kind = FAMILIES[spec.name]
    return pd.DataFrame(
        [
            dict(
                seed=seed,
                phase="report",
                method=label,
                algorithm=spec.name,
                family=family,
                method_kind=method_kind,
                workload=workload,
                available=False,
                note=reason,
            )
            for seed in seeds
        ]
    )


def run_task(task: RunTask) -> pd.DataFrame:
    """Tune, then train the reported seeds, for each method of ``task`` (module docstring)."""
    settings: TrainingSettings = task.settings  # type: ignore[assignment]
    check_seeds(task.seeds)
    device = torch.device(task.device)
    data = data_module.load(settings)
    started = time.perf_counter()
    frames = []
    for label, spec in task.methods.items():

        def progress(phase: str, lr: float, seed: int, result: Training, label=label) -> None:
            if time.perf_counter() - started > PROGRESS_AFTER_SECONDS:
                print(
                    f"{task.experiment} {label} {phase} lr={lr:g} seed={seed}: final val loss "
                    f"{result.final_val_loss:.4g} ({result.seconds:.1f} s training)",
                    file=sys.stderr,
                    flush=True,
                )

        rows: list[dict] = []
        try:
            grid = spec.params.lr_grid
            chosen = grid[0]
            if len(grid) > 1:
                scores = []
                for lr in grid:
                    finals = []
                    for seed in tuning_seeds(settings):
                        result = train(settings, data, spec, lr, seed, device)
                        progress("tune", lr, seed, result)
                        rows += [dict(row, phase="tune") for row in result.rows]
                        finals.append(result.final_val_loss)
                    scores.append(float(np.mean(finals)))
                # Lowest mean final validation loss; min() keeps the first (smallest lr) of ties.
                chosen = grid[min(range(len(grid)), key=lambda i: scores[i])]
            for seed in task.seeds:
                result = train(settings, data, spec, chosen, seed, device)
                progress("report", chosen, seed, result)
                rows += [dict(row, phase="report") for row in result.rows]
        except methods.PeerUnavailable as error:
            frames.append(_unavailable_rows(label, spec, settings.workload, str(error), task.seeds))
            continue
        family, method_kind = FAMILIES[spec.name]
        frame = pd.DataFrame(rows)
        frame["method"] = label
        frame["algorithm"] = spec.name
        frame["family"] = family
        frame["method_kind"] = method_kind
        frame["workload"] = settings.workload
        frame["lr_tuned"] = len(spec.params.lr_grid) > 1
        frame["chosen_lr"] = chosen
        frame["available"] = True
        frame["note"] = data.source
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
