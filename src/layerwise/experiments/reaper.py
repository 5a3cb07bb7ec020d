"""Stop a local Ray instance's processes when the command that started it dies unannounced.

``ray.init()`` without an address starts a node as children of the command (GCS server,
raylet, monitors; the raylet then starts its agents and workers). When the command is killed
with ``kill -9`` the node's own processes notice within seconds, but the raylet's agents
(``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) first try to report the raylet's death to
the GCS server, which is gone, and live on for its 60 s request timeout, holding ~100 MB each.
A command's processes must not outlive it, so :class:`RayExecutor` starts this reaper right
after ``ray.init()``:

- it is handed the processes the command gained during ``ray.init()`` (``pid:start-time``
  pairs, the start time guarding against a reused pid), and every :data:`WATCH_SECONDS` adds
  their descendants (the raylet's agents and workers) to what it watches: once their parent
  is dead they are children of init and no longer to be told apart (the agents carry no mark
  of their raylet in their environment);
- it waits on its standard input, a pipe whose only writer is the command: the command writes
  :data:`QUIT` before its own ``ray.shutdown()``, and the reaper exits untouched; end of file
  without it means the command died, and the reaper kills (``SIGKILL``) the node, the raylet
  first (so that it restarts nothing), then every descendant it has seen.

Linux only (it reads ``/proc``); elsewhere no reaper is started. Run as
``python -m layerwise.experiments.reaper PID:START ...``; it imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

#: What the command writes to the reaper's standard input before it shuts Ray down itself.
QUIT = b"q"

_PROC = Path("/proc")

#: A process: its pid and its start time (clock ticks since boot, ``/proc/PID/stat`` field 22).
Process = tuple[int, int]


def supported() -> bool:
    return sys.platform.startswith("linux") and _PROC.is_dir()


def start_time(pid: int) -> int | None:
    """Process ``pid``'s start time, or ``None`` when there is no such process."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return int(stat.rpartition(")")[2].split()[19])


def _children_table() -> dict[int, list[Process]]:
    """Every process's children, by parent pid, from one pass over ``/proc``."""
    table: dict[int, list[Process]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # it exited meanwhile
        table.setdefault(int(fields[1]), []).append((int(entry.name), int(fields[19])))
    return table


def children(pid: int) -> set[Process]:
    """The live children of process ``pid`` (none where ``/proc`` is missing)."""
    return set(_children_table().get(pid, [])) if supported() else set()


def descendants(roots: Iterable[Process]) -> set[Process]:
    """The live descendants of ``roots`` (those that still are the recorded processes)."""
    table = _children_table()
    pending = [pid for pid, started in roots if start_time(pid) == started]
    found: set[Process] = set()
    while pending:
        for child in table.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child[0])
    return found


def kill(processes: Iterable[Process]) -> None:
    """``SIGKILL`` each process that still is the one recorded (same pid, same start time)."""
    for pid, started in processes:
        if pid != os.getpid() and start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                os.kill(pid, signal.SIGKILL)


#: How often the reaper adds the node's new descendants to what it watches.
WATCH_SECONDS = 0.5


def reap(node: Iterable[Process], seen: Iterable[Process] = ()) -> None:
    """Kill ``node`` and its descendants, those alive now and those ``seen`` before (orphans
    now). The node goes first, so that a raylet restarts no agent it loses."""
    node = set(node)
    rest = descendants(node) | set(seen)
    kill(node)
    kill(rest - node)


def start(node: Iterable[Process]) -> subprocess.Popen | None:
    """Start the reaper for ``node`` (the processes ``ray.init()`` added); ``None`` when there
    is nothing to watch or ``/proc`` is missing. Write :data:`QUIT` to its stdin and close it
    before shutting the node down."""
    node = sorted(node)
    if not node or not supported():
        return None
    return subprocess.Popen(
        [sys.executable, "-m", __name__, *(f"{pid}:{started}" for pid, started in node)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # A terminal's Ctrl-C goes to the foreground group: the reaper must not die of it
        # before the command has decided whether to shut Ray down.
        start_new_session=True,
    )


def stand_down(reaper: subprocess.Popen | None) -> None:
    """Tell the reaper the command shuts Ray down itself, and wait for it to exit."""
    if reaper is None:
        return
    try:
        reaper.stdin.write(QUIT)
        reaper.stdin.close()
    except BrokenPipeError:  # it is already gone
        pass
    try:
        reaper.wait(timeout=5)
    except subprocess.TimeoutExpired:
        reaper.kill()
        reaper.wait()


def main(argv: Sequence[str]) -> int:
    node = {tuple(int(part) for part in arg.split(":")) for arg in argv}
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seen: set[Process] = set()
    while not select.select([sys.stdin], [], [], WATCH_SECONDS)[0]:
        seen |= descendants(node | seen)
    message = sys.stdin.buffer.read(len(QUIT))  # the command spoke, or died (end of file)
    if message != QUIT:
        reap(node, seen)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
