"""Interleaved timing on a noisy, shared CPU.

Candidates (optimizers, or bare-torch floors) run round by round in *blocks* of one refresh
period, so that every block contains the same amortized work (one preconditioner refresh) and
drift of the machine hits all candidates alike. Between any two blocks a small fixed matmul (the
*canary*) is timed; a canary much slower than the run's median canary means a core was taken
away at that moment, and the blocks on either side of it are discarded. Reported times are
medians over the kept blocks of the amortized per-step time (block time / steps).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

#: A canary slower than this multiple of the run's median canary marks a disturbed moment.
SLOW_CANARY_FACTOR = 1.5

#: Side of the canary matmul and how many products one canary times (about 1 ms in all).
CANARY_SIZE = 256
CANARY_REPEATS = 4


class Canary:
    """A small fixed fp32 matmul whose time tracks how much of the CPU this process has."""

    def __init__(self, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.a = torch.randn(CANARY_SIZE, CANARY_SIZE, generator=generator)
        self.b = torch.randn(CANARY_SIZE, CANARY_SIZE, generator=generator)
        self.out = torch.empty(CANARY_SIZE, CANARY_SIZE)
        self.times: list[float] = []

    def __call__(self) -> int:
        """Time one canary; returns its index."""
        start = time.perf_counter()
        for _ in range(CANARY_REPEATS):
            torch.mm(self.a, self.b, out=self.out)
        self.times.append(time.perf_counter() - start)
        return len(self.times) - 1

    def slow(self) -> list[bool]:
        reference = statistics.median(self.times)
        return [t > SLOW_CANARY_FACTOR * reference for t in self.times]

    def summary(self) -> dict[str, float]:
        flags = self.slow()
        return {
            "median_ms": 1e3 * statistics.median(self.times),
            "max_ms": 1e3 * max(self.times),
            "count": len(self.times),
            "slow_fraction": sum(flags) / len(flags),
        }


@dataclass
class Block:
    round: int
    canary_before: int
    step_times: list[float]
    canary_after: int = -1

    @property
    def per_step(self) -> float:
        return sum(self.step_times) / len(self.step_times)


@dataclass
class Timed:
    """The blocks of one candidate and what was kept of them."""

    name: str
    blocks: list[Block] = field(default_factory=list)
    kept: list[Block] = field(default_factory=list)
    error: str | None = None

    @property
    def median_step(self) -> float:
        return statistics.median(b.per_step for b in self.kept)

    @property
    def max_step(self) -> float:
        return max(max(b.step_times) for b in self.kept)

    def by_round(self) -> dict[int, float]:
        return {b.round: b.per_step for b in self.kept}


def paired_ratio(numerator: Timed, denominator: Timed) -> float | None:
    """Median over rounds of the per-round ratio of amortized step times (both blocks kept);
    the ratio of medians when no round has both."""
    if numerator.error or denominator.error or not numerator.kept or not denominator.kept:
        return None
    mine, theirs = numerator.by_round(), denominator.by_round()
    common = sorted(set(mine) & set(theirs))
    if common:
        return statistics.median(mine[r] / theirs[r] for r in common)
    return numerator.median_step / denominator.median_step


def interleave(
    runners: dict[str, Callable[[], None]],
    block_steps: dict[str, int],
    *,
    rounds: int,
    min_rounds: int,
    budget_s: float,
    canary: Canary,
    warmup_steps: int = 2,
) -> dict[str, Timed]:
    """Run every candidate for ``rounds`` rounds of one block each (fewer, but at least
    ``min_rounds``, once ``budget_s`` is spent), a canary between any two blocks.

    ``runners[name]()`` performs one training step. A candidate that raises is reported with
    its error and dropped from later rounds. First each candidate takes ``warmup_steps``
    untimed steps (lazy state, allocator, first refresh); any ``k`` consecutive steps then hold
    exactly one refresh of period ``k``, so the blocks need no further alignment.
    """
    results = {name: Timed(name) for name in runners}
    names = list(runners)
    for name in names:
        try:
            for _ in range(min(warmup_steps, block_steps[name])):
                runners[name]()
        except Exception as error:  # a peer library failing is a result, not a crash
            results[name].error = f"{type(error).__name__}: {error}"
    start = time.perf_counter()
    for round_index in range(1, rounds + 1):
        # Rotate the order so that no candidate always follows the same neighbour.
        offset = round_index % len(names)
        for name in names[offset:] + names[:offset]:
            timed = results[name]
            if timed.error:
                continue
            before = canary()
            step_times = []
            try:
                for _ in range(block_steps[name]):
                    step_start = time.perf_counter()
                    runners[name]()
                    step_times.append(time.perf_counter() - step_start)
            except Exception as error:
                timed.error = f"{type(error).__name__}: {error}"
                continue
            timed.blocks.append(Block(round_index, before, step_times))
        if round_index >= min_rounds and time.perf_counter() - start > budget_s:
            break
    canary()
    _discard_disturbed(results.values(), canary)
    return results


def _discard_disturbed(results: Iterable[Timed], canary: Canary) -> None:
    """Keep the blocks whose neighbouring canaries are both normal (all, if none is)."""
    slow = canary.slow()
    for timed in results:
        for block in timed.blocks:
            block.canary_after = block.canary_before + 1
        timed.kept = [
            b
            for b in timed.blocks
            if not slow[b.canary_before] and not slow[min(b.canary_after, len(slow) - 1)]
        ]
        if not timed.kept:
            timed.kept = list(timed.blocks)


def time_calls(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls (after one untimed call)."""
    function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)
