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
