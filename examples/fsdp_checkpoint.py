"""FSDP2 training with a layer-wise optimizer and distributed checkpoints (CPU, gloo).

    torchrun --standalone --nproc_per_node 2 examples/fsdp_checkpoint.py --checkpoint DIR \\
        [--optimizer shampoo|soap|muon|kfac] [--steps N] [--save-every K] [--fail-at STEP]

Each rank trains a small MLP sharded by ``fully_shard`` (parameters and gradients are DTensors
sharded on dim 0) on its half of every batch. Every ``--save-every`` steps model and optimizer
go to ``DIR/step-<n>`` with ``torch.distributed.checkpoint`` (DCP); a job started again
with the same ``DIR`` resumes from the latest one and continues bit for bit as if it had never
stopped. ``--fail-at STEP`` makes the first attempt crash after that many steps, to watch the
resume, by hand (start the job again) or by torchrun (``--max-restarts 1``: it restarts the
workers in the same job). The process group is initialized under a key prefix of its own per
attempt (:func:`init_group`): torchrun's workers share the agent's store across restarts, and
without the prefix a restarted rank presumably reads an address the failed attempt left there:
3 of 3 restarts here failed ("Connection refused", or a hang), none of 6 with the prefix.

The batches depend only on the step index, so a resumed run sees the same data.
"""

from __future__ import annotations

import argparse
import os
from datetime import timedelta
from pathlib import Path

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
from torch.nn import functional as F

from layerwise.optim import KFAC, SOAP, Muon, Shampoo

LATEST = "latest"


def build(kind: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)  # the same initial model on every rank
    model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 33), nn.Tanh())
    model.append(nn.Linear(33, 10))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    if kind == "kfac":  # under FSDP2: empirical curvature (the default)
        return model, KFAC(model, loss="cross_entropy")
    cls = {"shampoo": Shampoo, "soap": SOAP, "muon": Muon}[kind]
    return model, cls(model.parameters(), lr=1e-2)


def save(model: nn.Module, optimizer: torch.optim.Optimizer, root: Path, step: int) -> None:
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save(
        {"model": model_state, "optimizer": optimizer_state}, checkpoint_id=root / f"step-{step}"
    )
    dist.barrier()  # every rank's shard is written before the checkpoint counts
    if dist.get_rank() == 0:
        (root / LATEST).write_text(str(step))


def load(model: nn.Module, optimizer: torch.optim.Optimizer, root: Path, kind: str) -> int:
    """The step of the latest checkpoint under ``root``, loaded into model and optimizer (0:
    none)."""
    if not (root / LATEST).exists():
        return 0
    step = int((root / LATEST).read_text())
    model_state, optimizer_state = get_state_dict(model, optimizer)  # the template
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=root / f"step-{step}")
    set_model_state_dict(model, state["model"])
    # KFAC keeps a folded bias's state on its weight: the bias has none of its own.
    options = StateDictOptions(strict=kind != "kfac")
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=options)
    return step


def init_group() -> None:
    """``init_process_group("gloo")`` from torchrun's environment, its rendezvous keys under a
    prefix of this attempt (``TORCHELASTIC_RESTART_COUNT``), so that a restarted job never reads
    the keys of the attempt before (module docstring)."""
    timeout = timedelta(seconds=60)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=not agent_store and rank == 0,
        timeout=timeout,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    prefixed = dist.PrefixStore(f"fsdp_checkpoint/attempt_{attempt}", store)
    dist.init_process_group("gloo", store=prefixed, rank=rank, world_size=world, timeout=timeout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument(
        "--optimizer", default="shampoo", choices=["shampoo", "soap", "muon", "kfac"]
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--save-every", type=int, default=2)
    parser.add_argument("--fail-at", type=int, default=None)
    args = parser.parse_args()

    init_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    model, optimizer = build(args.optimizer)
    args.checkpoint.mkdir(parents=True, exist_ok=True)
    start = load(model, optimizer, args.checkpoint, args.optimizer)
    if rank == 0 and start:
        print(f"resumed from step {start}", flush=True)
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    teacher = torch.randn(20, 10, generator=torch.Generator().manual_seed(1))
    for step in range(start, args.steps):
        generator = torch.Generator().manual_seed(1000 + step)  # the data of step `step`
        x = torch.randn(64, 20, generator=generator)
        y = (x @ teacher).argmax(dim=1)
        local = x.shape[0] // world
        x, y = x[rank * local : (rank + 1) * local], y[rank * local : (rank + 1) * local]
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if (step + 1) % args.save_every == 0:
            save(model, optimizer, args.checkpoint, step + 1)
        if first_attempt and args.fail_at == step + 1:
            raise SystemExit(f"rank {rank}: failing after step {step + 1} (--fail-at)")
    # The full parameters, the same on every rank: their sum, to compare runs bit for bit.
    total = sum(float(p.detach().full_tensor().double().sum()) for p in model.parameters())
    print(f"rank {rank}: parameter sum {total!r}\n", end="", flush=True)  # one write
    dist.barrier()  # no rank tears the group down while another still uses it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
