"""Issue 17: --version, suggestions for mistyped names, an unusable --out."""

from __future__ import annotations

import os

import pytest

from layerwise import __version__, cli


def test_version_names_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"layerwise {__version__}")


def test_bug_17_a_mistyped_command_gets_a_suggestion(capsys):
    assert cli.main(["rnu", "toy"]) == 2
    assert "did you mean 'run'?" in capsys.readouterr().err


def test_bug_17_a_mistyped_experiment_gets_a_suggestion(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "mlp-optimiser", "--quick"]) == 2
    assert "did you mean 'mlp-optimizers'?" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_bug_17_an_out_that_is_a_file_is_refused(toy, write_config, tmp_path, capsys):
    out = tmp_path / "a-file"
    out.write_text("not a folder")
    argv = ["run", "toy", "--config", str(write_config()), "--out", str(out), "--workers", "1"]
    assert cli.main(argv) == 2
    assert f"--out {out}: exists and is not a folder" in capsys.readouterr().err
    assert out.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_bug_17_an_out_in_a_read_only_folder_is_refused(toy, write_config, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    argv = ["run", "toy", "--config", str(write_config()), "--out", str(locked / "out")]
    assert cli.main([*argv, "--workers", "1"]) == 2
    assert "is not a writable folder" in capsys.readouterr().err
    assert list(locked.iterdir()) == []


def test_run_with_report_writes_the_report(toy, write_config, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["run", "toy", "--config", str(write_config()), "--out", str(out), "--workers", "1"]
    assert cli.main([*argv, "--no-progress", "--report"]) == 0
    assert (out / "report.html").is_file() and (out / "report.md").is_file()


def test_reproduce_only_some_experiments_with_set(
    toy, register, write_config, tmp_path, monkeypatch, capsys
):
    from layerwise.experiments import registry, store

    from .conftest import make_toy_experiment

    other = register(make_toy_experiment("toy-other"))
    monkeypatch.setattr(registry, "experiments", lambda: {"toy": toy, other.name: other})
    write_config()
    monkeypatch.chdir(tmp_path)
    argv = ["reproduce", "--quick", "--workers", "1", "--no-progress"]
    assert cli.main([*argv, "--only", "toy-othr"]) == 2
    assert "did you mean 'toy-other'?" in capsys.readouterr().err
    assert cli.main([*argv, "--only", "toy", "--set", "grid.scale=[3.0]"]) == 0
    out = tmp_path / "results" / "quick"
    assert store.stored_experiments(out) == ["toy"]
    assert set(store.load(out, "toy")["scale"]) == {3.0}


def test_bug_17_a_ray_address_that_does_not_answer_fails_fast():
    import time

    from layerwise.experiments.executors import ExecutorError, make_executor

    pytest.importorskip("ray")
    start = time.monotonic()
    with pytest.raises(ExecutorError, match="no Ray cluster answers"):
        make_executor("ray", address="127.0.0.1:1")
    assert time.monotonic() - start < 30
