"""The `layerwise` command: list, run, report, reproduce, exit statuses, and kill -9."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from layerwise import cli
from layerwise.experiments import registry, store

from .conftest import TOY_CONFIG, write_toy_driver


def test_list_shows_experiments_configs_methods_and_claims(toy, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["list"]) == 0
    text = capsys.readouterr().out
    assert "mlp-optimizers  (problem mlp; " in text and "mlp-optimizers.yaml" in text
    assert "MLP1: every optimizer" in text
    assert "toy  (problem toy; no config)" in text
    assert "methods: alpha, beta" in text


def test_run_quick_with_seeds_and_set_then_report(toy, write_config, tmp_path, capsys):
    out = tmp_path / "out"
    path = write_config()
    argv = ["run", "toy", "--config", str(path), "--out", str(out), "--workers", "1"]
    argv += ["--quick", "--seeds", "1", "--set", "grid.scale=[3.0]"]
    status = cli.main(argv)
    assert status == 0
    assert "toy: 4 runs: 4 done, 0 already finished, 0 failed" in capsys.readouterr().out
    table = store.load(out, "toy")
    assert set(table["seed"]) == {0} and set(table["scale"]) == {3.0}
    record = store.read_invocation(out, "toy")
    assert record["config"]["settings"] == {"d": 3, "k": 2}  # the quick block was merged
    assert record["config"]["seeds"] == [0]
    assert record["command"] == ["layerwise", *argv]

    assert cli.main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"html: {out / 'report.html'}" in printed
    assert json.loads((out / "claims.json").read_text()) == []  # the toy has no claims


def test_exit_status_is_1_when_a_run_fails_and_the_others_are_stored(
    toy, write_config, tmp_path, capsys
):
    marker = tmp_path / "fail"
    marker.touch()
    out = tmp_path / "out"
    argv = ["run", "toy", "--config", str(write_config()), "--out", str(out), "--workers", "1"]
    assert cli.main([*argv, "--set", f"settings.fail_marker={marker}"]) == 1
    printed = capsys.readouterr().out
    assert "8 failed" in printed and "failed: " in printed
    assert len(store.finished_run_ids(out, "toy")) == 16
    assert len(store.failed_run_ids(out, "toy")) == 8


def test_report_of_a_folder_without_results_is_refused(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "no stored experiments" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_reproduce_runs_every_experiment_with_a_config_then_reports(
    toy, register, write_config, tmp_path, monkeypatch, capsys
):
    from .conftest import make_toy_experiment

    orphan = register(make_toy_experiment("toy-without-config"))
    monkeypatch.setattr(registry, "experiments", lambda: {"toy": toy, orphan.name: orphan})
    write_config()
    monkeypatch.chdir(tmp_path)
    assert cli.main(["reproduce", "--quick", "--workers", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "toy-without-config: no config found, skipped" in printed
    out = tmp_path / "results" / "quick"  # the default with --quick
    assert len(store.finished_run_ids(out, "toy")) == 4 * 2 * 2
    for name in ("report.html", "report.md", "claims.json"):
        assert (out / name).is_file()


@pytest.mark.slow  # three interpreter starts; the worker-kill resume test runs by default
def test_kill_9_of_the_whole_command_then_rerun_gives_the_uninterrupted_table(
    toy, write_config, tmp_path
):
    """One worker runs in-process, so the run SIGKILLs the command itself mid-sweep."""
    script = write_toy_driver(tmp_path / "driver.py")
    marker, log = tmp_path / "kill", tmp_path / "log.txt"
    config = write_config({"grid": {"kappa": [1, 10]}, "seeds": [0, 1]})

    def argv(out: Path) -> list[str]:
        return [
            *("run", "toy", "--config", str(config), "--out", str(out), "--workers", "1"),
            *(f"--set=settings.kill_marker={marker}", f"--set=settings.log={log}"),
            "--no-progress",
        ]

    def command(out: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(script), *argv(out)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    marker.touch()
    out = tmp_path / "out"
    killed = command(out)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    first = len(log.read_text().splitlines())
    finished = store.finished_run_ids(out, "toy")
    assert len(finished) == first - 1  # everything before the killed run was stored
    assert not list((out / "toy" / "runs").glob(".*"))  # no partial file

    marker.unlink()
    assert command(out).returncode == 0
    runs = 2 * 2 * 2
    assert len(log.read_text().splitlines()) == first + (runs - len(finished))  # none twice
    assert cli.main(argv(tmp_path / "reference")) == 0  # uninterrupted, in this process
    pd.testing.assert_frame_equal(store.load(out, "toy"), store.load(tmp_path / "reference", "toy"))


def test_toy_config_fixture_is_what_the_tests_assume():
    # Counts asserted above: 2 kappa x 2 scale points, 2 methods, 3 seeds (2 with --quick).
    assert TOY_CONFIG["grid"] == {"kappa": [1, 10], "scale": [1.0, 2.0]}
    assert (TOY_CONFIG["seeds"], TOY_CONFIG["quick"]["seeds"]) == (3, 2)
