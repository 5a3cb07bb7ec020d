"""The spawned rank of the bad-input tests: each misuse is tried in turn and the error each rank
raised (its message, or ``None``) written to ``out_dir/rank{rank}.pt`` for the parent.

Misuses: an optimizer constructed before ``init_process_group``; a model that differs across
ranks; KFAC stepping with factors captured on one rank only. Every collective runs under a
20 s timeout, so a hang fails the test instead of blocking it.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from distributed_cases import batches, make_model
from torch import distributed as dist
from torch import nn
from torch.nn import functional as F

from layerwise.optim import KFAC, Muon, Shampoo


def _error(action: Callable[[], Any], kind: type[Exception]) -> str | None:
    try:
        action()
    except kind as error:
        return str(error)
    return None


def _backward(model: nn.Module) -> None:
    x, y = batches()[0]
    F.cross_entropy(model(x), y).backward()


def _differing_model(rank: int) -> nn.Module:
    """The test model with a hidden width that depends on the rank."""
    torch.manual_seed(0)
    width = 8 + rank
    return nn.Sequential(nn.Linear(6, width), nn.Tanh(), nn.Linear(width, 3)).double()


def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    try:
        model = make_model()
        early = {
            "before_init_shampoo": Shampoo(model.parameters(), distributed="split"),
            "before_init_kfac": KFAC(model, loss="cross_entropy"),
        }
        dist.init_process_group(
            "gloo",
            init_method=f"file://{init_file}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=20),
        )
        for name, optimizer in early.items():
            _backward(model)
            results[name] = _error(optimizer.step, RuntimeError)
            optimizer.zero_grad()

        different = _differing_model(rank)
        builders: dict[str, Callable[[], Any]] = {
            "differ_kfac": lambda: KFAC(different, loss="cross_entropy"),
            "differ_shampoo_split": lambda: Shampoo(different.parameters(), distributed="split"),
            "differ_muon": lambda: Muon(different.parameters()),
        }
        for name, build in builders.items():
            results[name] = _error(build, ValueError)
        same = make_model()
        results["same_model"] = _error(lambda: KFAC(same, loss="cross_entropy"), ValueError)

        # KFAC without a DDP wrapper: rank 0 runs forward and backward (its hooks capture the
        # factors), rank 1 only sets gradients, so its hooks capture nothing.
        optimizer = KFAC(same, loss="cross_entropy", refresh_every=1)
        if rank == 0:
            _backward(same)
        else:
            for param in same.parameters():
                param.grad = torch.zeros_like(param)
        results["partial_capture"] = _error(optimizer.step, RuntimeError)
        # Both ranks raised and stay usable: a correct step afterwards goes through.
        optimizer.zero_grad()
        _backward(same)
        results["after_partial"] = _error(optimizer.step, RuntimeError)
    except Exception:  # reported to the parent, which asserts
        results["error"] = traceback.format_exc()
    finally:
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        if dist.is_initialized():
            dist.destroy_process_group()
