"""Claim C16, decided from the stored table of ``deep-linrep-kappa``.

C16 asks, at each depth L of the student ``F G_L ⋯ G_1``: does layer-wise Gauss–Newton (kfac)
stay κ(Σx)-free while SGD slows down? The thresholds are linrep's C1 and C2 (fixed before any
result was seen), with the depth-specific stability range of :mod:`.theory`:

- ``C16-kfac L=…``: every kfac or library_kfac label at a fixed step size η < min(1, 2/(L + 1))
  has |slope| ≤ ``SLOPE_FLAT`` against κ(Σx) (η = 1 is a one-step solve and tuned step sizes
  choose it, so neither is evidence; η ≥ 2/(L + 1) is outside the range where the theory
  predicts convergence, reported but not deciding);
- ``C16-sgd L=…``: the sgd label's slope against κ(Σx) over κ(Σx) ≥ ``KAPPA_X_MIN`` is at least
  ``SLOPE_LINEAR``.

A slope is the least-squares slope of log(median over seeds of iterations to ε) against log κ(Σx)
at the smallest κF of the table; censored or diverged seeds count as the budget and are counted
in the evidence. Each depth's parts are decided where the table allows
(:func:`~layerwise.experiments.registry.combine_parts`).
"""

from __future__ import annotations

import math

import pandas as pd

from layerwise.experiments.registry import Claim, Verdict, combine_parts
from layerwise.problems.deep_linrep.theory import largest_stable_step
from layerwise.problems.linrep.claims import KAPPA_X_MIN, SLOPE_FLAT, SLOPE_LINEAR, loglog_slope

#: Algorithms whose step is the layer-wise Gauss–Newton step (ours and the library's).
GAUSS_NEWTON = ("kfac", "library_kfac")


def _undecided(reason: str) -> Verdict:
    return Verdict(holds=None, evidence={}, summary=reason)


def kappa_x_slope(rows: pd.DataFrame, minimum: float = 0.0) -> tuple[float, dict]:
    """Slope of the median iterations to ε against κ(Σx) >= ``minimum`` (κF smallest), and the
    evidence: medians, censored and diverged seeds per κ(Σx). NaN without two κ(Σx) values."""
    rows = rows[(rows["kappa_f"] == rows["kappa_f"].min()) & (rows["kappa_x"] >= minimum)]
    by_kappa = rows.groupby("kappa_x")
    medians = by_kappa["iterations_to_eps"].median().sort_index()
    evidence = {
        "median_iterations": {f"{k:g}": float(v) for k, v in medians.items()},
        "censored_seeds": {f"{k:g}": int(v) for k, v in by_kappa["censored"].sum().items()},
        "diverged_seeds": {f"{k:g}": int(v) for k, v in by_kappa["diverged"].sum().items()},
    }
    return loglog_slope(medians.index, medians.values), evidence


def _kfac_part(rows: pd.DataFrame, depth: int) -> Verdict:
    bound = min(1.0, largest_stable_step(depth))
    fixed = rows[rows["algorithm"].isin(GAUSS_NEWTON) & ~rows["lr_tuned"]]
    if fixed.empty:
        return _undecided(f"no kfac or library_kfac rows at a fixed step size at L={depth}")
    evidence, holds, outside = {}, True, []
    for label, group in fixed.groupby("method"):
        lr = float(group["lr"].iloc[0])
        if lr >= bound:
            outside.append(f"{label} (η={lr:g} >= {bound:.3g})")
            continue
        slope, points = kappa_x_slope(group)
        if math.isnan(slope):
            continue
        evidence[f"{label} (η={lr:g})"] = {"slope": slope, **points}
        holds &= abs(slope) <= SLOPE_FLAT
    if outside:
        evidence["outside_stable_range"] = outside
    decided = {k: v for k, v in evidence.items() if isinstance(v, dict)}
    if not decided:
        return _undecided(
            f"no fixed-step kfac label with η < {bound:.3g} and two κ(Σx) values at L={depth}"
        )
    slopes = ", ".join(f"{k} {v['slope']:.3f}" for k, v in decided.items())
    return Verdict(
        holds=bool(holds),
        evidence=evidence,
        summary=f"slopes vs κ(Σx): {slopes} (|slope| <= {SLOPE_FLAT})",
    )


def _sgd_part(rows: pd.DataFrame, depth: int) -> Verdict:
    sgd = rows[rows["algorithm"] == "sgd"]
    if sgd.empty:
        return _undecided(f"no sgd rows at L={depth}")
    evidence, holds = {}, True
    for label, group in sgd.groupby("method"):
        slope, points = kappa_x_slope(group, KAPPA_X_MIN)
        if math.isnan(slope):
            continue
        lrs = group.groupby("kappa_x")["lr"].first()
        evidence[label] = {"slope": slope, **points, "lr": {f"{k:g}": v for k, v in lrs.items()}}
        holds &= slope >= SLOPE_LINEAR
    if not evidence:
        return _undecided(f"fewer than two κ(Σx) >= {KAPPA_X_MIN:g} for sgd at L={depth}")
    slopes = ", ".join(f"{k} {v['slope']:.2f}" for k, v in evidence.items())
    return Verdict(
        holds=bool(holds),
        evidence=evidence,
        summary=f"slope vs κ(Σx) >= {KAPPA_X_MIN:g}: {slopes} (>= {SLOPE_LINEAR})",
    )


def decide_c16(table: pd.DataFrame) -> Verdict:
    if "depth" not in table.columns or table.empty:
        return _undecided("no deep_linrep rows (no depth column)")
    parts = {}
    for depth, rows in table.groupby("depth"):
        parts[f"C16-kfac L={int(depth)}"] = _kfac_part(rows, int(depth))
        parts[f"C16-sgd L={int(depth)}"] = _sgd_part(rows, int(depth))
    return combine_parts(parts)


C16 = Claim(
    id="C16",
    statement="Deep linear representation learning, y = F G_L⋯G_1 x with L = 2, 3, 4: does "
    "layer-wise KFAC on every layer stay κ(Σx)-free while SGD slows down with κ(Σx)?",
    decide=decide_c16,
    rule=f"Two parts per depth L, each decided where the table allows (holds when every decided "
    f"part holds): C16-kfac, every kfac and library_kfac label at a fixed step size "
    f"η < min(1, 2/(L+1)) has |slope| ≤ {SLOPE_FLAT} against κ(Σx) (C1's threshold; η = 1 is a "
    f"one-step solve and 2/(L+1) the theory's stability bound); C16-sgd, the sgd slope against "
    f"κ(Σx) over κ(Σx) ≥ {KAPPA_X_MIN:g} is ≥ {SLOPE_LINEAR} (C2's threshold); slope = "
    f"least-squares slope of log(median over seeds of iterations to ε) against log κ(Σx), a "
    f"censored or diverged seed counting as the budget.",
    figure="kappa",
)
