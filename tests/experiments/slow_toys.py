"""A toy run that sleeps first, so that a test can signal a command while its runs are in flight
(importable by worker processes, like :mod:`experiment_toys`)."""

from __future__ import annotations

import time

import experiment_toys


def run(task):
    time.sleep(60)
    return experiment_toys.run(task)
