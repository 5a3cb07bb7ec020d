"""Settings range checks refuse a config before anything runs: exit status 2, the field named,
nothing written (a condition number below 1, a zero size, a ratio <= 0, a batch larger than the
data, in settings or in a grid)."""

from __future__ import annotations

import pathlib

import pytest

from layerwise import cli
from layerwise.experiments.config import find_config

BAD_VALUES = [
    ("linrep-transfer", "settings.kappa_x=0.5", "kappa_x"),
    ("linrep-kappa", "grid.0.kappa_x=[0.5, 10]", "kappa_x"),
    ("linrep-transfer", "settings.kappa_f=0.9", "kappa_f"),
    ("linrep-transfer", "settings.kappa_x_transfer=0.5", "kappa_x_transfer"),
    ("linrep-transfer", "settings.eps=1.5", "eps"),
    ("linrep-transfer", "settings.k=0", "k"),
    ("single-index-damping", "settings.kappa=0.5", "kappa"),
    ("single-index-alignment", "grid.kappa=[0.5, 100]", "kappa"),
    ("single-index-alignment", "settings.width_over_d=0", "width_over_d"),
    ("single-index-risk", "settings.ridge_grid=[0.1, -1.0]", "ridge_grid"),
    ("mlp-optimizers", "settings.d_in=0", "d_in"),
    ("mlp-optimizers", "settings.batch_size=100000", "batch_size"),
]


@pytest.mark.parametrize(("experiment", "assignment", "field"), BAD_VALUES)
def test_a_value_out_of_range_is_refused_before_anything_runs(
    experiment, assignment, field, tmp_path, capsys
):
    out = tmp_path / "out"
    status = cli.main(
        ["run", experiment, "--quick", "--set", assignment, "--out", str(out), "--no-progress"]
    )
    error = capsys.readouterr().err
    assert status == 2, error
    assert f".{field}" in error or f"{field}=" in error, error
    assert not out.exists()


def test_an_existing_output_folder_stays_empty(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    argv = ["run", "linrep-kappa", "--quick", "--set", "grid.kappa_x=[0.5, 10]", "--out", str(out)]
    assert cli.main(argv) == 2
    assert "grid.kappa_x" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_a_config_file_with_kappa_below_one_stops_reproduce_before_any_run(
    tmp_path, monkeypatch, capsys
):
    """Every config is validated before the first experiment runs (mlp-optimizers is fine)."""
    packaged = pathlib.Path(find_config("linrep-transfer")).read_text(encoding="utf-8")
    assert "  kappa_x: 100\n" in packaged
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "linrep-transfer.yaml").write_text(
        packaged.replace("  kappa_x: 100\n", "  kappa_x: 0.5\n"), encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    argv = ["reproduce", "--quick", "--only", "mlp-optimizers,linrep-transfer", "--out", "out"]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert "linrep-transfer.yaml" in error and "settings.kappa_x" in error, error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("experiment", "assignment"),
    [
        ("linrep-transfer", "settings.d=1000000"),
        ("single-index-risk", "settings.d=300000"),
        ("mlp-optimizers", "settings.n_train=10000000000"),
    ],
)
def test_a_run_too_large_for_memory_is_refused_by_its_problems_estimate(
    experiment, assignment, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = ["run", experiment, "--quick", "--set", assignment, "--out", str(out)]
    assert cli.main(argv) == 2
    assert "GiB" in capsys.readouterr().err
    assert not out.exists()
