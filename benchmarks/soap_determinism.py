"""How far round-off moves training: SOAP's eigenbases (issue 12) against the peers' and ours.

Usage::

    python -m benchmarks.soap_determinism [--quick] [--json OUT] [--rounds R] [--no-peers]
        [--sections sensitivity,refresh] [--threads N]

The tanh MLP 10 -> 16 -> 16 -> 3 (cross-entropy, float64, batch 32, lr 1e-2) is trained 12
steps from one initialization on one data stream, three ways per candidate:

- ``perturbed``: every gradient entry multiplied by ``1 + 2^-50 ξ`` (ξ standard normal, a few
  ulps: what summing a batch in another order does). Reported: ``relative_change``,
  ``‖θ_perturbed − θ‖ / ‖θ − θ_0‖`` after the steps (the fraction of the distance travelled
  that round-off decides), and ``relative_to_params``, ``‖θ_perturbed − θ‖ / ‖θ‖``;
- ``split``: each batch's gradient as 2-rank DDP forms it, the mean of the two half batches'
  mean-loss gradients (``g_1 / 2 + g_2 / 2``: DDP divides by the world size, then sums):
  ``split_gap``, the largest parameter difference from the whole-batch run over the steps.

Candidates: our SOAP (defaults: ``refresh_every=10``, ``eps=1e-8``; ``eps=1e-4``; exact
mode; ``basis_refresh="power_qr"``), our SOAP with the bases as plain ``eigh`` and LAPACK's
QR leave them (``round-off bases``: the refresh before issue 12, swapped in for its rows
only), pytorch-optimizer's and heavyball's SOAP (eager) at the same settings, our Shampoo
(``damping=1e-6``) and Muon, and torch AdamW.

``refresh`` section: the cost of :func:`~layerwise.optim.matrix.stable_eigenbasis` against
``eigh`` alone (:func:`~layerwise.optim.matrix.symmetric_eigenbasis`) on float32 statistics
of a 1024-wide layer, full rank and of rank 256 (batch 256, SOAP's first refresh), and
float64 at 256 of rank 64; the two alternate within each round, the ratio is the median over
rounds of the per-round ratio. Nothing here asserts anything.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from layerwise.optim import SOAP, Muon, Shampoo, matrix

PERTURBATION = 2.0**-50
WIDTHS = (10, 16, 16, 3)
STEPS, BATCH, LR = 12, 32, 1e-2

Factory = Callable[[nn.Module], torch.optim.Optimizer]


def make_model() -> nn.Sequential:
    generator = torch.Generator().manual_seed(0)
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(WIDTHS)):
        linear = nn.Linear(fan_in, fan_out).double()
        with torch.no_grad():
            linear.weight.copy_(
                torch.randn(linear.weight.shape, generator=generator, dtype=torch.float64)
                / fan_in**0.5
            )
            linear.bias.zero_()
        layers.append(linear)
        if index < len(WIDTHS) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def make_batches(steps: int) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(BATCH, WIDTHS[0], generator=generator, dtype=torch.float64),
            torch.randint(0, WIDTHS[-1], (BATCH,), generator=generator),
        )
        for _ in range(steps)
    ]


def _gradients(model: nn.Module, x: Tensor, y: Tensor, how: str, noise: torch.Generator) -> None:
    model.zero_grad()
    if how == "split":
        half = x.shape[0] // 2
        parts = []
        for rows in (slice(0, half), slice(half, None)):
            model.zero_grad()
            F.cross_entropy(model(x[rows]), y[rows]).backward()
            parts.append([p.grad.clone() for p in model.parameters()])
        for p, first, second in zip(model.parameters(), *parts, strict=True):
            p.grad = first / 2 + second / 2
        return
    F.cross_entropy(model(x), y).backward()
    if how == "perturbed":
        for p in model.parameters():
            p.grad.mul_(1 + PERTURBATION * torch.randn(p.shape, generator=noise, dtype=p.dtype))


def train(factory: Factory, how: str, steps: int) -> list[Tensor]:
    """The flattened parameters after every step (the first entry: the initial ones)."""
    model = make_model()
    optimizer = factory(model)
    noise = torch.Generator().manual_seed(2)
    history = [torch.cat([p.detach().flatten() for p in model.parameters()])]
    for x, y in make_batches(steps):
        _gradients(model, x, y, how, noise)
        optimizer.step()
        history.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    return history


@contextlib.contextmanager
def round_off_bases() -> Iterator[None]:
    """The eigenbasis refreshes as they were before issue 12: plain ``eigh`` bases and the
    power step's QR and sort as LAPACK and ``argsort`` leave them."""

    def power_qr(statistic: Tensor, previous: Tensor, **_: object) -> tuple[Tensor, Tensor]:
        power = statistic @ previous
        order = torch.argsort((previous * power).sum(dim=0), descending=True)
        return torch.linalg.qr(power[:, order])[0], order

    saved = matrix.stable_eigenbasis, matrix.power_qr_basis
    matrix.stable_eigenbasis = lambda a, reference=None, **options: matrix.symmetric_eigenbasis(
        a, **options
    )
    matrix.power_qr_basis = power_qr
    try:
        yield
    finally:
        matrix.stable_eigenbasis, matrix.power_qr_basis = saved


