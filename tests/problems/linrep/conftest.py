"""Shared fixtures: float64 problem pieces built from explicit generators (one intra-op thread:
``tests/problems/conftest.py``)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
