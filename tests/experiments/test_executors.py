"""Executors: choice and refusal of options, failures that never stop a sweep."""

from __future__ import annotations

import sys

import pytest
from experiment_toys import ToySettings

from layerwise.experiments.executors import (
    ExecutorError,
    InProcessExecutor,
    Job,
    LocalExecutor,
    make_executor,
)
from layerwise.experiments.registry import RunTask

TASK = RunTask(experiment="toy", settings=ToySettings(), methods={}, seeds=(0,))


def test_make_executor_picks_in_process_for_one_worker_and_refuses_bad_options():
    assert isinstance(make_executor("local", workers=1), InProcessExecutor)
    assert make_executor("local", workers=3).describe() == {"name": "local", "workers": 3}
    with pytest.raises(ExecutorError, match="--workers must be >= 1, got 0"):
        make_executor("local", workers=0)
    with pytest.raises(ExecutorError, match="--address is only meaningful with --executor ray"):
        make_executor("local", address="10.0.0.1:6379")
    with pytest.raises(ExecutorError, match="unknown executor 'slurm'"):
        make_executor("slurm")


def _returns_a_list(task):
    return [1, 2]


def test_a_run_that_returns_no_dataframe_is_a_failed_outcome():
    (outcome,) = InProcessExecutor().run([Job("r", _returns_a_list, TASK)])
    assert outcome.table is None
    assert "TypeError: run function returned list, not a DataFrame" in outcome.error


def test_a_job_that_cannot_reach_a_worker_is_a_failed_outcome_not_a_crash():
    def local_function(task):  # not importable by name: cannot be sent to a worker
        raise AssertionError("never runs")

    with LocalExecutor(2) as executor:
        (outcome,) = list(executor.run([Job("r", local_function, TASK)]))
    assert outcome.table is None and "pickle" in outcome.error.lower()


def test_ray_executor_without_ray_installed_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(ExecutorError, match=r"needs Ray, which is not installed.*layerwise\[ray\]"):
        make_executor("ray", workers=1)
