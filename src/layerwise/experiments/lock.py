"""One writer per output folder: ``OUT/.layerwise.lock`` names the owner (pid, host).

The lock is an advisory ``flock`` on that file, which the kernel releases when its owner dies
(also on ``kill -9``), so a lock left by a dead writer is taken over without guessing from pids;
the pid and host in the file are there for the message that refuses a second writer. A writer
that holds the lock may remove temporaries (``.*.tmp``) in the folder: no other writer owns them.
Where ``fcntl`` is missing (Windows) the lock is not enforced.
"""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover (not POSIX)
    fcntl = None

LOCK_NAME = ".layerwise.lock"


class LockedError(RuntimeError):
    """Another live writer owns the output folder."""


_held: dict[Path, int] = {}  # folder -> depth: the same process may nest (reproduce -> report)


@contextmanager
def output_lock(out_dir: str | Path):
    """Hold the write lock of ``out_dir`` (created if needed); raise :class:`LockedError`."""
    folder = Path(out_dir).resolve()
    if folder in _held or fcntl is None:
        _held[folder] = _held.get(folder, 0) + 1
        try:
            yield
        finally:
            _held[folder] -= 1
            if not _held[folder]:
                del _held[folder]
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip()
            handle.close()
            raise LockedError(f"{folder} is being written by another command ({owner})") from None
        # A writer that released and unlinked the file between our open and flock: retry.
        if os.path.exists(path) and os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        handle.flush()
        remove_temporaries(folder)
        _held[folder] = 1
        yield
    finally:
        _held.pop(folder, None)
        path.unlink(missing_ok=True)
        handle.close()


def remove_temporaries(folder: Path) -> None:
    """Delete ``.*.tmp`` files left by killed writers (call only while holding the lock)."""
    for temporary in folder.glob("**/.*.tmp"):
        temporary.unlink(missing_ok=True)