def candidates(
    *, peers: bool = True
) -> tuple[list[tuple[str, str, Factory, bool]], list[dict[str, str]]]:
    """(name, settings, factory, with round-off bases) and the peers that could not run."""
    ours: list[tuple[str, str, Factory, bool]] = [
        (
            "SOAP",
            "defaults (refresh_every 10, eps 1e-8)",
            lambda m: SOAP(m.parameters(), lr=LR),
            False,
        ),
        (
            "SOAP eps 1e-4",
            "refresh_every 10, eps 1e-4",
            lambda m: SOAP(m.parameters(), lr=LR, eps=1e-4),
            False,
        ),
        ("SOAP exact", "exact=True", lambda m: SOAP(m.parameters(), lr=LR, exact=True), False),
        (
            "SOAP power_qr",
            "basis_refresh power_qr, refresh_every 10",
            lambda m: SOAP(m.parameters(), lr=LR, basis_refresh="power_qr"),
            False,
        ),
        ("SOAP, round-off bases", "defaults", lambda m: SOAP(m.parameters(), lr=LR), True),
        (
            "SOAP eps 1e-4, round-off bases",
            "eps 1e-4",
            lambda m: SOAP(m.parameters(), lr=LR, eps=1e-4),
            True,
        ),
        (
            "SOAP power_qr, round-off bases",
            "basis_refresh power_qr",
            lambda m: SOAP(m.parameters(), lr=LR, basis_refresh="power_qr"),
            True,
        ),
        (
            "Shampoo",
            "damping 1e-6",
            lambda m: Shampoo(m.parameters(), lr=LR, damping=1e-6),
            False,
        ),
        ("Muon", "defaults", lambda m: Muon(m.parameters(), lr=2 * LR), False),
        ("torch AdamW", "lr 1e-2", lambda m: torch.optim.AdamW(m.parameters(), lr=LR), False),
    ]
    missing: list[dict[str, str]] = []
    if not peers:
        return ours, missing
    try:
        import pytorch_optimizer

        version = importlib.metadata.version("pytorch-optimizer")
        ours.append(
            (
                f"pytorch-optimizer {version} SOAP",
                "precondition_frequency 10, shampoo_beta 0.95, eps 1e-8",
                lambda m: pytorch_optimizer.SOAP(
                    m.parameters(), lr=LR, precondition_frequency=10, shampoo_beta=0.95
                ),
                False,
            )
        )
    except Exception as error:  # a peer that is missing or broken is reported, never fatal
        missing.append({"name": "pytorch-optimizer SOAP", "error": repr(error)})
    try:
        import heavyball

        version = importlib.metadata.version("heavyball")
        utils = heavyball.utils
        utils.compile_mode = utils.compile_mode_recommended_to_none = None  # eager
        ours.append(
            (
                f"heavyball {version} SOAP",
                "eager, precondition_frequency 10, no schedule, shampoo_beta 0.95",
                lambda m: heavyball.SOAP(
                    m.parameters(),
                    lr=LR,
                    betas=(0.95, 0.95),
                    shampoo_beta=0.95,
                    precondition_frequency=10,
                    use_precond_schedule=False,
                ),
                False,
            )
        )
    except Exception as error:
        missing.append({"name": "heavyball SOAP", "error": repr(error)})
    return ours, missing


