"""The runner: a validated config -> runs with stable ids -> an executor -> the store.

Expansion. A config's grid points × method groups × seed groups become :class:`RunTask` s:
each method label is its own run when ``experiment.split_methods`` (else one run carries all
methods), and the seeds are cut into groups of ``experiment.seeds_per_run`` consecutive
seeds, in config order.

Run ids. ``run_id`` is the first 16 hex digits of the SHA-256 of the canonical JSON (sorted
keys) of the experiment name, the resolved settings (with defaults), each method label with
its algorithm and resolved hyperparameters, and the seeds. The same resolved run has the same
id in every invocation, which is what makes a rerun skip finished runs. The id does not
include the package version or the device: after changing code, write to a new output folder.

Rows. A run function returns tidy rows with at least ``seed`` and ``method`` (the label); the
runner adds one column per grid key (the resolved value of that settings field, also for
points of a grid that does not vary it) unless the run already has it, and ``run_id``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from layerwise.experiments import integrity, store
from layerwise.experiments.config import ConfigError, ResolvedConfig
from layerwise.experiments.executors import Executor, Job, Outcome
from layerwise.experiments.registry import MethodSpec, RunTask

#: Columns every run function must return.
REQUIRED_COLUMNS = ("seed", "method")


@dataclass(frozen=True)
class PlannedRun:
    """A run with its id and its grid values (one per grid key of the config)."""

    run_id: str
    point: Mapping[str, Any]
    task: RunTask


@dataclass
class RunSummary:
    experiment: str
    out_dir: Path
    total: int = 0
    skipped: int = 0
    done: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        return (
            f"{self.experiment}: {self.total} runs: {self.done} done, {self.skipped} already "
            f"finished, {len(self.failed)} failed ({self.seconds:.1f} s) -> "
            f"{store.experiment_dir(self.out_dir, self.experiment)}"
        )


def run_id(
    experiment: str, settings: Mapping[str, Any], methods: Mapping[str, MethodSpec], seeds
) -> str:
    """The stable id of a run (see the module docstring)."""
    identity = {
        "experiment": experiment,
        "settings": dict(settings),
        "methods": {
            label: {"method": spec.name, "params": spec.params.model_dump(mode="json")}
            for label, spec in methods.items()
        },
        "seeds": list(seeds),
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def plan_runs(
    config: ResolvedConfig, device: str = "cpu", *, progress: bool = False
) -> list[PlannedRun]:
    """Expand a config into runs: points × method groups × seed groups, without duplicates."""
    experiment = config.experiment
    if experiment.split_methods:
        method_groups = [{label: spec} for label, spec in config.methods.items()]
    else:
        method_groups = [dict(config.methods)]
    size = experiment.seeds_per_run
    if size < 1:
        raise ValueError(f"experiment {experiment.name!r}: seeds_per_run must be >= 1")
    seed_groups = [config.seeds[i : i + size] for i in range(0, len(config.seeds), size)]

    planned: dict[str, PlannedRun] = {}
    for point in config.points:
        resolved = point.settings.model_dump(mode="json")
        values = grid_values(point.settings, config.grid_keys)
        for methods in method_groups:
            for seeds in seed_groups:
                identifier = run_id(experiment.name, resolved, methods, seeds)
                task = RunTask(
                    experiment=experiment.name,
                    settings=point.settings,
                    methods=methods,
                    seeds=tuple(seeds),
                    device=device,
                    progress=progress,
                )
                planned.setdefault(identifier, PlannedRun(identifier, values, task))
    return list(planned.values())


def grid_values(settings, keys: Sequence[str]) -> dict[str, Any]:
    """The resolved value of each grid key: a settings field, or a size given in its other
    form (``n_over_d`` of linrep, ``n`` of single_index: a property of the settings model)."""
    resolved = settings.model_dump(mode="json")
    return {key: resolved[key] if key in resolved else getattr(settings, key) for key in keys}


def check_device(device: str, *, here: bool = True) -> None:
    """Refuse an unknown device (``cpu``, ``cuda`` or ``cuda:N``), and with ``here`` one that
    this machine does not have."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError("--device", "", f"unknown device {device!r}; use cpu, cuda or cuda:N")
    if not here:
        return
    if not torch.cuda.is_available():
        raise ConfigError(
            "--device", "", f"{device!r} requested but torch.cuda.is_available() is False"
        )
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigError(
            "--device", "", f"{device!r}: only {torch.cuda.device_count()} CUDA device(s)"
        )


