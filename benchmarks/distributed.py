"""Cost of a data-parallel training step: ``distributed="replicate"`` against ``"split"`` and
``"shard"`` for each optimizer, relative to AdamW under the same ``DistributedDataParallel``
wrapper.

Usage::

    python -m benchmarks.distributed [--quick] [--json OUT] [--width W] [--rounds R]

Two CPU processes (gloo, one torch thread each) train the MLP ``width -> 4 x width -> 10``
(ReLU, cross-entropy, float32), each on its half of a batch of 256, preconditioners refreshed
every 5 steps. A *step* is forward + backward (DDP's gradient all-reduce) +
``optimizer.step()`` + ``zero_grad()``; its time is the slower rank's. Candidates run
interleaved, one refresh period per candidate per round; ratios are taken within a round and
their median reported. Per candidate:

- ``step_ms`` and ``ratio_adamw`` (AdamW under DDP = 1);
- ``refresh_ms``: the step that refreshes minus the median of the period's other steps (Muon
  has no refresh: its Newton–Schulz runs every step and is what ``"split"`` divides);
- ``step_over_replicate`` / ``refresh_over_replicate``: the split's (and the shard's) step
  and refresh relative to the replicated ones (issue 12's target for the split: refresh <= 0.6
  at 2 ranks); ``"shard"`` (Shampoo, SOAP, Muon) runs each matrix's whole step on its owner and
  broadcasts the directions, so its state per rank falls too;
- ``state_mib``: optimizer state per rank (KFAC: with the buffers of its factor all-reduce in
  flight between steps);
  ``droppable_mib``: of it, the refresh inputs (statistics) of the blocks another rank
  refreshes under ``"split"``, what a non-owner could drop (it is kept: see the README);
  ``rank_loads``: each rank's share of the refresh cost model (Σ d³) under the split;
- KFAC's ``wait_ms``: per step, the time spent waiting for the factor all-reduce that the
  last statistics step launched (``async_op=True``, overlapping the forward and backward
  pass; :mod:`layerwise.optim.factor_sync`) and folding it, at the start of the step and
  before a refresh; KFAC also runs with ``process_group=None`` (rank-local factors, no factor
  communication): the communication's share of KFAC's step (target <= 10 %), and waiting right
  after each step (``"kfac replicate, no overlap"``: the synchronous every-step all-reduce,
  the same arithmetic), what the overlap saves;
- ``--fsdp`` adds FSDP2 rows (``fully_shard`` on every Linear and the root; the gradients of
  each block are gathered whole for the step, see ``layerwise.optim.distributed``).

``--quick`` shrinks everything to seconds (CI smoke test). Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.nn import functional as F

from benchmarks.candidates import Setting, build_mlp, make_batches
from layerwise.optim import KFAC, SOAP, Muon, Shampoo
from layerwise.optim.base import state_bytes
from layerwise.optim.distributed import assign_owners, refresh_cost
from layerwise.optim.kronecker import EXP_AVG, STATISTIC_KEYS

SEED = 0
WORLD = 2
METHODS = ("shampoo", "soap", "muon", "kfac")
#: Issue 12's targets at 2 ranks.
TARGET_SPLIT_REFRESH = 0.6
TARGET_KFAC_ALL_REDUCE = 0.10


@dataclass(frozen=True)
class Plan:
    setting: Setting
    rounds: int
    #: Seconds a rank may wait on a collective (and the parent on the job, times 10).
    timeout_s: float = 60.0
    fsdp: bool = False


@dataclass(frozen=True)
class Candidate:
    name: str
    method: str
    #: ``"replicate"`` / ``"split"`` / ``"shard"``; ``"local"``: KFAC without a process group;
    #: ``"sync"``: KFAC replicated, waiting for its factor all-reduce right after each step (no
    #: overlap).
    mode: str = "replicate"
    #: ``"ddp"`` (DistributedDataParallel) or ``"fsdp"`` (FSDP2's ``fully_shard``).
    wrapper: str = "ddp"


def candidates(fsdp: bool = False) -> list[Candidate]:
    found = [Candidate("torch AdamW", "adamw")]
    for method in METHODS:
        # KFAC refuses "shard": its factors come from each rank's own activations.
        modes = ("replicate", "split") if method == "kfac" else ("replicate", "split", "shard")
        for mode in modes:
            found.append(Candidate(f"{method} {mode}", method, mode))
    found.append(Candidate("kfac local factors", "kfac", "local"))
    found.append(Candidate("kfac replicate, no overlap", "kfac", "sync"))
    if fsdp:
        found.append(Candidate("torch AdamW fsdp", "adamw", wrapper="fsdp"))
        for method in METHODS:
            found.append(Candidate(f"{method} fsdp", method, wrapper="fsdp"))
    return found


def make_plan(quick: bool, width: int | None, rounds: int | None, fsdp: bool = False) -> Plan:
    size = width or (32 if quick else 512)
    # Four equal hidden blocks, so that two ranks can split the refresh evenly (with three,
    # the best split leaves 2/3 on one rank).
    setting = Setting(
        width=size, batch=16 if quick else 256, refresh_every=5, inputs=size, hidden_layers=4
    )
    return Plan(setting, rounds or (2 if quick else 8), fsdp=fsdp)


def build_optimizer(candidate: Candidate, model: nn.Module, refresh_every: int) -> Any:
    if candidate.method == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    sharing = candidate.mode if candidate.mode in ("split", "shard") else "replicate"
    extra: dict[str, Any] = {"distributed": sharing}
    if candidate.mode == "local":
        extra = {"process_group": None}
    if candidate.method == "kfac":
        return KFAC(model, loss="cross_entropy", refresh_every=refresh_every, **extra)
    if candidate.method == "muon":
        return Muon(model.parameters(), **extra)
    cls = {"shampoo": Shampoo, "soap": SOAP}[candidate.method]
    return cls(model.parameters(), refresh_every=refresh_every, **extra)


class Trained:
    """One candidate on one rank: its DDP model, optimizer and local batches."""

    def __init__(self, candidate: Candidate, plan: Plan, rank: int) -> None:
        model = build_mlp(plan.setting, SEED)
        if candidate.wrapper == "fsdp":
            for layer in model:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer)
            self.model: nn.Module = fully_shard(model)
        else:
            self.model = nn.parallel.DistributedDataParallel(model)
        self.optimizer = build_optimizer(candidate, self.model, plan.setting.refresh_every)
        self.wait_at_once = candidate.mode == "sync"
        #: Seconds spent waiting for (and folding) KFAC's factor all-reduce in the last step.
        self.wait_s = 0.0
        source = getattr(self.optimizer, "_source", None)
        if candidate.method == "kfac" and source is not None:
            synchronize = source.synchronize

            def timed() -> None:
                start = time.perf_counter()
                synchronize()
                self.wait_s += time.perf_counter() - start

            source.synchronize = timed
        local = plan.setting.batch // WORLD
        self.batches = [
            (x[rank * local : (rank + 1) * local], y[rank * local : (rank + 1) * local])
            for x, y in make_batches(plan.setting, SEED)
        ]
        self.index = 0

    def step(self) -> float:
        """One training step; its local wall time in seconds (and in :attr:`wait_s`, the
        time spent waiting for KFAC's factor all-reduce)."""
        x, y = self.batches[self.index % len(self.batches)]
        self.index += 1
        self.wait_s = 0.0
        start = time.perf_counter()
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        if self.wait_at_once:
            self.optimizer._source.synchronize()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


def _period(trained: Trained, steps: int) -> list[float]:
    """A refresh period's step times (s), each the slower rank's (the first step refreshes),
    then each step's wait for KFAC's factor all-reduce (the slower rank's)."""
    dist.barrier()
    times, waits = [], []
    for _ in range(steps):
        times.append(trained.step())
        waits.append(trained.wait_s)
    measured = torch.tensor([*times, *waits], dtype=torch.float64)
    dist.all_reduce(measured, op=dist.ReduceOp.MAX)
    return measured.tolist()


def ownership(optimizer: Any, rank: int) -> tuple[float, list[float]]:
    """``(droppable bytes, loads)``: the bytes of the statistics (refresh inputs) of the blocks
    ``"split"`` assigns to other ranks than ``rank``, and each rank's share of the refresh cost,
    from :func:`assign_owners` on the blocks in the optimizer's order (one param group, all
    refreshing together, as here)."""
    states = [
        optimizer.state[p]
        for group in optimizer.param_groups
        for p in group["params"]
        if STATISTIC_KEYS[0] in optimizer.state.get(p, {})
    ]
    if not states:
        return 0.0, []
    costs = [refresh_cost(state[EXP_AVG].shape) for state in states]
    owners = assign_owners(costs, WORLD)
    loads = [sum(c for c, o in zip(costs, owners, strict=True) if o == r) for r in range(WORLD)]
    droppable = sum(
        state[key].numel() * state[key].element_size()
        for state, owner in zip(states, owners, strict=True)
        if owner != rank
        for key in STATISTIC_KEYS
        if key in state
    )
    return float(droppable), [load / sum(loads) for load in loads]


def _rank(rank: int, init_file: str, out: str, plan: Plan) -> None:
    torch.set_num_threads(1)
    result: dict[str, Any] = {}
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{init_file}",
            rank=rank,
            world_size=WORLD,
            timeout=timedelta(seconds=plan.timeout_s),
        )
        period = plan.setting.refresh_every
        trained = {c.name: Trained(c, plan, rank) for c in candidates(plan.fsdp)}
        for item in trained.values():  # warm-up: one period, state allocated
            _period(item, period)
        result["state_mib"] = {
            name: state_bytes([item.optimizer]) / 2**20 for name, item in trained.items()
        }
        result["ownership"] = {
            name: ownership(item.optimizer, rank)
            for name, item in trained.items()
            if name.endswith(" split")
        }
        result["periods"] = {name: [] for name in trained}
        for _ in range(plan.rounds):
            for name, item in trained.items():
                result["periods"][name].append(_period(item, period))
    except Exception:  # reported by the parent
        result["error"] = traceback.format_exc()
    finally:
        if rank == 0 or "error" in result:
            torch.save(result, Path(out) / f"rank{rank}.pt")
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(plan: Plan) -> dict[str, Any]:
    """Spawn the two ranks; rank 0's measurements."""
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as directory:
        init_file = str(Path(directory) / "init")
        processes = [
            context.Process(target=_rank, args=(rank, init_file, directory, plan))
            for rank in range(WORLD)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=plan.timeout_s * 10)
        for process in processes:
            if process.is_alive():
                process.kill()
        for rank in range(WORLD):
            path = Path(directory) / f"rank{rank}.pt"
            if path.exists():
                result = torch.load(path, weights_only=False)
                if "error" in result:
                    raise RuntimeError(f"rank {rank} failed:\n{result['error']}")
        path = Path(directory) / "rank0.pt"
        if not path.exists():
            raise RuntimeError("rank 0 wrote no results (timed out or crashed)")
        return torch.load(path, weights_only=False)