def sensitivity(
    steps: int, *, peers: bool = True
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    found, missing = candidates(peers=peers)
    rows = []
    for name, settings, factory, old in found:
        context = round_off_bases() if old else contextlib.nullcontext()
        try:
            with context:
                runs = {how: train(factory, how, steps) for how in ("plain", "perturbed", "split")}
        except Exception as error:
            missing.append({"name": name, "error": repr(error)})
            continue
        plain, perturbed, split = runs["plain"], runs["perturbed"], runs["split"]
        moved = float((plain[-1] - plain[0]).norm())
        change = float((perturbed[-1] - plain[-1]).norm())
        rows.append(
            {
                "name": name,
                "settings": settings,
                "relative_change": change / moved,
                "relative_to_params": change / float(plain[-1].norm()),
                "split_gap": max(
                    float((a - b).abs().max()) for a, b in zip(split, plain, strict=True)
                ),
                "finite": bool(torch.isfinite(plain[-1]).all()),
            }
        )
    return rows, missing


def _statistic(n: int, rank: int, dtype: torch.dtype, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, rank, generator=generator, dtype=dtype)
    return rows @ rows.T / rank


def refresh_cost(rounds: int, quick: bool) -> list[dict[str, Any]]:
    sizes = (
        [(64, 16, torch.float32)]
        if quick
        else [
            (1024, 1024, torch.float32),
            (1024, 256, torch.float32),
            (256, 64, torch.float64),
        ]
    )
    rows = []
    for n, rank, dtype in sizes:
        statistic = _statistic(n, rank, dtype, seed=n + rank)
        # The previous basis: an eigenbasis of a nearby statistic, as between two refreshes.
        previous = matrix.stable_eigenbasis(statistic + _statistic(n, n, dtype, seed=3) * 1e-3)
        plain_s, stable_s, ratios = [], [], []
        for _ in range(rounds):
            start = time.perf_counter()
            matrix.symmetric_eigenbasis(statistic)
            middle = time.perf_counter()
            matrix.stable_eigenbasis(statistic, previous)
            end = time.perf_counter()
            plain_s.append(middle - start)
            stable_s.append(end - middle)
            ratios.append((end - middle) / (middle - start))
        rows.append(
            {
                "n": n,
                "rank": rank,
                "dtype": str(dtype).removeprefix("torch."),
                "eigh_ms": 1e3 * statistics.median(plain_s),
                "stable_ms": 1e3 * statistics.median(stable_s),
                "stable_over_eigh": statistics.median(ratios),
            }
        )
    return rows


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"SOAP determinism: MLP {' -> '.join(map(str, WIDTHS))} (tanh, float64), "
        f"{report['setting']['steps']} steps, batch {BATCH}, gradients x (1 + 2^-50 ξ)",
        "",
        "| candidate | settings | Δθ / distance travelled | Δθ / ‖θ‖ | half-batch gap |",
        "|---|---|---:|---:|---:|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['name']} | {row['settings']} | {row['relative_change']:.1e} | "
            f"{row['relative_to_params']:.1e} | {row['split_gap']:.1e} |"
        )
    for peer in report["missing"]:
        lines.append(f"| {peer['name']} | not run: {peer['error']} | | | |")
    lines += [
        "",
        "| statistic | eigh (ms) | stable_eigenbasis (ms) | ratio |",
        "|---|---:|---:|---:|",
    ]
    for row in report["refresh"]:
        lines.append(
            f"| {row['n']}², rank {row['rank']}, {row['dtype']} | {row['eigh_ms']:.1f} | "
            f"{row['stable_ms']:.1f} | {row['stable_over_eigh']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 steps, tiny refresh sizes")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--rounds", type=int, help="timed rounds of the refresh (default 7)")
    parser.add_argument("--no-peers", action="store_true", help="leave the peer libraries out")
    parser.add_argument("--sections", default="sensitivity,refresh", help="comma-separated")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    steps = 3 if args.quick else STEPS
    rounds = args.rounds or (2 if args.quick else 7)
    sections = set(args.sections.split(","))
    if unknown := sections - {"sensitivity", "refresh"}:
        parser.error(f"unknown sections {sorted(unknown)} (sensitivity, refresh)")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, missing = (
        sensitivity(steps, peers=not args.no_peers) if "sensitivity" in sections else ([], [])
    )
    report = {
        "setting": {
            "widths": list(WIDTHS),
            "steps": steps,
            "batch": BATCH,
            "lr": LR,
            "perturbation": PERTURBATION,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "rows": rows,
        "missing": missing,
        "refresh": refresh_cost(rounds, args.quick) if "refresh" in sections else [],
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
