"""Cost of a training step with our optimizers against torch AdamW, peer libraries and the floor.

Usage::

    python -m benchmarks.optimizer_step [--quick] [--json OUT] [--no-peers] [--no-exact]

Sections (each interleaved on its own, see :mod:`benchmarks.timing`):

1. ``main``: the MLP 512 -> 3 x 1024 -> 10 at batch 256: torch AdamW, our optimizers (amortized,
   refresh every 10 steps, and exact), the peers for the same methods, and one *floor* per
   optimizer of ours (:class:`benchmarks.candidates.FloorWork`); for each of ours also the share
   of the step spent in statistics, decompositions (refresh) and application.
2. ``width``: the same at width 256.
3. ``batch``: width 1024 at batches 1024 and 4096, AdamW and ours (amortized).

Every time is a full training step (forward, backward, optimizer step, ``zero_grad``),
amortized over a block of one refresh period; ratios are taken within a round and their median
reported. ``--quick`` shrinks everything to seconds (CI smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.candidates import (
    FP32,
    Candidate,
    Setting,
    Trainer,
    Unavailable,
    adamw_candidate,
    build_mlp,
    instantiate,
    our_candidates,
    peer_candidates,
)
from benchmarks.floors import floor_candidates
from benchmarks.timing import Canary, Timed, interleave, paired_ratio, time_calls

SEED = 0

#: record_function ranges opened by :mod:`layerwise.optim.base` around the three phases.
PHASES = {
    "statistics": "layerwise.statistics",
    "decompositions": "layerwise.refresh",
    "application": "layerwise.apply",
}

#: Targets for the defaults at width 1024, batch 256 (ratio to AdamW) and at batch 4096.
TARGET_MAIN = {"shampoo": 5.0, "soap": 6.5, "muon": 2.8, "kfac": 3.0}
TARGET_BATCH_4096 = {"shampoo": 1.4, "soap": 1.5, "muon": 1.25, "kfac": 1.3}
TARGET_FLOOR = 1.25


@dataclass
class Plan:
    main: Setting
    width: Setting
    batches: list[Setting]
    #: per section: at most ``rounds`` timed rounds; at least ``min_rounds``, more while the
    #: section has spent less than ``budget_s``.
    rounds: dict[str, int]
    min_rounds: dict[str, int]
    budget_s: dict[str, float]


def make_plan(quick: bool) -> Plan:
    if quick:
        return Plan(
            main=Setting(width=64, batch=32, refresh_every=4),
            width=Setting(width=32, batch=32, refresh_every=4),
            batches=[Setting(width=64, batch=128, refresh_every=4)],
            rounds={"main": 1, "width": 1, "batch": 1},
            min_rounds={"main": 1, "width": 1, "batch": 1},
            budget_s={"main": 5.0, "width": 2.0, "batch": 2.0},
        )
    return Plan(
        main=Setting(width=1024, batch=256),
        width=Setting(width=256, batch=256),
        batches=[Setting(width=1024, batch=1024), Setting(width=1024, batch=4096)],
        # Three rounds of the main section take 105-135 s on this machine: the budget stops it
        # there, so the whole run stays under 5 minutes on a slow day.
        rounds={"main": 6, "width": 4, "batch": 4},
        min_rounds={"main": 3, "width": 3, "batch": 3},
        budget_s={"main": 95.0, "width": 15.0, "batch": 40.0},
    )


@dataclass
class SectionResult:
    section: str
    setting: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    unavailable: list[dict[str, str]] = field(default_factory=list)
    profiles: dict[str, dict[str, float]] = field(default_factory=dict)


def run_section(
    section: str,
    setting: Setting,
    candidates: list[Candidate],
    unavailable: list[Unavailable],
    plan: Plan,
    canary: Canary,
    *,
    profile: bool,
) -> SectionResult:
    base_model = build_mlp(setting, SEED)
    trainers: dict[str, Trainer] = {}
    errors: dict[str, str] = {}
    for candidate in candidates:
        try:
            trainers[candidate.name] = instantiate(candidate, setting, base_model, SEED)
        except Exception as error:  # a peer that fails to construct is reported, not fatal
            errors[candidate.name] = f"{type(error).__name__}: {error}"
    runnable = [c for c in candidates if c.name in trainers]
    timed = interleave(
        {c.name: trainers[c.name].step for c in runnable},
        {c.name: c.block_steps for c in runnable},
        rounds=plan.rounds[section],
        min_rounds=plan.min_rounds[section],
        budget_s=plan.budget_s[section],
        canary=canary,
    )
    for name, error in errors.items():
        timed[name] = Timed(name, error=error)

    result = SectionResult(section, asdict(setting))
    result.unavailable = [asdict(u) for u in unavailable]
    reference = timed["torch AdamW"]
    by_name = {c.name: c for c in candidates}
    fastest_peer = _fastest_peers(candidates, timed, reference)
    for candidate in candidates:
        t = timed[candidate.name]
        row: dict[str, Any] = {
            "name": candidate.name,
            "method": candidate.method,
            "source": candidate.source,
            "mode": candidate.mode,
            "settings": candidate.settings,
            "error": t.error,
        }
        if not t.error and t.kept:
            row.update(
                median_ms=1e3 * t.median_step,
                max_ms=1e3 * t.max_step,
                ratio_adamw=paired_ratio(t, reference),
                blocks_kept=len(t.kept),
                blocks_total=len(t.blocks),
                state_mib=trainers[candidate.name].state_bytes() / 2**20,
            )
            floor = next((c for c in candidates if c.floor_of == candidate.name), None)
            if floor is not None:
                row["floor"] = floor.name
                row["ratio_floor"] = paired_ratio(t, timed[floor.name])
                floor_ratio = paired_ratio(timed[floor.name], reference)
                row["floor_ratio_adamw"] = floor_ratio
            peer = fastest_peer.get(candidate.method)
            if candidate.source == "layerwise" and candidate.mode == "amortized" and peer:
                row["fastest_peer"] = peer
                row["ratio_fastest_peer"] = paired_ratio(t, timed[peer])
        result.rows.append(row)
    if profile:
        for candidate in runnable:
            # Muon's float32 step is all application (its profile says nothing new; 12x AdamW).
            muon_fp32 = candidate.method == "muon" and candidate.name.endswith(FP32)
            if (
                candidate.source == "layerwise"
                and not timed[candidate.name].error
                and not muon_fp32
            ):
                result.profiles[candidate.name] = profile_phases(
                    trainers[candidate.name], by_name[candidate.name].block_steps
                )
    return result


def _fastest_peers(
    candidates: list[Candidate], timed: dict[str, Timed], reference: Timed
) -> dict[str, str]:
    fastest: dict[str, tuple[float, str]] = {}
    for candidate in candidates:
        if candidate.source in ("layerwise", "floor", "torch") or candidate.method == "adamw":
            continue
        ratio = paired_ratio(timed[candidate.name], reference)
        if ratio is not None and (
            candidate.method not in fastest or ratio < fastest[candidate.method][0]
        ):
            fastest[candidate.method] = (ratio, candidate.name)
    return {method: name for method, (_, name) in fastest.items()}


def profile_phases(trainer: Trainer, steps: int) -> dict[str, float]:
    """Milliseconds per step in each phase (record_function ranges of the optimizer shell),
    over one block under ``torch.profiler`` (a little slower than the timed blocks)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as profiler:
        start = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        total = time.perf_counter() - start
    averages = {event.key: event.cpu_time_total for event in profiler.key_averages()}
    phases = {"total": 1e3 * total / steps}
    for label, range_name in PHASES.items():
        if range_name in averages:
            phases[label] = averages[range_name] / 1e3 / steps
    optimizer_step = sum(v for k, v in averages.items() if k.startswith("Optimizer.step#"))
    if optimizer_step:
        phases["optimizer_step"] = optimizer_step / 1e3 / steps
        phases["forward_backward_zero_grad"] = phases["total"] - phases["optimizer_step"]
    return phases


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as file:
            cpu = next(line.split(":", 1)[1].strip() for line in file if "model name" in line)
    except (OSError, StopIteration):
        pass
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(1024, 1024, generator=generator)
    b = torch.randn(1024, 1024, generator=generator)
    fp32 = time_calls(lambda: a @ b, 5)
    a16, b16 = a.bfloat16(), b.bfloat16()
    bf16 = time_calls(lambda: a16 @ b16, 5)
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
        "matmul_1024_fp32_gflops": 2 * 1024**3 / fp32 / 1e9,
        "matmul_1024_bf16_gflops": 2 * 1024**3 / bf16 / 1e9,
    }


