"""Issue 17: corrupt run files are redone on resume and named by `report`."""

from __future__ import annotations

import pandas as pd
import pytest

from layerwise import cli
from layerwise.experiments import store


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_bug_17_a_corrupt_run_file_is_named_by_report_and_redone_on_resume(
    damage, toy, write_config, tmp_path, capsys
):
    out, reference = tmp_path / "out", tmp_path / "reference"
    argv = ["run", "toy", "--config", str(write_config()), "--workers", "1", "--no-progress"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    assert cli.main([*argv, "--out", str(reference)]) == 0
    victim = store.run_path(out, "toy", sorted(store.finished_run_ids(out, "toy"))[0])
    content = victim.read_bytes()
    victim.write_bytes(
        {"truncated": content[: len(content) // 2], "empty": b"", "garbage": b"x" * 99}[damage]
    )
    capsys.readouterr()

    assert cli.main(["report", str(out)]) == 2
    error = capsys.readouterr().err
    assert str(victim) in error and "Traceback" not in error

    assert cli.main([*argv, "--out", str(out)]) == 0
    assert "1 done, 23 already finished" in capsys.readouterr().out
    pd.testing.assert_frame_equal(store.load(out, "toy"), store.load(reference, "toy"))
    assert cli.main(["report", str(out)]) == 0


def test_bug_17_runs_of_another_code_version_are_reported_and_redone_with_rerun_stale(
    toy, write_config, tmp_path, capsys, monkeypatch
):
    from layerwise.experiments import integrity

    out = tmp_path / "out"
    argv = ["run", "toy", "--config", str(write_config()), "--out", str(out), "--workers", "1"]
    argv += ["--no-progress"]
    assert cli.main(argv) == 0
    first = store.run_metadata(out, "toy", sorted(store.finished_run_ids(out, "toy"))[0])
    assert first["code"] == integrity.code_version()
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert "another code version" not in capsys.readouterr().out

    monkeypatch.setattr(integrity, "_CODE", {"layerwise": "9.9.9", "git_commit": None})
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "24 stored runs come from another code version" in printed
    assert "0 done, 24 already finished" in printed
    assert cli.main([*argv, "--rerun-stale"]) == 0
    printed = capsys.readouterr().out
    assert "24 runs of another code version will be redone" in printed
    assert "24 done, 0 already finished" in printed
    assert integrity.stale_run_ids(out, "toy") == []
