"""Issue 15: both problems take a sample size as ``n`` or as ``n_over_d`` (one of them, or both
consistent); the other is derived, and a grid over either form runs and is stored."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import layerwise
from layerwise.experiments import config as config_module
from layerwise.experiments import runner
from layerwise.experiments.config import ConfigError
from layerwise.experiments.executors import LocalExecutor
from layerwise.problems.linrep.settings import LinrepSettings
from layerwise.problems.single_index.settings import SingleIndexSettings


def test_linrep_takes_n_over_d_and_derives_n():
    assert LinrepSettings(d=37, n_over_d=3).n == 111
    assert LinrepSettings(d=37, n=111).n_over_d == 3.0
    # The same resolved settings whichever form was given (hence the same run ids).
    assert LinrepSettings(d=37, n_over_d=3) == LinrepSettings(d=37, n=111, n_over_d=3.0)
    with pytest.raises(ValidationError, match=r"n=100 and n_over_d=3 disagree at d=37"):
        LinrepSettings(d=37, n=100, n_over_d=3)
    with pytest.raises(ValidationError, match="n_over_d must be a number > 0"):
        LinrepSettings(d=37, n_over_d=-1)


def test_single_index_takes_n_and_derives_n_over_d():
    settings = SingleIndexSettings(d=64, n=160)
    assert settings.n_over_d == 2.5 and settings.n == 160
    assert settings == SingleIndexSettings(d=64, n_over_d=2.5)
    with pytest.raises(ValidationError, match=r"n=100 and n_over_d=2.5 disagree at d=64"):
        SingleIndexSettings(d=64, n=100, n_over_d=2.5)
    with pytest.raises(ValidationError, match="n must be an integer >= 1"):
        SingleIndexSettings(d=64, n=0)


LINREP = {
    "experiment": "linrep-kappa",
    "settings": {"d": 6, "k": 2, "dy": 2, "iterations": 20, "eps": 0.1},
    "grid": {"n_over_d": [3, 4]},
    "methods": {"kfac": {"lr": 0.5}},
    "seeds": 1,
}


def test_a_linrep_grid_over_n_over_d_runs_and_stores_the_column(tmp_path):
    config = config_module.resolve_config(LINREP)
    assert [point.settings.n for point in config.points] == [18, 24]
    by_n = config_module.resolve_config({**LINREP, "grid": {"n": [18, 24]}})
    assert [run.run_id for run in runner.plan_runs(config)] == [
        run.run_id for run in runner.plan_runs(by_n)
    ]
    summary = runner.run_experiment(config, tmp_path, LocalExecutor(workers=1), progress=False)
    assert summary.done == 2 and not summary.failed
    table = layerwise.load(tmp_path, "linrep-kappa")
    assert sorted(table["n_over_d"].unique()) == [3.0, 4.0]
    assert table.attrs["resolved"]["points"] == [{"n_over_d": 3.0}, {"n_over_d": 4.0}]


def test_inconsistent_forms_in_settings_and_grid_are_refused_naming_both():
    data = {**LINREP, "settings": {**LINREP["settings"], "n": 30}}
    with pytest.raises(ConfigError, match="n=30 and n_over_d=3 disagree at d=6"):
        config_module.resolve_config(data)


def test_a_single_index_config_takes_n_in_its_grid():
    data = {
        "experiment": "single-index-alignment",
        "settings": {"d": 32},
        "grid": {"n": [16, 64]},
        "methods": {"sgd": {"lr": 1.0}},
        "seeds": 1,
    }
    config = config_module.resolve_config(data)
    assert [point.settings.n_over_d for point in config.points] == [0.5, 2.0]
    assert runner.grid_values(config.points[1].settings, config.grid_keys) == {"n": 64}
