"""Shared setup of the problem tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run each test with one intra-op thread, as the experiment workers do: the problems'
    small batched float64 matrices only gain contention from threads on a shared machine.
    The previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
