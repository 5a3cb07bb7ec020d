"""Grid expansion, stable run ids, the store, failures, and resuming an interrupted sweep."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
from experiment_toys import expected_value

from layerwise.experiments import store
from layerwise.experiments.config import load_config
from layerwise.experiments.executors import InProcessExecutor, LocalExecutor
from layerwise.experiments.runner import plan_runs, run_experiment

from .conftest import make_toy_experiment


def _executions(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_expansion_counts_points_methods_and_seed_groups(register, write_config):
    path = write_config({"seeds": 5})
    register(make_toy_experiment())
    runs = plan_runs(load_config(path))
    assert len(runs) == 4 * 2 * 5  # points x methods (split) x seeds (one per run)
    assert {run.task.seeds for run in runs} == {(s,) for s in range(5)}
    assert all(len(run.task.methods) == 1 for run in runs)

    register(make_toy_experiment(seeds_per_run=2, split_methods=False))
    runs = plan_runs(load_config(path))
    assert len(runs) == 4 * 1 * 3
    assert [run.task.seeds for run in runs[:3]] == [(0, 1), (2, 3), (4,)]
    assert all(list(run.task.methods) == ["alpha", "beta_two"] for run in runs)
    assert len({run.run_id for run in runs}) == len(runs)


def test_run_id_is_the_hash_of_the_canonical_resolved_run(toy, write_config):
    run = plan_runs(load_config(write_config()))[0]
    # Independently: the canonical JSON of what the run resolves to, with every default.
    identity = {
        "experiment": "toy",
        "settings": {
            "d": 4,
            "k": 2,
            "kappa": 1.0,
            "scale": 1.0,
            "log": "",
            "kill_marker": "",
            "fail_marker": "",
        },
        "methods": {"alpha": {"method": "alpha", "params": {"lr": 0.1}}},
        "seeds": [0],
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    assert run.run_id == hashlib.sha256(canonical.encode()).hexdigest()[:16]


def test_run_ids_are_stable_and_change_with_what_the_run_computes(toy, write_config, tmp_path):
    ids = [run.run_id for run in plan_runs(load_config(write_config()))]
    assert ids == [run.run_id for run in plan_runs(load_config(write_config()))]
    # Reordered keys and explicit defaults resolve to the same runs.
    reordered = write_config(
        text="seeds: 3\nmethods:\n  beta_two: {repeats: 2, lr: 0.5, method: beta}\n"
        "  alpha: {lr: 0.1}\ngrid: {scale: [1.0, 2.0], kappa: [1, 10]}\n"
        "settings: {k: 2, d: 4, log: ''}\nexperiment: toy\n",
        name="reordered",
    )
    assert set(ids) == {run.run_id for run in plan_runs(load_config(reordered))}
    # Only the runs whose resolved content changed get new ids.
    unchanged = {
        "settings.d=5": 0,  # every run
        "methods.alpha.lr=0.2": 4 * 3,  # the beta_two runs keep theirs
        "seeds=[0, 1, 3]": 4 * 2 * 2,  # seeds 0 and 1 keep theirs
    }
    for override, count in unchanged.items():
        config = load_config(write_config(), overrides=[override])
        new = [run.run_id for run in plan_runs(config)]
        assert len(set(new) & set(ids)) == count, override


def test_rows_get_grid_columns_and_run_id_and_rerun_skips_finished_runs(
    toy, write_config, tmp_path
):
    log = tmp_path / "log.txt"
    config = load_config(
        write_config({"grid": [{"kappa": [1, 10]}, {"scale": [2.0]}]}),
        overrides=[f"settings.log={log}"],
    )
    out = tmp_path / "out"
    with InProcessExecutor() as executor:
        summary = run_experiment(config, out, executor, progress=False)
    assert (summary.total, summary.done, summary.failed) == (3 * 2 * 3, 18, [])
    assert len(_executions(log)) == 18
    table = store.load(out, "toy")
    assert list(table.columns) == ["seed", "method", "step", "value", "kappa", "scale", "run_id"]
    assert len(table) == 18 * 3
    # Every row recomputed from its own columns: grid values are the resolved settings.
    for row in table.itertuples():
        spec = config.methods[row.method]
        settings = config.points[0].settings.model_copy(
            update={"kappa": row.kappa, "scale": row.scale}
        )
        assert row.value == expected_value(settings, row.seed, spec.name, spec.params, row.step)
    assert set(table["scale"]) == {1.0, 2.0} and set(table["kappa"]) == {1, 10}
    # Deterministic order: runs by id, each run's rows as returned.
    assert list(table["run_id"]) == sorted(table["run_id"])

    with InProcessExecutor() as executor:
        again = run_experiment(config, out, executor, progress=False)
    assert (again.skipped, again.done) == (18, 0)
    assert len(_executions(log)) == 18  # nothing executed twice
    pd.testing.assert_frame_equal(store.load(out, "toy"), table)
    record = store.read_invocation(out, "toy")
    assert sorted(record["run_ids"]) == sorted(set(table["run_id"]))
    assert record["counts"] == {"total": 18, "skipped": 18, "done": 0, "failed": 0, "not_run": 0}
    assert record["versions"]["torch"] and record["versions"]["python"]


def test_a_failing_run_is_stored_with_its_traceback_and_the_sweep_goes_on(
    toy, write_config, tmp_path
):
    marker = tmp_path / "fail"
    marker.touch()
    config = load_config(write_config(), overrides=[f"settings.fail_marker={marker}"])
    out = tmp_path / "out"
    with InProcessExecutor() as executor:
        summary = run_experiment(config, out, executor, progress=False)
    assert len(summary.failed) == 4 * 2  # every run carrying seed 1
    assert summary.done == 4 * 2 * 2
    failure = json.loads(store.failure_path(out, "toy", summary.failed[0]).read_text())
    assert failure["seeds"] == [1]
    assert "RuntimeError: toy failure requested" in failure["traceback"]
    assert failure["error"] == "RuntimeError: toy failure requested by the fail marker"

    marker.unlink()
    with InProcessExecutor() as executor:
        retried = run_experiment(config, out, executor, progress=False)
    assert (retried.done, retried.failed) == (8, [])
    assert store.failed_run_ids(out, "toy") == set()  # failure records removed on success


def test_a_write_that_dies_midway_leaves_no_file(tmp_path, monkeypatch):
    def write_half_then_fail(table, handle):
        handle.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(store.pq, "write_table", write_half_then_fail)
    table = pd.DataFrame({"seed": [0], "method": ["a"], "value": [1.0]})
    with pytest.raises(OSError, match="disk full"):
        store.write_run(tmp_path, "toy", "abc", table, {})
    assert list((tmp_path / "toy" / "runs").iterdir()) == []


def test_resume_after_a_worker_is_killed_gives_the_uninterrupted_table(toy, write_config, tmp_path):
    marker, log = tmp_path / "kill", tmp_path / "log.txt"
    overrides = [f"settings.kill_marker={marker}", f"settings.log={log}", "grid.scale=[1.0]"]
    config = load_config(write_config(), overrides=overrides)  # 2 points x 2 methods x 3 seeds
    with InProcessExecutor() as executor:
        run_experiment(config, tmp_path / "reference", executor, progress=False)
    reference = store.load(tmp_path / "reference", "toy")
    log.unlink()

    marker.touch()  # every run with seed 1 SIGKILLs its worker process
    out = tmp_path / "out"
    with LocalExecutor(2) as executor:
        interrupted = run_experiment(config, out, executor, progress=False)
    assert interrupted.done == 8 and len(interrupted.failed) == 4
    failure = json.loads(store.failure_path(out, "toy", interrupted.failed[0]).read_text())
    assert "worker process" in failure["error"] and failure["seeds"] == [1]
    assert not list((out / "toy" / "runs").glob(".*"))  # no temporary or partial file

    marker.unlink()
    log.unlink()
    with LocalExecutor(2) as executor:
        resumed = run_experiment(config, out, executor, progress=False)
    assert (resumed.skipped, resumed.done, resumed.failed) == (8, 4, [])
    assert len(_executions(log)) == 4  # only the killed runs ran again
    pd.testing.assert_frame_equal(store.load(out, "toy"), reference)


def test_load_selects_runs_and_stale_temporaries_are_removed(tmp_path):
    for run_id, value in (("b", 2.0), ("a", 1.0)):
        table = pd.DataFrame({"seed": [0], "method": ["m"], "value": [value]})
        store.write_run(tmp_path, "e", run_id, table, {"seconds": 1.5})
    assert list(store.load(tmp_path, "e")["value"]) == [1.0, 2.0]
    assert list(store.load(tmp_path, "e", ["b", "zzz"])["value"]) == [2.0]
    assert store.run_metadata(tmp_path, "e", "a") == {"seconds": 1.5}
    stale = tmp_path / "e" / "runs" / ".c.parquet.x1y2.tmp"
    stale.write_bytes(b"partial")
    assert store.finished_run_ids(tmp_path, "e") == {"a", "b"}  # never read as a run
    store.remove_stale_temporaries(tmp_path, "e", ["c"])
    assert not stale.exists()
    assert store.load(tmp_path, "nothing").empty


def test_to_json_makes_numpy_and_non_finite_values_strict_json():
    import numpy as np

    value = {"a": np.float64(0.5), "b": [np.int64(2), float("nan")], "c": np.array([1.0, np.inf])}
    converted = store.to_json(value)
    assert converted == {"a": 0.5, "b": [2, "nan"], "c": [1.0, "inf"]}
    json.dumps(converted, allow_nan=False)
