"""Claim C16, decided from the stored table of ``deep-linrep-kappa``.

C16 asks, at each depth L of the student ``F G_L ⋯ G_1``: does layer-wise Gauss–Newton (kfac)
stay κ-free while SGD slows down? The thresholds are linrep's C1 and C2 (fixed before any
result was seen), with the depth-specific stability range of :mod:`.theory`:

- ``C16-kfac L=…``: every kfac or library_kfac label at a fixed step size η < min(1, 2/(L + 1))
  has |slope| ≤ ``SLOPE_FLAT`` against κ(Σx) (κF smallest) and against κF (κ(Σx) smallest)
  (η = 1 is a one-step solve and tuned step sizes choose it, so neither is evidence;
  η ≥ 2/(L + 1) is outside the range where the theory predicts convergence, reported but not
  deciding);
- ``C16-sgd-κx L=…``: the sgd label's slope against κ(Σx) over κ(Σx) ≥ ``KAPPA_X_MIN`` is at
  least ``SLOPE_LINEAR``; ``C16-sgd-κF L=…``: against κF at least ``SLOPE_KAPPA_F``.

A slope is the least-squares slope of log(median over seeds of iterations to ε) against log κ;
censored or diverged seeds count as the budget and are counted in the evidence. Each depth's
parts are decided where the table allows (:func:`~layerwise.experiments.registry.combine_parts`).
"""

from __future__ import annotations

import math

import pandas as pd

from layerwise.experiments.registry import Claim, Verdict, combine_parts
from layerwise.problems.deep_linrep.theory import largest_stable_step
from layerwise.problems.linrep.claims import (
    KAPPA_X_MIN,
    SLOPE_FLAT,
    SLOPE_KAPPA_F,
    SLOPE_LINEAR,
    loglog_slope,
)

#: Algorithms whose step is the layer-wise Gauss–Newton step (ours and the library's).
GAUSS_NEWTON = ("kfac", "library_kfac")


def _undecided(reason: str) -> Verdict:
    return Verdict(holds=None, evidence={}, summary=reason)


#: The two sweeps: (varying, fixed at its smallest value, display name).
SWEEPS = (("kappa_x", "kappa_f", "κ(Σx)"), ("kappa_f", "kappa_x", "κF"))


def kappa_slope(
    rows: pd.DataFrame, varying: str = "kappa_x", minimum: float = 0.0
) -> tuple[float, dict]:
    """Slope of the median iterations to ε against ``varying`` (``kappa_x`` or ``kappa_f``)
    >= ``minimum``, the other condition number at its smallest value; evidence: medians,
    censored and diverged seeds per value. NaN without two values."""
    fixed = "kappa_f" if varying == "kappa_x" else "kappa_x"
    rows = rows[(rows[fixed] == rows[fixed].min()) & (rows[varying] >= minimum)]
    by_kappa = rows.groupby(varying)
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
        for varying, _, name in SWEEPS:
            slope, points = kappa_slope(group, varying)
            if math.isnan(slope):
                continue
            evidence[f"{label} (η={lr:g}) vs {name}"] = {"slope": slope, **points}
            holds &= abs(slope) <= SLOPE_FLAT
    if outside:
        evidence["outside_stable_range"] = outside
    decided = {k: v for k, v in evidence.items() if isinstance(v, dict)}
    if not decided:
        return _undecided(
            f"no fixed-step kfac label with η < {bound:.3g} and a κ sweep at L={depth}"
        )
    slopes = ", ".join(f"{k} {v['slope']:.3f}" for k, v in decided.items())
    return Verdict(
        holds=bool(holds), evidence=evidence, summary=f"slopes {slopes} (|slope| <= {SLOPE_FLAT})"
    )


def _sgd_part(rows: pd.DataFrame, depth: int, varying: str) -> Verdict:
    """sgd's slope against ``varying``: over κ(Σx) >= KAPPA_X_MIN (>= SLOPE_LINEAR), or over
    every κF (>= SLOPE_KAPPA_F), as C2's parts."""
    minimum, threshold, name = (
        (KAPPA_X_MIN, SLOPE_LINEAR, "κ(Σx)") if varying == "kappa_x" else (0.0, SLOPE_KAPPA_F, "κF")
    )
    sgd = rows[rows["algorithm"] == "sgd"]
    if sgd.empty:
        return _undecided(f"no sgd rows at L={depth}")
    evidence, holds = {}, True
    for label, group in sgd.groupby("method"):
        slope, points = kappa_slope(group, varying, minimum)
        if math.isnan(slope):
            continue
        lrs = group.groupby(varying)["lr"].first()
        evidence[label] = {"slope": slope, **points, "lr": {f"{k:g}": v for k, v in lrs.items()}}
        holds &= slope >= threshold
    above = f" >= {minimum:g}" if minimum else ""
    if not evidence:
        return _undecided(f"fewer than two {name}{above} for sgd at L={depth}")
    slopes = ", ".join(f"{k} {v['slope']:.2f}" for k, v in evidence.items())
    return Verdict(
        holds=bool(holds),
        evidence=evidence,
        summary=f"slope vs {name}{above}: {slopes} (>= {threshold})",
    )


def decide_c16(table: pd.DataFrame) -> Verdict:
    if "depth" not in table.columns or table.empty:
        return _undecided("no deep_linrep rows (no depth column)")
    parts = {}
    for depth, rows in table.groupby("depth"):
        parts[f"C16-kfac L={int(depth)}"] = _kfac_part(rows, int(depth))
        parts[f"C16-sgd-κx L={int(depth)}"] = _sgd_part(rows, int(depth), "kappa_x")
        parts[f"C16-sgd-κF L={int(depth)}"] = _sgd_part(rows, int(depth), "kappa_f")
    return combine_parts(parts)


C16 = Claim(
    id="C16",
    statement="Deep linear representation learning, y = F G_L⋯G_1 x with L = 2, 3, 4: does "
    "layer-wise KFAC on every layer stay κ-free while SGD slows down with κ(Σx) and κF?",
    decide=decide_c16,
    rule=f"Three parts per depth L, each decided where the table allows (holds when every "
    f"decided part holds): C16-kfac, every kfac and library_kfac label at a fixed step size "
    f"η < min(1, 2/(L+1)) has |slope| ≤ {SLOPE_FLAT} against κ(Σx) (κF smallest) and against "
    f"κF (κ(Σx) smallest) (C1's threshold; η = 1 is a one-step solve and 2/(L+1) the theory's "
    f"stability bound); C16-sgd-κx, the sgd slope against κ(Σx) over κ(Σx) ≥ {KAPPA_X_MIN:g} "
    f"is ≥ {SLOPE_LINEAR}; C16-sgd-κF, against κF ≥ {SLOPE_KAPPA_F} (C2's thresholds); slope = "
    f"least-squares slope of log(median over seeds of iterations to ε) against log κ, a "
    f"censored or diverged seed counting as the budget.",
    figure="kappa",
)
