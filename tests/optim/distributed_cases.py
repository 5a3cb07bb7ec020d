"""Cases of the distributed tests: one function trains a case on one rank (or alone).

A case is plain data (a name, the optimizer, its knobs); :func:`train_case` trains it either in
a single process on the whole batches, or as one rank of a ``DistributedDataParallel`` job on
its slice of each batch, and returns the parameters after every step. :func:`worker` is the
spawned process: it runs several cases per spawn (spawning is slow) and writes the results
to a file for the parent to compare.
"""

from __future__ import annotations

import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from torch.nn import functional as F

from layerwise.optim import KFAC, SOAP, Muon, Shampoo

STEPS = 4
BATCH = 16
INPUTS, HIDDEN, OUTPUTS = 6, 8, 3


def make_model(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(INPUTS, HIDDEN),
        nn.Tanh(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.Tanh(),
        nn.Linear(HIDDEN, OUTPUTS),
    )
    return model.to(dtype)


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(BATCH, INPUTS, generator=generator, dtype=torch.float64),
            torch.randint(0, OUTPUTS, (BATCH,), generator=generator),
        )
        for _ in range(STEPS)
    ]


def make_optimizer(case: dict[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    kind, knobs = case["optimizer"], dict(case.get("knobs", {}))
    extra = {"distributed": case["distributed"]} if "distributed" in case else {}
    if kind == "kfac":
        return KFAC(model, loss="cross_entropy", statistics_batch=None, **knobs, **extra)
    cls = {"shampoo": Shampoo, "soap": SOAP, "muon": Muon}[kind]
    return cls(model.parameters(), **knobs, **extra)


def train_case(case: dict[str, Any], rank: int = 0, world: int = 1) -> dict[str, Any]:
    """Parameters after every step, and the losses (of the local batches)."""
    dtype = getattr(torch, case.get("dtype", "float64"))
    model = make_model(dtype)
    trained: nn.Module = model
    if world > 1:
        trained = nn.parallel.DistributedDataParallel(model)
    optimizer = make_optimizer(case, trained if case.get("wrapped", True) else model)
    micro = case.get("micro_batches", 1)
    history, losses = [], []
    for x, y in batches():
        x = x.to(dtype)
        local = BATCH // world
        x, y = x[rank * local : (rank + 1) * local], y[rank * local : (rank + 1) * local]
        optimizer.zero_grad()
        size = local // micro
        for m in range(micro):
            xm, ym = x[m * size : (m + 1) * size], y[m * size : (m + 1) * size]
            last = m == micro - 1
            context = trained.no_sync() if world > 1 and not last else _nothing()
            with context:
                loss = F.cross_entropy(trained(xm), ym) / micro
                loss.backward()
            losses.append(float(loss.detach()))
        optimizer.step()
        history.append([p.detach().clone() for p in model.parameters()])
    return {"params": history, "losses": losses}


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def worker(rank: int, world: int, init_file: str, out_dir: str, cases: list[dict]) -> None:
    """One rank of a spawned job: every case, results to ``out_dir/rank{rank}.pt``."""
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{init_file}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=60),
        )
        for case in cases:
            if case.get("expect_error"):
                try:
                    train_case(case, rank, world)
                    results[case["name"]] = {"error": None}
                except Exception as error:  # must be raised alike on every rank
                    results[case["name"]] = {"error": type(error).__name__}
                continue
            results[case["name"]] = train_case(case, rank, world)
    except Exception:  # reported to the parent, which asserts
        results["error"] = traceback.format_exc()
    finally:
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        if dist.is_initialized():
            dist.destroy_process_group()
