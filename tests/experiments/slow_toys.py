"""A toy run that sleeps first, so that a test can signal a command while its runs are in flight
(importable by worker processes, like :mod:`experiment_toys`).

With ``SLOW_TOYS_STARTED`` naming a folder, each run writes a file there as it starts, so the
test knows when the runs are in flight rather than guessing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import experiment_toys


def run(task):
    started = os.environ.get("SLOW_TOYS_STARTED")
    if started:
        Path(started, f"{os.getpid()}-{task.seeds[0]}").touch()
    time.sleep(60)
    return experiment_toys.run(task)