def run_experiment(
    config: ResolvedConfig,
    out_dir: str | Path,
    executor: Executor,
    *,
    device: str = "cpu",
    progress: bool = True,
    command: Sequence[str] | None = None,
) -> RunSummary:
    """Run every unfinished run of ``config`` on ``executor`` and store the results.

    Finished runs (a Parquet file exists) are skipped; failed ones are retried. The invocation
    (resolved config, run ids, versions, git commit, times, counts) is recorded before the
    first run and updated at the end.
    """
    start = time.perf_counter()
    name = config.experiment.name
    runs = plan_runs(config, device, progress=progress)
    finished = integrity.usable_run_ids(out_dir, name)  # a corrupt file is redone
    todo = [run for run in runs if run.run_id not in finished]
    summary = RunSummary(name, Path(out_dir), total=len(runs), skipped=len(runs) - len(todo))

    record = invocation_record(config, runs, executor, device, command)
    store.write_invocation(out_dir, name, record)
    store.remove_stale_temporaries(out_dir, name, (run.run_id for run in todo))
    by_id = {run.run_id: run for run in todo}
    jobs = [Job(run.run_id, config.experiment.run, run.task) for run in todo]

    bar = tqdm(total=len(jobs), desc=name, unit="run", disable=not progress, file=sys.stderr)
    try:
        for outcome in executor.run(jobs):
            if _store_outcome(out_dir, by_id[outcome.run_id], outcome, device):
                summary.done += 1
            else:
                summary.failed.append(outcome.run_id)
            bar.update(1)
            remaining = len(jobs) - summary.done - len(summary.failed)
            bar.set_postfix(done=summary.done, failed=len(summary.failed), remaining=remaining)
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - start
        record.update(
            finished_at=_now(),
            wall_seconds=round(summary.seconds, 3),
            counts={
                "total": summary.total,
                "skipped": summary.skipped,
                "done": summary.done,
                "failed": len(summary.failed),
                "not_run": len(jobs) - summary.done - len(summary.failed),
            },
        )
        store.write_invocation(out_dir, name, record)
    return summary


def _store_outcome(out_dir: str | Path, run: PlannedRun, outcome: Outcome, device: str) -> bool:
    """Write a run's rows (True) or its failure record (False)."""
    name = run.task.experiment
    error = outcome.error
    if outcome.table is not None:
        missing = [column for column in REQUIRED_COLUMNS if column not in outcome.table.columns]
        if missing:
            error = f"the run function returned no column(s) {missing}"
        else:
            table = outcome.table.copy()
            for key, value in run.point.items():
                if key not in table.columns:
                    table[key] = [value] * len(table)
            table["run_id"] = run.run_id
            metadata = {"seconds": round(outcome.seconds, 3), "device": device, "at": _now()}
            metadata["code"] = integrity.code_version()  # a resume from other code is reported
            try:
                store.write_run(out_dir, name, run.run_id, table, metadata)
                return True
            except (pa.ArrowException, ValueError, TypeError) as write_error:
                error = f"the rows could not be stored as Parquet: {write_error!r}"
    store.write_failure(
        out_dir,
        name,
        run.run_id,
        {
            "run_id": run.run_id,
            "experiment": name,
            "point": run.point,
            "settings": run.task.settings.model_dump(mode="json"),
            "methods": _methods_json(run.task.methods),
            "seeds": list(run.task.seeds),
            "error": error.strip().splitlines()[-1] if error and error.strip() else "",
            "traceback": error,
            "seconds": round(outcome.seconds, 3),
            "at": _now(),
        },
    )
    return False


def _methods_json(methods: Mapping[str, MethodSpec]) -> dict[str, Any]:
    return {
        label: {"method": spec.name, **spec.params.model_dump(mode="json")}
        for label, spec in methods.items()
    }


def invocation_record(
    config: ResolvedConfig,
    runs: Sequence[PlannedRun],
    executor: Executor,
    device: str,
    command: Sequence[str] | None,
) -> dict[str, Any]:
    """What is stored once per invocation (``config.json``, see :mod:`.store`)."""
    first = config.points[0].settings.model_dump(mode="json")
    return {
        "experiment": config.experiment.name,
        "problem": config.problem.name,
        "source": config.source,
        "command": list(command) if command is not None else None,
        "config": config.merged,
        "resolved": {
            "settings": {k: v for k, v in first.items() if k not in config.grid_keys},
            "grid": config.merged.get("grid", {}),
            "points": [grid_values(point.settings, config.grid_keys) for point in config.points],
            "methods": _methods_json(config.methods),
            "seeds": list(config.seeds),
        },
        "run_ids": [run.run_id for run in runs],
        "executor": executor.describe(),
        "device": device,
        "versions": package_versions(),
        "machine": machine(),
        "git_commit": git_commit(),
        "started_at": _now(),
        "finished_at": None,
    }


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("layerwise", "torch", "numpy", "pandas", "pyarrow", "pydantic"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def machine() -> dict[str, Any]:
    """What the report says about the machine: platform, architecture, CPU count."""
    return {
        "platform": platform.platform(terse=True),
        "architecture": platform.machine(),
        "cpus": os.cpu_count(),
    }


def git_commit() -> str | None:
    """The commit of the source tree the package runs from (``+dirty`` if modified), if any."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
