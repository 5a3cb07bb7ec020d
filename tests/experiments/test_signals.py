"""Issue 17: SIGTERM and SIGINT stop the workers, finalize config.json and exit 143 / 130; a
terminal's Ctrl-C prints no worker traceback; no worker outlives a command killed with -9."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import write_toy_driver

_PROC = Path("/proc")


def _stat(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name: ``[state, ppid, pgrp, ...]``."""
    try:
        return (_PROC / str(pid) / "stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _group_alive(group: int) -> bool:
    """Whether a live process is left in process group ``group``. A zombie is not: it has
    exited and holds nothing; it only waits to be reaped by whoever inherited it, which may be
    an init that reaps slowly (here one took ~30 s)."""
    if not _PROC.is_dir():
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        return True
    return bool(_group_members(group))


def _group_members(group: int) -> list[str]:
    """The live processes of process group ``group``, as ``"PID NAME"`` (for messages)."""
    found = []
    for entry in _PROC.iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and int(fields[2]) == group and fields[0] != "Z":
            with contextlib.suppress(OSError):
                found.append(f"{entry.name} {(entry / 'comm').read_text().strip()}")
    return found


def _start(write_config, tmp_path, executor: str = "local") -> tuple[subprocess.Popen, Path]:
    """The toy command with two workers, in its own process group (so that every descendant can
    be found), once both of its (60 s) runs are in flight."""
    script = write_toy_driver(tmp_path / "driver.py", run="slow_toys.run")
    config = write_config({"grid": {"kappa": [1]}, "seeds": [0, 1]})
    out = tmp_path / "out"
    started = tmp_path / "started"
    started.mkdir()
    argv = ["run", "toy", "--config", str(config), "--out", str(out), "--workers", "2"]
    argv += ["--executor", executor]
    # Ray's workers import the toy run functions by name, without the driver's sys.path.
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, str(script), *argv, "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "SLOW_TOYS_STARTED": str(started), "PYTHONPATH": path},
    )
    deadline = time.monotonic() + 90
    while len(list(started.iterdir())) < 2 and time.monotonic() < deadline:
        if process.poll() is not None:
            break
        time.sleep(0.2)
    if len(list(started.iterdir())) < 2:
        _kill_group(process.pid)
        pytest.fail(f"the runs did not start: {process.communicate(timeout=10)}")
    return process, out / "toy" / "config.json"


def _kill_group(group: int) -> None:
    if _group_alive(group):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


def _within(seconds: float, alive) -> bool:
    """Whether ``alive()`` turns false within ``seconds`` (polled)."""
    deadline = time.monotonic() + seconds
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    return not alive()


def _wait_group_gone(group: int, seconds: float) -> bool:
    return _within(seconds, lambda: _group_alive(group))


def _run_pids(tmp_path) -> list[int]:
    """The processes running the toy runs (each wrote ``PID-SEED`` as it started)."""
    return [int(path.name.split("-")[0]) for path in (tmp_path / "started").iterdir()]


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not: see :func:`_group_alive`)."""
    if _PROC.is_dir():
        fields = _stat(pid)
        return fields is not None and fields[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pids: list[int], seconds: float) -> bool:
    """Whether every one of ``pids`` has exited within ``seconds`` (Ray's workers lead process
    groups of their own, so the command's group does not cover them)."""
    return _within(seconds, lambda: any(map(_pid_alive, pids)))


def _kill_left(pids: list[int]) -> None:
    """After the checks (``_wait_gone`` has waited): whatever is still alive."""
    for pid in filter(_pid_alive, pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


#: Both executors; Ray's ``ray.init()`` replaces the command's SIGTERM handler with one that
#: aborts (exit -6), and its local node's agents outlive a killed command by a minute.
EXECUTORS = [
    "local",
    pytest.param(
        "ray",
        marks=pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="no Ray"),
    ),
]


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_bug_17_a_signal_stops_workers_and_finalizes_the_record(
    signum, executor, write_config, tmp_path
):
    process, record_path = _start(write_config, tmp_path, executor)
    runs = _run_pids(tmp_path)
    process.send_signal(signum)
    try:
        _, stderr = process.communicate(timeout=30)
        assert _wait_group_gone(process.pid, 10)  # no worker or forkserver survives
        assert _wait_gone(runs, 10)
    finally:  # after the checks: nothing of a failed test is left running
        _kill_group(process.pid)
        _kill_left(runs)
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr, stderr
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    record = json.loads(record_path.read_text())
    assert record["finished_at"] is not None
    assert record["counts"]["not_run"] == 4 and record["counts"]["done"] == 0


def test_bug_17_ctrl_c_to_the_terminal_group_prints_no_worker_traceback(write_config, tmp_path):
    """A terminal's Ctrl-C signals the whole foreground group, the workers included."""
    process, _ = _start(write_config, tmp_path)
    os.killpg(process.pid, signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=30)
        assert _wait_group_gone(process.pid, 10)
    finally:
        _kill_group(process.pid)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stderr.count("interrupted by SIGINT") == 1, stderr


@pytest.mark.parametrize("executor", EXECUTORS)
def test_bug_17_no_worker_outlives_a_killed_command(executor, write_config, tmp_path):
    """kill -9 of the command: its workers (and the forkserver; on Ray, the local node with its
    agents, which by themselves live on for a minute) notice and exit within seconds, so a
    reader of the command's output sees end-of-file."""
    process, _ = _start(write_config, tmp_path, executor)
    runs = _run_pids(tmp_path)
    process.kill()
    try:
        # The pipes close only when every process holding them has exited.
        process.communicate(timeout=20)
        assert _wait_group_gone(process.pid, 10), _group_members(process.pid)
        assert _wait_gone(runs, 10)
    finally:
        _kill_group(process.pid)
        _kill_left(runs)
