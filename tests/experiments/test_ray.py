"""The Ray executor: the quick mlp experiment on a local Ray instance gives the same table as
local worker processes. One test, one Ray instance (starting Ray takes seconds)."""

from __future__ import annotations

import pandas as pd
import pytest

from layerwise.experiments import store
from layerwise.experiments.config import find_config, load_config
from layerwise.experiments.executors import LocalExecutor, RayExecutor
from layerwise.experiments.runner import run_experiment


def test_ray_executor_gives_the_same_table_as_local_processes(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'layerwise[ray]')")
    config = load_config(find_config("mlp-optimizers"), quick=True)
    with LocalExecutor(2) as executor:
        local = run_experiment(config, tmp_path / "local", executor, progress=False)
    with RayExecutor(workers=2) as executor:
        assert executor.describe()["cpus"] == 2
        on_ray = run_experiment(config, tmp_path / "ray", executor, progress=False)
    assert (local.failed, on_ray.failed) == ([], [])
    assert on_ray.done == local.done == len(config.methods) * len(config.seeds)
    expected = store.load(tmp_path / "local", "mlp-optimizers")
    pd.testing.assert_frame_equal(store.load(tmp_path / "ray", "mlp-optimizers"), expected)
    assert store.read_invocation(tmp_path / "ray", "mlp-optimizers")["executor"]["name"] == "ray"
