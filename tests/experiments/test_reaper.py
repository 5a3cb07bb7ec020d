"""The reaper of a local Ray node (issue 17: no process outlives a command killed with -9),
on stand-in processes: a "raylet" and a "worker" that names it in ``RAY_RAYLET_PID``."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from layerwise.experiments import reaper

pytestmark = pytest.mark.skipif(not reaper.supported(), reason="the reaper reads /proc (Linux)")


def _sleeper(**env: str) -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"], env={**os.environ, **env})


def _gone(process: subprocess.Popen, seconds: float = 10) -> bool:
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


@pytest.fixture
def node():
    """A stand-in raylet, a process it "spawned" and an unrelated one (killed afterwards)."""
    raylet = _sleeper()
    worker = _sleeper(RAY_RAYLET_PID=str(raylet.pid))
    bystander = _sleeper(RAY_RAYLET_PID=str(raylet.pid + 1_000_000))
    yield raylet, worker, bystander
    for process in (raylet, worker, bystander):
        process.kill()
        process.wait()


def _start_reaper(raylet: subprocess.Popen) -> subprocess.Popen:
    watcher = reaper.start({(raylet.pid, reaper.start_time(raylet.pid))})
    assert watcher is not None
    time.sleep(0.5)  # it has reached its read of stdin
    return watcher


def test_the_command_dying_unannounced_kills_the_node_and_what_its_raylet_spawned(node):
    raylet, worker, bystander = node
    watcher = _start_reaper(raylet)
    watcher.stdin.close()  # what the command's death does to the pipe: end of file
    assert _gone(watcher)
    assert _gone(raylet) and _gone(worker)
    assert bystander.poll() is None  # another raylet's process is left alone


def test_a_command_that_shuts_ray_down_itself_stands_the_reaper_down(node):
    raylet, worker, _ = node
    watcher = _start_reaper(raylet)
    reaper.stand_down(watcher)
    assert watcher.returncode == 0
    time.sleep(0.3)
    assert raylet.poll() is None and worker.poll() is None


def test_a_reused_pid_is_not_killed(node):
    raylet, _, _ = node
    reaper.kill([(raylet.pid, reaper.start_time(raylet.pid) + 1)])  # another process's start
    time.sleep(0.3)
    assert raylet.poll() is None
    reaper.kill([(raylet.pid, reaper.start_time(raylet.pid))])
    assert _gone(raylet)


def test_children_and_start_times_read_from_proc():
    child = _sleeper()
    try:
        mine = reaper.children(os.getpid())
        assert (child.pid, reaper.start_time(child.pid)) in mine
        assert reaper.start_time(os.getpid()) < reaper.start_time(child.pid)
    finally:
        child.kill()
        child.wait()
    assert reaper.start_time(child.pid) is None
    assert all(pid != child.pid for pid, _ in reaper.children(os.getpid()))


def test_nothing_to_watch_starts_no_reaper():
    assert reaper.start(set()) is None
    reaper.stand_down(None)  # a no-op


def test_the_reaper_imports_nothing_heavy():
    """It starts with every local Ray node: torch or pandas would cost seconds and ~300 MB."""
    code = (
        "import sys, layerwise.experiments.reaper; "
        "print(sorted({'torch', 'pandas', 'ray'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
