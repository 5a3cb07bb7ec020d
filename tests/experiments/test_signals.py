"""Issue 17: SIGTERM and SIGINT stop the workers, finalize config.json and exit 143 / 130."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

_DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import experiment_toys, slow_toys
from layerwise import cli
from layerwise.experiments import registry
if __name__ == "__main__":  # worker processes import this file as their __main__
    registry.load_all()
    registry.register_problem(registry.Problem(
        name="toy", settings_model=experiment_toys.ToySettings,
        method_models=experiment_toys.METHOD_MODELS))
    registry.register_experiment(registry.Experiment(
        name="toy", problem="toy", description="toy", run=slow_toys.run))
    sys.exit(cli.main(sys.argv[1:]))
"""


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_bug_17_a_signal_stops_workers_and_finalizes_the_record(signum, write_config, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(_DRIVER.format(tests=str(Path(__file__).parent))))
    config = write_config({"grid": {"kappa": [1]}, "seeds": [0, 1]})
    out = tmp_path / "out"
    argv = ["run", "toy", "--config", str(config), "--out", str(out), "--workers", "2"]
    process = subprocess.Popen(
        [sys.executable, str(script), *argv, "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: every descendant can be found
    )
    record_path = out / "toy" / "config.json"
    deadline = time.monotonic() + 60
    while not record_path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # the workers have started their (60 s) runs
    process.send_signal(signum)
    try:
        _, stderr = process.communicate(timeout=30)
    finally:
        if _group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr, stderr
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    deadline = time.monotonic() + 10
    while _group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _group_alive(process.pid)  # no worker or forkserver survives
    record = json.loads(record_path.read_text())
    assert record["finished_at"] is not None
    assert record["counts"]["not_run"] == 4 and record["counts"]["done"] == 0
