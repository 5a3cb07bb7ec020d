"""Shared fixtures: float64 problem pieces built from explicit generators."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Small batched matrices: intra-op threads only add contention on a shared machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
