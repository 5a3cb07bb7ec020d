"""Cases of the distributed tests: one function trains a case on one rank (or alone).

A case is plain data (a name, the optimizer, its knobs); :func:`train_case` trains it either in
a single process on the whole batches, or as one rank of a ``DistributedDataParallel`` job on
its slice of each batch (``"wrapper": "fsdp"``: sharded by FSDP2's ``fully_shard``), and
returns the parameters after every step; ``"resume"`` (``"state_dict"``, ``"dcp"`` or, for
``distributed="shard"``, ``"consolidated"``: rank 0's whole state, loaded by every rank) saves
model and optimizer after ``"resume_at"`` steps and continues from a fresh model and optimizer
that load them; ``"consolidate"`` keeps ``consolidated_state_dict()`` after the last step;
``"rank0_saves_at"`` has rank 0 alone save model and optimizer to memory after that many steps
(the other ranks go on), ``"wait_every_step"`` has every rank call ``optimizer.state_dict()``
after every step. :func:`worker` is the
spawned process: it runs several cases per spawn (spawning is slow) and writes the results
to a file for the parent to compare.
"""

from __future__ import annotations

import dataclasses
import io
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from torch.distributed import checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn import functional as F

from layerwise.optim import KFAC, SOAP, Layerwise, Muon, Shampoo
from layerwise.optim.kronecker import STATISTIC_KEYS
from layerwise.optim.policies import FailurePolicy

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
    if kind == "shampoo_raising":  # Shampoo whose first failed refresh raises (as exact KFAC)
        group = Shampoo(model.parameters(), **knobs, process_group=None).param_groups[0]
        raising = FailurePolicy(max_consecutive_failures=0)
        parts = dataclasses.replace(Shampoo.compose(group), failures=raising)
        return Layerwise(model.parameters(), parts, lr=group["lr"], **extra)
    cls = {"shampoo": Shampoo, "soap": SOAP, "muon": Muon}[kind]
    return cls(model.parameters(), **knobs, **extra)


def _wrap(model: nn.Module, case: dict[str, Any], world: int) -> nn.Module:
    if world == 1:
        return model
    if case.get("wrapper") == "fsdp":
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        return fully_shard(model)
    return nn.parallel.DistributedDataParallel(model)


def _full(param: torch.Tensor) -> torch.Tensor:
    return (param.full_tensor() if isinstance(param, DTensor) else param).detach().clone()


def _resume(
    case: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, world: int
) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
    """Save model and optimizer, then a fresh model and optimizer (another initialization)
    that load them."""
    dtype = next(model.parameters()).dtype
    fresh = make_model(dtype)
    with torch.no_grad():
        for param in fresh.parameters():
            param.mul_(-0.5)  # loading must overwrite every entry
    trained = _wrap(fresh, case, world)
    if case["resume"] == "model_only":  # the optimizer starts afresh (a check that can fail)
        fresh.load_state_dict(model.state_dict())
        return fresh, trained, make_optimizer(case, trained)
    if case["resume"] == "consolidated":  # distributed="shard": rank 0 saves the whole state
        full = optimizer.consolidated_state_dict(to=0)
        shared = [full if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(shared, src=0)  # every rank reads rank 0's file
        fresh.load_state_dict(model.state_dict())
        reloaded = make_optimizer(case, trained)
        reloaded.load_state_dict(shared[0])
        return fresh, trained, reloaded
    if case["resume"] == "state_dict":
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
        buffer.seek(0)
        saved = torch.load(buffer, weights_only=False)
        fresh.load_state_dict(saved["model"])
        reloaded = make_optimizer(case, trained if case.get("wrapped", True) else fresh)
        reloaded.load_state_dict(saved["optimizer"])
        return fresh, trained, reloaded
    directory = case["checkpoint_dir"]
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=directory)
    reloaded = make_optimizer(case, trained if case.get("wrapped", True) else fresh)
    model_state, optimizer_state = get_state_dict(fresh, reloaded)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=directory)
    set_model_state_dict(fresh, state["model"])
    # KFAC keeps a folded bias's state on its weight, so the bias has none of its own; under
    # distributed="shard" a rank has no state for the blocks of other ranks.
    strict = case["optimizer"] != "kfac" and case.get("distributed") != "shard"
    options = StateDictOptions(strict=strict)
    set_optimizer_state_dict(fresh, reloaded, state["optimizer"], options=options)
    return fresh, trained, reloaded


def train_case(case: dict[str, Any], rank: int = 0, world: int = 1) -> dict[str, Any]:
    """Parameters after every step, and the losses (of the local batches)."""
    dtype = getattr(torch, case.get("dtype", "float64"))
    model = make_model(dtype)
    trained = _wrap(model, case, world)
    optimizer = make_optimizer(case, trained if case.get("wrapped", True) else model)
    micro = case.get("micro_batches", 1)
    history, losses = [], []
    result: dict[str, Any] = {}
    for index, (x, y) in enumerate(batches()):
        if "resume" in case and index == case["resume_at"]:
            model, trained, optimizer = _resume(case, model, optimizer, world)
        if case.get("rank0_saves_at") == index and rank == 0:
            result["saved_factors"] = _save_alone(model, optimizer)
        x = x.to(dtype)
        local = BATCH // world
        x, y = x[rank * local : (rank + 1) * local], y[rank * local : (rank + 1) * local]
        optimizer.zero_grad()
        size = local // micro
        for m in range(micro):
            xm, ym = x[m * size : (m + 1) * size], y[m * size : (m + 1) * size]
            last = m == micro - 1
            ddp = isinstance(trained, nn.parallel.DistributedDataParallel)
            context = trained.no_sync() if ddp and not last else _nothing()
            with context:
                loss = F.cross_entropy(trained(xm), ym) / micro
                loss.backward()
            losses.append(float(loss.detach()))
        optimizer.step()
        if case.get("wait_every_step"):
            optimizer.state_dict()
        history.append([_full(p) for p in model.parameters()])
    result.update(params=history, losses=losses)
    if case.get("keep_state"):
        result["state_dict"] = optimizer.state_dict()
    if case.get("consolidate"):
        result["consolidated"] = optimizer.consolidated_state_dict(to=0)
    return result


def _save_alone(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[tuple[int, str], Any]:
    """What one rank alone saves (``torch.save`` of model and optimizer to memory, as
    ``if rank == 0: torch.save(...)``): the factors read back from it."""
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)["optimizer"]["state"]
    return {
        (index, key): state[key]
        for index, state in saved.items()
        for key in STATISTIC_KEYS
        if key in state
    }


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
            if case.get("resume") == "dcp":  # one directory that every rank sees
                case = {**case, "checkpoint_dir": str(Path(out_dir) / case["name"])}
            if case.get("expect_error"):
                try:
                    train_case(case, rank, world)
                    results[case["name"]] = {"error": None}
                except Exception as error:  # must be raised alike on every rank
                    results[case["name"]] = {"error": type(error).__name__, "message": str(error)}
                continue
            results[case["name"]] = train_case(case, rank, world)
    except Exception:  # reported to the parent, which asserts
        results["error"] = traceback.format_exc()
    finally:
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        if dist.is_initialized():
            dist.destroy_process_group()