def _steps(period: list[float]) -> list[float]:
    return period[: len(period) // 2]  # then the waits


def _waits(period: list[float]) -> list[float]:
    return period[len(period) // 2 :]


def _refresh_s(period: list[float]) -> float:
    steps = _steps(period)
    return max(steps[0] - statistics.median(steps[1:]), 0.0)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summarize(raw: dict[str, Any], fsdp: bool = False) -> list[dict[str, Any]]:
    periods = raw["periods"]
    adamw = [_steps(p) for p in periods["torch AdamW"]]
    rows = []
    for candidate in candidates(fsdp):
        mine = periods[candidate.name]
        steps = [_mean(_steps(p)) for p in mine]
        row: dict[str, Any] = {
            "name": candidate.name,
            "method": candidate.method,
            "mode": candidate.mode,
            "step_ms": 1e3 * statistics.median(steps),
            "ratio_adamw": statistics.median(
                s / _mean(a) for s, a in zip(steps, adamw, strict=True)
            ),
            "state_mib": raw["state_mib"][candidate.name],
        }
        if candidate.name in raw["ownership"]:
            droppable, loads = raw["ownership"][candidate.name]
            row["droppable_mib"] = droppable / 2**20
            row["rank_loads"] = loads
        if candidate.method not in ("adamw", "muon"):
            row["refresh_ms"] = 1e3 * statistics.median(_refresh_s(p) for p in mine)
        if candidate.method == "kfac" and candidate.mode != "local":
            row["wait_ms"] = 1e3 * statistics.median(_mean(_waits(p)) for p in mine)
        if candidate.mode in ("split", "shard", "local", "sync"):
            base = periods[f"{candidate.method} replicate"]
            row["step_over_replicate"] = statistics.median(
                sum(_steps(p)) / sum(_steps(b)) for p, b in zip(mine, base, strict=True)
            )
            if candidate.mode in ("split", "shard") and "refresh_ms" in row:
                ratios = [
                    _refresh_s(p) / _refresh_s(b)
                    for p, b in zip(mine, base, strict=True)
                    if _refresh_s(b) > 0
                ]
                row["refresh_over_replicate"] = statistics.median(ratios) if ratios else None
            if candidate.mode == "split" and "wait_ms" in row:
                # The refreshing step's wait for the factors (the same in both modes) taken
                # out: the refresh's own work.
                ratios = [
                    (_refresh_s(p) - _waits(p)[0]) / (_refresh_s(b) - _waits(b)[0])
                    for p, b in zip(mine, base, strict=True)
                    if _refresh_s(b) - _waits(b)[0] > 0
                ]
                row["refresh_over_replicate_without_wait"] = (
                    statistics.median(ratios) if ratios else None
                )
        rows.append(row)
    return rows


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name = {row["name"]: row for row in rows}
    checks = []
    for method in ("shampoo", "soap", "kfac"):
        value = by_name[f"{method} split"].get("refresh_over_replicate")
        checks.append(
            {
                "check": f"{method}: split refresh / replicated refresh",
                "value": value,
                "target": f"<= {TARGET_SPLIT_REFRESH}",
                "met": value is not None and value <= TARGET_SPLIT_REFRESH,
            }
        )
    value = by_name["kfac split"].get("refresh_over_replicate_without_wait")
    checks.append(
        {
            "check": "kfac: the same, the wait for the factors (equal in both) taken out",
            "value": value,
            "target": f"<= {TARGET_SPLIT_REFRESH}",
            "met": value is not None and value <= TARGET_SPLIT_REFRESH,
        }
    )
    local = by_name["kfac local factors"]["step_over_replicate"]
    share = 1.0 - local  # the replicated step with the all-reduce is the reference
    synchronous = by_name["kfac replicate, no overlap"]["step_over_replicate"]
    checks.append(
        {
            "check": "kfac: the same without the overlap (waiting right after each step)",
            "value": 1.0 - local / synchronous,
            "target": f"<= {TARGET_KFAC_ALL_REDUCE}",
            "met": 1.0 - local / synchronous <= TARGET_KFAC_ALL_REDUCE,
        }
    )
    checks.append(
        {
            "check": "kfac: factor all-reduce's share of the step",  # overlapped + weights
            "value": share,
            "target": f"<= {TARGET_KFAC_ALL_REDUCE}",
            "met": share <= TARGET_KFAC_ALL_REDUCE,
        }
    )
    return checks


def markdown(report: dict[str, Any]) -> str:
    setting = report["setting"]
    lines = [
        f"## distributed: {WORLD} gloo ranks, width {setting['width']}, "
        f"global batch {setting['batch']}, refresh every {setting['refresh_every']}",
        "",
        "| candidate | step ms | × AdamW | refresh ms | wait ms | step / replicate | "
        "refresh / replicate | state MiB/rank | droppable MiB | rank loads |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(value: Any, digits: int = 2) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    for row in report["rows"]:
        lines.append(
            f"| {row['name']} | {cell(row['step_ms'], 1)} | {cell(row['ratio_adamw'])} | "
            f"{cell(row.get('refresh_ms'), 1)} | {cell(row.get('wait_ms'), 1)} | "
            f"{cell(row.get('step_over_replicate'))} | "
            f"{cell(row.get('refresh_over_replicate'))} | {cell(row['state_mib'])} | "
            f"{cell(row.get('droppable_mib'))} | "
            f"{' / '.join(f'{load:.2f}' for load in row.get('rank_loads', []))} |"
        )
    lines += ["", "| check | value | target | met |", "|---|---|---|---|"]
    for check in report["checks"]:
        lines.append(
            f"| {check['check']} | {cell(check['value'])} | {check['target']} | "
            f"{'yes' if check['met'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds; CI)")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--width", type=int, help="the MLP's width (default 512)")
    parser.add_argument("--rounds", type=int, help="timed rounds (default 8)")
    parser.add_argument("--fsdp", action="store_true", help="also FSDP2 rows")
    args = parser.parse_args(argv)
    plan = make_plan(args.quick, args.width, args.rounds, args.fsdp)
    started = time.perf_counter()
    raw = run_ranks(plan)
    rows = summarize(raw, plan.fsdp)
    report = {
        "benchmark": "distributed",
        "world_size": WORLD,
        "backend": "gloo",
        "torch_threads_per_rank": 1,
        "torch": torch.__version__,
        "setting": asdict(plan.setting),
        "rounds": plan.rounds,
        "rows": rows,
        "checks": check_targets(rows),
        "periods_s": raw["periods"],
        "wall_s": time.perf_counter() - started,
    }
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
