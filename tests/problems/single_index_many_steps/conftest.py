"""Shared test setup of the many-step single-index tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run each test with one intra-op thread (as the experiment workers do): the many small
    float64 factorizations here are several times slower with threads on a busy 2-core machine.
    The previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
