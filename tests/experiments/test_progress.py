"""Issue 15: progress inside a long run (tuning and iterations), and the step size of each
method printed at the end of `layerwise run`."""

from __future__ import annotations

import yaml

from layerwise import cli
from layerwise.experiments import progress

CONFIG = {
    "experiment": "linrep-kappa",
    "settings": {"d": 6, "k": 2, "dy": 2, "n": 24, "iterations": 40, "eps": 0.1},
    "grid": {"kappa_x": [1, 10]},
    "methods": {"sgd": {}, "kfac_half": {"method": "kfac", "lr": 0.5}},
    "seeds": 1,
}


def _write(tmp_path, lr_grid=(-3, 1)):
    data = dict(CONFIG)
    data["settings"] = {**data["settings"], "lr_grid": list(lr_grid), "tuning_seeds": 1}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_run_shows_tuning_and_iteration_bars_and_prints_step_sizes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(progress, "DELAY_SECONDS", 0.0)
    argv = ["run", "linrep-kappa", "--config", str(_write(tmp_path)), "--out", str(tmp_path)]
    assert cli.main([*argv, "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "linrep-kappa sgd (seed 0): tuning 5 step sizes" in captured.err
    assert "linrep-kappa kfac_half (seed 0) lr=0.5" in captured.err
    lines = [line.strip() for line in captured.out.splitlines()]
    assert "kfac_half: lr 0.5" in lines
    tuned = next(line for line in lines if line.startswith("sgd: tuned lr "))
    assert "at kappa_x=1" in tuned or tuned.count(" ") == 3  # per point, or one value for all


def test_no_progress_means_no_inner_bars(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(progress, "DELAY_SECONDS", 0.0)
    argv = ["run", "linrep-kappa", "--config", str(_write(tmp_path)), "--out", str(tmp_path)]
    assert cli.main([*argv, "--workers", "1", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "tuning" not in captured.err and "sgd: tuned lr" in captured.out