def check_targets(sections: list[SectionResult]) -> list[dict[str, Any]]:
    checks = []

    def add(what: str, value: float | None, limit: float) -> None:
        checks.append(
            {
                "target": what,
                "value": value,
                "limit": limit,
                "met": None if value is None else value <= limit,
            }
        )

    for section in sections:
        rows = [
            r
            for r in section.rows
            if r["source"] == "layerwise"
            and r["mode"] == "amortized"
            and not r["name"].endswith(FP32)
        ]
        if section.section == "main":
            for row in rows:
                add(
                    f"{row['name']}: ratio to AdamW",
                    row.get("ratio_adamw"),
                    TARGET_MAIN[row["method"]],
                )
                add(f"{row['name']}: ratio to fastest peer", row.get("ratio_fastest_peer"), 1.0)
                add(f"{row['name']}: ratio to its floor", row.get("ratio_floor"), TARGET_FLOOR)
        if section.section == "batch" and section.setting["batch"] == 4096:
            for row in rows:
                add(
                    f"{row['name']}: ratio to AdamW at batch 4096",
                    row.get("ratio_adamw"),
                    TARGET_BATCH_4096[row["method"]],
                )
    return checks


def format_report(report: dict[str, Any]) -> str:
    lines = [f"# optimizer step benchmark ({report['command']})", ""]
    m = report["machine"]
    lines.append(
        f"{m['cpu']}, {m['logical_cpus']} logical CPUs, {m['torch_threads']} torch threads, "
        f"torch {m['torch']}; 1024² matmul {m['matmul_1024_fp32_gflops']:.0f} GFLOP/s fp32, "
        f"{m['matmul_1024_bf16_gflops']:.0f} GFLOP/s bf16; canary: "
        f"{100 * report['canary']['slow_fraction']:.0f}% slow, max/median "
        f"{report['canary']['max_ms'] / report['canary']['median_ms']:.1f}"
    )
    for section in report["sections"]:
        setting = section["setting"]
        lines += [
            "",
            f"## {section['section']}: width {setting['width']}, batch {setting['batch']}",
        ]
        lines.append(
            "| candidate | ms/step (median) | max ms | × AdamW | × floor | × fastest peer | "
            "state MiB | blocks |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for row in section["rows"]:
            if row.get("error") or "median_ms" not in row:
                lines.append(f"| {row['name']} | failed: {row.get('error')} | | | | | | |")
                continue
            lines.append(
                f"| {row['name']} | {row['median_ms']:.1f} | {row['max_ms']:.1f} | "
                f"{_fmt(row.get('ratio_adamw'))} | {_fmt(row.get('ratio_floor'))} | "
                f"{_fmt(row.get('ratio_fastest_peer'))} | {row['state_mib']:.1f} | "
                f"{row['blocks_kept']}/{row['blocks_total']} |"
            )
        for missing in section["unavailable"]:
            lines.append(f"| {missing['name']} | not run: {missing['reason']} | | | | | | |")
        if section["profiles"]:
            lines += [
                "",
                "| ms per step | total | fwd+bwd+zero_grad | optimizer step | statistics | "
                "decompositions | application |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
            for name, p in section["profiles"].items():
                lines.append(
                    f"| {name} | {p['total']:.1f} | {_fmt(p.get('forward_backward_zero_grad'), 1)} "
                    f"| {_fmt(p.get('optimizer_step'), 1)} | {_fmt(p.get('statistics'), 1)} | "
                    f"{_fmt(p.get('decompositions'), 1)} | {_fmt(p.get('application'), 1)} |"
                )
    lines += ["", "## targets", ""]
    for check in report["targets"]:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[check["met"]]
        lines.append(f"- {check['target']}: {_fmt(check['value'])} (≤ {check['limit']}) {verdict}")
    lines.append(f"\nwall time {report['wall_s']:.0f} s")
    return "\n".join(lines)


def _select(candidates: list[Candidate], only: str | None) -> list[Candidate]:
    """AdamW (the reference) and the candidates named by ``--only``."""
    if not only:
        return candidates
    keys = only.split(",")
    return [c for c in candidates if c.method == "adamw" or any(k in c.name for k in keys)]


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds; CI)")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--no-peers", action="store_true", help="skip the peer libraries")
    parser.add_argument("--no-exact", action="store_true", help="skip the exact modes")
    parser.add_argument(
        "--heavyball-compiled",
        action="store_true",
        help="also time heavyball with torch.compile (compilation takes minutes on a CPU)",
    )
    parser.add_argument(
        "--sections", default="main,width,batch", help="comma-separated: main,width,batch"
    )
    parser.add_argument(
        "--only", help="comma-separated substrings: keep candidates whose name has one"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's; --quick: 1)")
    args = parser.parse_args(argv)
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    plan = make_plan(args.quick)
    canary = Canary()
    sections = []
    wanted = set(args.sections.split(","))

    for section, setting in [("main", plan.main), ("width", plan.width)]:
        if section not in wanted:
            continue
        ours, missing = our_candidates(setting, exact=section == "main" and not args.no_exact)
        peers: list[Candidate] = []
        if not args.no_peers:
            peers, missing_peers = peer_candidates(
                setting,
                heavyball_compiled=args.heavyball_compiled,
                scalable_shampoo=section != "main",
            )
            missing += missing_peers
        floors = floor_candidates(setting, ours)
        candidates = _select([adamw_candidate(setting), *ours, *peers, *floors], args.only)
        sections.append(
            run_section(
                section, setting, candidates, missing, plan, canary, profile=section == "main"
            )
        )
        print(f"[{time.perf_counter() - started:.0f}s] {section} done", file=sys.stderr)
    if "batch" in wanted:
        for setting in plan.batches:
            ours, missing = our_candidates(setting, exact=False, fp32_variants=())
            sections.append(
                run_section(
                    "batch",
                    setting,
                    _select([adamw_candidate(setting), *ours], args.only),
                    missing,
                    plan,
                    canary,
                    profile=False,
                )
            )
            print(
                f"[{time.perf_counter() - started:.0f}s] batch {setting.batch} done",
                file=sys.stderr,
            )

    report = {
        "command": "python -m benchmarks.optimizer_step "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "canary": canary.summary(),
        "sections": [asdict(s) for s in sections],
        # The targets are stated for the full sizes; --quick only exercises the code.
        "targets": [] if args.quick else check_targets(sections),
    }
    report["wall_s"] = time.perf_counter() - started
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main()
