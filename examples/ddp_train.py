"""Data-parallel training with a layer-wise optimizer (CPU, gloo).

    torchrun --standalone --nproc_per_node 2 examples/ddp_train.py
        [--optimizer kfac|shampoo|soap|muon] [--distributed replicate|split|shard]
        [--steps N]

Without torchrun: start one process per rank with ``MASTER_ADDR=127.0.0.1 MASTER_PORT=<port>
RANK=<r> WORLD_SIZE=2 python examples/ddp_train.py``.

Each rank trains a small MLP under DistributedDataParallel on its half of every batch; the
optimizer picks up the process group by itself (``process_group="auto"``).
``--distributed split`` (or ``--split``) runs each block's refresh on one rank and broadcasts
it; ``--distributed shard`` (Shampoo, SOAP, Muon) runs each matrix's whole step on one rank,
which alone keeps its state, and broadcasts the directions.
"""

from __future__ import annotations

import argparse
from datetime import timedelta

import torch
from torch import distributed as dist
from torch import nn
from torch.nn import functional as F

from layerwise.optim import KFAC, SOAP, Muon, Shampoo


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--optimizer", default="kfac", choices=["kfac", "shampoo", "soap", "muon"])
    parser.add_argument(
        "--distributed", default="replicate", choices=["replicate", "split", "shard"]
    )
    parser.add_argument("--split", action="store_true", help="the same as --distributed split")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()

    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial model on every rank (DDP broadcasts it anyway)
    net = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 10))
    model = nn.parallel.DistributedDataParallel(net)
    mode = "split" if args.split else args.distributed
    if args.optimizer == "kfac":
        optimizer = KFAC(model, loss="cross_entropy", distributed=mode)
    else:
        cls = {"shampoo": Shampoo, "soap": SOAP, "muon": Muon}[args.optimizer]
        optimizer = cls(model.parameters(), lr=1e-2, distributed=mode)

    generator = torch.Generator().manual_seed(1)  # the same global batches on every rank
    teacher = torch.randn(20, 10, generator=generator)
    for step in range(args.steps):
        x = torch.randn(256, 20, generator=generator)
        y = (x @ teacher).argmax(dim=1)
        local = x.shape[0] // world
        x, y = x[rank * local : (rank + 1) * local], y[rank * local : (rank + 1) * local]
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if rank == 0 and step % 10 == 0:
            print(f"step {step:3d}  local loss {loss.item():.4f}")
    # The ranks hold bit-identical parameters: the same sum on every rank.
    total = sum(float(p.detach().double().sum()) for p in net.parameters())
    print(f"rank {rank}: parameter sum {total!r}\n", end="", flush=True)  # one write
    dist.barrier()  # no rank tears the group down while another still uses it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
