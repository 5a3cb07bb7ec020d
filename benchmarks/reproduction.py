"""Wall time of the reproduction, and how close the linear-representation sweeps get to matmuls.

Usage::

    python -m benchmarks.reproduction [--json OUT] [--full] [--experiments A,B] [--no-quick]

1. ``layerwise reproduce --quick`` (a subprocess, as a user runs it), wall time; target < 2 min.
2. With ``--full``: ``layerwise run NAME`` for every registered experiment (or those named),
   one subprocess each, wall time each and in total; target < 30 min on 2 cores.
3. For each ``linrep-*`` experiment, its quick variant run in this process on one thread
   (``--workers 1``, as each worker of a sweep runs), once timed and once under
   ``torch.utils.flop_counter.FlopCounterMode``: achieved GFLOP/s against the one-thread
   float64 matmul GFLOP/s measured in the same run. The counter sees matrix products only
   (not ``eigh``/``svd``/``cholesky``), so the achieved rate is a lower bound.

Every run writes to a fresh temporary folder (finished runs would otherwise be skipped).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.timing import time_calls

TARGET_QUICK_S = 120.0
TARGET_FULL_S = 1800.0


def matmul_gflops(dtype: torch.dtype, threads: int, size: int = 1024) -> float:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=generator, dtype=dtype)
        b = torch.randn(size, size, generator=generator, dtype=dtype)
        return 2 * size**3 / time_calls(lambda: a @ b, 5) / 1e9
    finally:
        torch.set_num_threads(previous)


def layerwise_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "layerwise.cli", *args]


def timed_subprocess(command: list[str], timeout_s: float) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return {"command": _display(command), "seconds": None, "error": f"timeout {timeout_s}s"}
    seconds = time.perf_counter() - start
    error = None if completed.returncode == 0 else completed.stderr[-2000:]
    return {
        "command": _display(command),
        "seconds": seconds,
        "returncode": completed.returncode,
        "error": error,
    }


def _display(command: list[str]) -> str:
    """The command as a user types it, with the scratch output folder elided."""
    words = command[3:]
    if "--out" in words:
        index = words.index("--out")
        words = [*words[: index + 1], "DIR", *words[index + 2 :]]
    return "layerwise " + " ".join(words)


def experiment_names() -> list[str]:
    from layerwise.experiments import registry

    registry.load_all()
    return sorted(registry.experiments())


def linrep_rate(name: str, out_dir: Path) -> dict[str, Any]:
    """GFLOP/s of the quick variant of ``name`` in this process, on one thread."""
    from torch.utils.flop_counter import FlopCounterMode

    from layerwise import cli

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    argv = ["run", name, "--quick", "--workers", "1", "--no-progress", "--out"]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            start = time.perf_counter()
            cli.main([*argv, str(out_dir / "timed")])
            seconds = time.perf_counter() - start
            counter = FlopCounterMode(display=False)
            with counter:
                cli.main([*argv, str(out_dir / "counted")])
    finally:
        torch.set_num_threads(previous)
    flops = counter.get_total_flops()
    return {
        "experiment": name,
        "seconds": seconds,
        "gflop": flops / 1e9,
        "gflops": flops / seconds / 1e9,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--full", action="store_true", help="also time every full experiment")
    parser.add_argument("--experiments", help="comma-separated names for --full (default: all)")
    parser.add_argument("--no-quick", action="store_true", help="skip reproduce --quick")
    parser.add_argument("--no-rates", action="store_true", help="skip the linrep GFLOP/s")
    args = parser.parse_args(argv)

    report: dict[str, Any] = {
        "command": "python -m benchmarks.reproduction " + " ".join(argv or sys.argv[1:]),
        "torch": torch.__version__,
        "logical_cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "matmul_1024_gflops": {
            "float32_all_threads": matmul_gflops(torch.float32, torch.get_num_threads()),
            "float64_all_threads": matmul_gflops(torch.float64, torch.get_num_threads()),
            "float64_one_thread": matmul_gflops(torch.float64, 1),
        },
    }
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        if not args.no_quick:
            quick = timed_subprocess(
                layerwise_command(
                    "reproduce", "--quick", "--no-progress", "--out", str(root / "quick")
                ),
                timeout_s=4 * TARGET_QUICK_S,
            )
            quick["target_s"] = TARGET_QUICK_S
            report["reproduce_quick"] = quick
            print(f"reproduce --quick: {quick['seconds']} s", file=sys.stderr)
        names = experiment_names()
        if args.full:
            wanted = args.experiments.split(",") if args.experiments else names
            runs = []
            for name in wanted:
                run = timed_subprocess(
                    layerwise_command("run", name, "--no-progress", "--out", str(root / "full")),
                    timeout_s=TARGET_FULL_S,
                )
                run["experiment"] = name
                runs.append(run)
                print(f"{name}: {run['seconds']} s", file=sys.stderr)
            total = sum(r["seconds"] or 0.0 for r in runs)
            report["full"] = {"runs": runs, "total_s": total, "target_s": TARGET_FULL_S}
        if not args.no_rates:
            rates = []
            for name in names:
                if name.startswith("linrep"):
                    try:
                        rates.append(linrep_rate(name, root / "rates" / name))
                    except Exception as error:  # report and go on: one broken config
                        rates.append({"experiment": name, "error": repr(error)})
            report["linrep_rates"] = rates
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return report


def format_report(report: dict[str, Any]) -> str:
    rates = report["matmul_1024_gflops"]
    lines = [
        f"matmul 1024²: {rates['float32_all_threads']:.0f} GFLOP/s fp32, "
        f"{rates['float64_all_threads']:.0f} GFLOP/s fp64 ({report['logical_cpus']} CPUs), "
        f"{rates['float64_one_thread']:.0f} GFLOP/s fp64 on one thread",
    ]
    if "reproduce_quick" in report:
        quick = report["reproduce_quick"]
        lines.append(f"layerwise reproduce --quick: {_seconds(quick)} (target < 120 s)")
    if "full" in report:
        for run in report["full"]["runs"]:
            lines.append(f"layerwise run {run['experiment']}: {_seconds(run)}")
        lines.append(f"full reproduction: {report['full']['total_s']:.0f} s (target < 1800 s)")
    for rate in report.get("linrep_rates", []):
        if "error" in rate:
            lines.append(f"{rate['experiment']} (quick, one thread): failed {rate['error']}")
        else:
            share = rate["gflops"] / rates["float64_one_thread"]
            lines.append(
                f"{rate['experiment']} (quick, one thread): {rate['gflop']:.2f} GFLOP of products "
                f"in {rate['seconds']:.1f} s = {rate['gflops']:.2f} GFLOP/s, "
                f"{100 * share:.1f}% of fp64 matmul"
            )
    return "\n".join(lines)


def _seconds(run: dict[str, Any]) -> str:
    if run.get("error"):
        return f"failed ({str(run['error']).strip().splitlines()[-1][:200]})"
    return f"{run['seconds']:.0f} s"


if __name__ == "__main__":
    main()
