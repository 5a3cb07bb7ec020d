"""layerwise.load: the latest invocation by default, one by position, or every stored run."""

from __future__ import annotations

import pytest

import layerwise
from layerwise import cli
from layerwise.experiments import store
from layerwise.experiments.results import ResultsError


def _run(config_path, out, *extra):
    argv = ["run", "toy", "--config", str(config_path), "--out", str(out), "--workers", "1"]
    assert cli.main([*argv, "--no-progress", *extra]) == 0


@pytest.fixture
def two_invocations(toy, write_config, tmp_path):
    """Two invocations in one folder: 3 seeds, then 1 seed at another scale."""
    out = tmp_path / "out"
    path = write_config()
    _run(path, out)
    _run(path, out, "--seeds", "1", "--set", "grid.scale=[5.0]")
    return out


def test_load_defaults_to_the_latest_invocation_with_its_config(two_invocations, capsys):
    table = layerwise.load(two_invocations, "toy")
    assert set(table["seed"]) == {0} and set(table["scale"]) == {5.0}
    assert table.attrs["config"]["seeds"] == [0]
    assert table.attrs["config"]["grid"] == {"kappa": [1, 10], "scale": [5.0]}
    assert table.attrs["resolved"]["methods"]["beta_two"] == {
        "method": "beta",
        "lr": 0.5,
        "repeats": 2,
    }
    assert set(table["run_id"]) == set(table.attrs["invocation"]["run_ids"])


def test_load_by_position_and_all(two_invocations):
    first = layerwise.load(two_invocations, "toy", invocation=0)
    assert set(first["seed"]) == {0, 1, 2} and set(first["scale"]) == {1.0, 2.0}
    assert first.attrs["config"]["seeds"] == [0, 1, 2]
    assert layerwise.load(two_invocations, "toy", invocation=-1).equals(
        layerwise.load(two_invocations, "toy")
    )
    everything = layerwise.load(two_invocations, "toy", invocation="all")
    assert len(everything) == len(first) + len(layerwise.load(two_invocations, "toy"))
    assert everything.equals(store.load(two_invocations, "toy"))


def test_load_refuses_what_is_not_stored(two_invocations):
    with pytest.raises(ResultsError, match=r"no stored invocation of 'tyo' \(stored: toy\)"):
        layerwise.load(two_invocations, "tyo")
    with pytest.raises(ResultsError, match="has 2 finished invocation"):
        layerwise.load(two_invocations, "toy", invocation=2)
    with pytest.raises(ValueError, match="invocation must be"):
        layerwise.load(two_invocations, "toy", invocation="latest")


def test_step_size_lines_print_the_chosen_lr_not_a_tuning_candidate():
    """Training tables hold every candidate's lr (tune rows) and the winner in chosen_lr."""
    import pandas as pd

    from layerwise.experiments.results import step_size_lines

    table = pd.DataFrame(
        {
            "method": ["adamw"] * 4,
            "phase": ["tune", "tune", "tune", "report"],
            "lr": [0.001, 0.003, 0.01, 0.003],
            "chosen_lr": [0.003] * 4,
            "lr_tuned": [True] * 4,
        }
    )
    assert step_size_lines(table) == ["adamw: tuned lr 0.003"]
