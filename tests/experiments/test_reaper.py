"""The reaper of a local Ray node (issue 17: no process outlives a command killed with -9),
on stand-in processes: a "raylet" (a shell) with a child of its own, and a bystander."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from layerwise.experiments import reaper

pytestmark = pytest.mark.skipif(not reaper.supported(), reason="the reaper reads /proc (Linux)")


def _gone(pid: int, seconds: float = 10) -> bool:
    """Whether ``pid`` has exited (a zombie has) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def _child_of(parent: subprocess.Popen, seconds: float = 10) -> tuple[int, int]:
    deadline = time.monotonic() + seconds
    while not (found := reaper.children(parent.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(found) == 1, found
    return next(iter(found))


@pytest.fixture
def node():
    """A stand-in raylet that starts its "agent" after ``delay`` seconds, and a bystander."""
    started = []

    def make(delay: float = 0.0):
        wait = f"sleep {delay}; " if delay else ""  # a child of its own, not the agent
        raylet = subprocess.Popen(["sh", "-c", f"{wait}sleep 60 & wait"])
        bystander = subprocess.Popen(["sleep", "60"])
        started.extend([raylet, bystander])
        return raylet, bystander

    yield make
    left = reaper.descendants((p.pid, reaper.start_time(p.pid) or 0) for p in started)
    for process in started:
        process.kill()
        process.wait()
    reaper.kill(left)  # the agents of a failed test


def _watch(raylet: subprocess.Popen) -> subprocess.Popen:
    watcher = reaper.start({(raylet.pid, reaper.start_time(raylet.pid))})
    assert watcher is not None
    return watcher


def test_the_command_dying_unannounced_kills_the_node_and_its_descendants(node):
    raylet, bystander = node()
    agent = _child_of(raylet)
    watcher = _watch(raylet)
    time.sleep(2 * reaper.WATCH_SECONDS)
    watcher.stdin.close()  # what the command's death does to the pipe: end of file
    watcher.wait(timeout=10)
    assert _gone(raylet.pid) and _gone(agent[0])
    assert bystander.poll() is None  # an unrelated process is left alone


def test_a_descendant_orphaned_before_the_command_dies_is_killed_too(node):
    """The raylet dies first (as on kill -9 of the command) and its agent becomes a child of
    init: the reaper has seen it and kills it all the same."""
    raylet, _ = node(delay=0.5)  # the agent starts after the reaper
    watcher = _watch(raylet)
    time.sleep(1.0)  # the delay's own sleep is over: the shell's child is the agent
    agent = _child_of(raylet)
    time.sleep(3 * reaper.WATCH_SECONDS)
    raylet.kill()
    raylet.wait()
    assert not _gone(agent[0], seconds=0.5)  # orphaned, alive
    watcher.stdin.close()
    watcher.wait(timeout=10)
    assert _gone(agent[0])


def test_a_command_that_shuts_ray_down_itself_stands_the_reaper_down(node):
    raylet, _ = node()
    agent = _child_of(raylet)
    watcher = _watch(raylet)
    reaper.stand_down(watcher)
    assert watcher.returncode == 0
    time.sleep(0.3)
    assert raylet.poll() is None and not _gone(agent[0], seconds=0.1)


def test_a_reused_pid_is_not_killed(node):
    raylet, _ = node()
    reaper.kill([(raylet.pid, reaper.start_time(raylet.pid) + 1)])  # another process's start
    time.sleep(0.3)
    assert raylet.poll() is None
    reaper.kill([(raylet.pid, reaper.start_time(raylet.pid))])
    assert _gone(raylet.pid)


def test_children_descendants_and_start_times_read_from_proc(node):
    raylet, bystander = node()
    agent = _child_of(raylet)
    mine = reaper.children(os.getpid())
    assert (raylet.pid, reaper.start_time(raylet.pid)) in mine
    assert reaper.descendants({(raylet.pid, reaper.start_time(raylet.pid))}) == {agent}
    assert reaper.start_time(os.getpid()) <= reaper.start_time(raylet.pid)
    bystander.kill()
    bystander.wait()
    assert reaper.start_time(bystander.pid) is None


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
