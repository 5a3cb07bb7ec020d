"""Issue 17: one writer per output folder; a dead writer's lock and temporaries are taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from layerwise import cli
from layerwise.experiments import store
from layerwise.experiments.lock import LOCK_NAME, output_lock

_HOLDER = """
import sys, time
from layerwise.experiments.lock import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_bug_17_a_second_writer_is_refused_with_the_owner(toy, write_config, tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = ["run", "toy", "--config", str(write_config()), "--out", str(out)]
        assert cli.main([*argv, "--workers", "1", "--no-progress"]) == 2
        error = capsys.readouterr().err
        assert "is being written by another command" in error
        assert f'"pid": {holder.pid}' in error
        assert not (out / "toy").exists()  # nothing written
    finally:
        holder.kill()
        holder.wait()


def test_bug_17_a_dead_writers_lock_and_temporaries_are_taken_over(toy, write_config, tmp_path):
    out = tmp_path / "out"
    (out / "toy" / "runs").mkdir(parents=True)
    (out / LOCK_NAME).write_text(json.dumps({"pid": 999999999, "host": "here"}))
    leftover = out / "toy" / ".config.json.abc.tmp"
    leftover.write_text("{")
    argv = ["run", "toy", "--config", str(write_config()), "--out", str(out)]
    assert cli.main([*argv, "--workers", "1", "--no-progress"]) == 0
    assert len(store.finished_run_ids(out, "toy")) == 24
    assert not leftover.exists()
    assert not (out / LOCK_NAME).exists()  # released


def test_the_lock_nests_in_one_process_and_excludes_another(tmp_path):
    with output_lock(tmp_path), output_lock(tmp_path):
        owner = json.loads((tmp_path / LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid()
        code = "from layerwise.experiments.lock import output_lock\n"
        code += f"with output_lock({str(tmp_path)!r}): pass"
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert other.returncode != 0 and "LockedError" in other.stderr
    assert not (tmp_path / LOCK_NAME).exists()
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert other.returncode == 0, other.stderr  # released: another process may now write
