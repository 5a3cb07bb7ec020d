"""Claims C1–C8 of SPEC §5, decided from the stored tables of the linrep experiments.

Thresholds are fixed here, before looking at results, and stated in each claim's evidence:

- a *slope* is the least-squares slope of log(median over seeds) against log(x); iterations-to-eps
  of a censored (or diverged) seed count as the budget, so a slope over censored points is a lower
  bound and the evidence says how many points were censored;
- C1 "does not depend on κ": |slope| ≤ 0.1 for kfac at each fixed η < 1;
- C2 "slows about linearly or worse": slope ≥ 0.7 against κx over κx ≥ 10, and ≥ 0.5 against κF;
- C5/C6 "still slows with κ": slope ≥ 0.3 over κ ≥ 10 on rotated Σx; C5 "helps more on
  axis-aligned Σx": the axis-aligned slope is at least 0.2 below the rotated one;
- C8 "shrinks like (n_eff − d)^(−½)": slopes against n_eff − d in [−0.7, −0.3].
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from layerwise.experiments.registry import Claim, Verdict

SLOPE_FLAT = 0.1
SLOPE_LINEAR = 0.7
SLOPE_KAPPA_F = 0.5
SLOPE_STILL_SLOWS = 0.3
SLOPE_AXIS_GAIN = 0.2
FLOOR_SLOPE_RANGE = (-0.7, -0.3)


def loglog_slope(x, y) -> float:
    """Least-squares slope of log y against log x (NaN with fewer than two distinct x)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if len(np.unique(x[keep])) < 2:
        return math.nan
    return float(np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)[0])


def _undecided(reason: str) -> Verdict:
    return Verdict(holds=None, evidence={}, summary=reason)


def _medians(rows: pd.DataFrame, by: str, value: str = "iterations_to_eps") -> pd.Series:
    return rows.groupby(by)[value].median().sort_index()


def _sweep(table: pd.DataFrame, varying: str, fixed: str) -> pd.DataFrame:
    """Rows where ``fixed`` is at its smallest value and ``varying`` takes several values."""
    rows = table[table[fixed] == table[fixed].min()]
    return rows if rows[varying].nunique() >= 2 else rows.iloc[0:0]


def _slope_of(rows: pd.DataFrame, by: str, minimum: float = 0.0) -> tuple[float, dict]:
    """Slope of median iterations vs ``by``; evidence: the medians, censored seeds, step sizes."""
    rows = rows[rows[by] >= minimum]
    medians = _medians(rows, by)
    censored = rows.groupby(by)["censored"].sum()
    step_sizes = rows.groupby(by)["lr"].first()
    evidence = {
        "points": {f"{k:g}": float(v) for k, v in medians.items()},
        "censored_seeds": {f"{k:g}": int(v) for k, v in censored.items()},
        "lr": {f"{k:g}": float(v) for k, v in step_sizes.items()},
    }
    return loglog_slope(medians.index, medians.values), evidence


def decide_c1(table: pd.DataFrame) -> Verdict:
    rows = table[(table["algorithm"] == "kfac") & ~table["lr_tuned"] & (table["lr"] < 1.0)]
    if rows.empty:
        return _undecided("no kfac rows at a fixed step size < 1")
    evidence, holds = {}, True
    for (label, lr), group in rows.groupby(["method", "lr"]):
        for varying, fixed in (("kappa_x", "kappa_f"), ("kappa_f", "kappa_x")):
            sweep = _sweep(group, varying, fixed)
            if sweep.empty:
                continue
            slope, points = _slope_of(sweep, varying)
            evidence[f"{label} (lr={lr:g}) vs {varying}"] = {"slope": slope, **points}
            holds &= bool(abs(slope) <= SLOPE_FLAT)
    if not evidence:
        return _undecided("no kappa sweep in the table")
    slopes = ", ".join(f"{k}: {v['slope']:.3f}" for k, v in evidence.items())
    evidence["threshold"] = f"|slope| <= {SLOPE_FLAT}"
    return Verdict(holds=holds, evidence=evidence, summary=f"kfac log-log slopes {slopes}")


def decide_c2(table: pd.DataFrame) -> Verdict:
    evidence, holds = {}, True
    for algorithm in ("sgd", "amd"):
        rows = table[table["algorithm"] == algorithm]
        if rows.empty:
            return _undecided(f"no {algorithm} rows")
        for varying, fixed, minimum, threshold in (
            ("kappa_x", "kappa_f", 10.0, SLOPE_LINEAR),
            ("kappa_f", "kappa_x", 0.0, SLOPE_KAPPA_F),
        ):
            sweep = _sweep(rows, varying, fixed)
            slope, points = _slope_of(sweep, varying, minimum)
            if math.isnan(slope):
                return _undecided(f"{algorithm}: fewer than two {varying} values to fit")
            evidence[f"{algorithm} vs {varying}"] = {"slope": slope, "min": threshold, **points}
            holds &= slope >= threshold
    slopes = ", ".join(f"{k}: {v['slope']:.2f}" for k, v in evidence.items())
    return Verdict(holds=bool(holds), evidence=evidence, summary=f"slopes {slopes}")


def decide_c3(table: pd.DataFrame) -> Verdict:
    rows = table[(table["kappa_x"] == 1.0) & (table["kappa_f"] == 1.0)]
    if rows.empty:
        return _undecided("no rows with kappa_x = kappa_f = 1")
    failed = rows.groupby("method")["censored"].sum()
    worst = rows.groupby("method")["iterations_to_eps"].max()
    evidence = {
        "censored_seeds": {k: int(v) for k, v in failed.items()},
        "worst_iterations": {k: int(v) for k, v in worst.items()},
        "budget": int(rows["budget"].max()),
    }
    holds = bool(failed.sum() == 0)
    bad = [k for k, v in failed.items() if v]
    summary = (
        f"all {len(failed)} methods reach eps on every seed (worst {int(worst.max())} iterations)"
        if holds
        else f"methods not reaching eps within the budget: {bad}"
    )
    return Verdict(holds=holds, evidence=evidence, summary=summary)


def decide_c4(table: pd.DataFrame) -> Verdict:
    kfac = table[table["algorithm"] == "kfac"]
    second = table[table["algorithm"].isin(["gauss_newton", "newton"])]
    if kfac.empty or second.empty:
        return _undecided("needs kfac and second-order rows")
    evidence, worse_everywhere = {}, True
    for (kappa, label), rows in second.groupby(["kappa_x", "method"]):
        by_damping = rows.groupby("damping")["iterations_to_eps"].median()
        best_damping = float(by_damping.idxmin())
        best = float(by_damping.min())
        failures = int((rows["censored"] | rows["diverged"]).sum())
        kfac_rows = kfac[kfac["kappa_x"] == kappa]
        kfac_best = float(kfac_rows.groupby("method")["iterations_to_eps"].median().min())
        kfac_failures = int(kfac_rows["diverged"].sum())
        slower = best > kfac_best
        less_stable = failures > 0 and kfac_failures == 0
        cost = float(
            rows["seconds_per_iteration"].median() / kfac_rows["seconds_per_iteration"].median()
        )
        evidence[f"{label} kappa_x={kappa:g}"] = {
            "best_damping": best_damping,
            "iterations_at_best_damping": best,
            "kfac_best_iterations": kfac_best,
            "failed_runs_over_damping_grid": failures,
            "runs": len(rows),
            "cost_per_iteration_vs_kfac": cost,
        }
        worse_everywhere &= slower or less_stable
    parts = [
        f"{k}: {v['iterations_at_best_damping']:.0f} vs kfac {v['kfac_best_iterations']:.0f} it, "
        f"{v['failed_runs_over_damping_grid']}/{v['runs']} failed, "
        f"{v['cost_per_iteration_vs_kfac']:.1f}x cost"
        for k, v in evidence.items()
    ]
    evidence["rule"] = (
        "holds if at every kappa each method is slower (best damping) or fails on some damping"
    )
    return Verdict(holds=bool(worse_everywhere), evidence=evidence, summary="; ".join(parts))


def _basis_slopes(table: pd.DataFrame, algorithm: str) -> dict[str, tuple[float, dict]]:
    rows = table[table["algorithm"] == algorithm]
    return {basis: _slope_of(group, "kappa_x", 10.0) for basis, group in rows.groupby("basis")}


def decide_c5(table: pd.DataFrame) -> Verdict:
    slopes = _basis_slopes(table, "adam")
    if not {"rotated", "axis_aligned"} <= set(slopes):
        return _undecided("needs adam rows on rotated and axis-aligned bases")
    rotated, axis = slopes["rotated"][0], slopes["axis_aligned"][0]
    if math.isnan(rotated) or math.isnan(axis):
        return _undecided("fewer than two kappa values >= 10")
    holds = rotated >= SLOPE_STILL_SLOWS and axis <= rotated - SLOPE_AXIS_GAIN
    evidence = {
        "rotated": {"slope": rotated, **slopes["rotated"][1]},
        "axis_aligned": {"slope": axis, **slopes["axis_aligned"][1]},
        "rule": f"rotated slope >= {SLOPE_STILL_SLOWS} and "
        f"axis-aligned <= rotated - {SLOPE_AXIS_GAIN}",
    }
    summary = f"adam slope vs kappa_x: rotated {rotated:.2f}, axis-aligned {axis:.2f}"
    return Verdict(holds=bool(holds), evidence=evidence, summary=summary)


def decide_c6(table: pd.DataFrame) -> Verdict:
    slopes = _basis_slopes(table, "batchnorm")
    if "rotated" not in slopes or math.isnan(slopes["rotated"][0]):
        return _undecided("needs batchnorm rows on a rotated basis at two kappa values >= 10")
    slope = slopes["rotated"][0]
    evidence = {"batchnorm_rotated": {"slope": slope, **slopes["rotated"][1]}}
    for other in ("sgd", "kfac"):
        other_slopes = _basis_slopes(table, other)
        if "rotated" in other_slopes:
            evidence[f"{other}_rotated_slope"] = other_slopes["rotated"][0]
    evidence["rule"] = f"slope >= {SLOPE_STILL_SLOWS}"
    return Verdict(
        holds=bool(slope >= SLOPE_STILL_SLOWS),
        evidence=evidence,
        summary=f"batchnorm slope vs kappa_x on rotated inputs: {slope:.2f}",
    )


def decide_c7(table: pd.DataFrame) -> Verdict:
    medians = table.groupby(["n_transfer", "algorithm"])["transfer_risk"].median().unstack()
    if "kfac" not in medians:
        return _undecided("no kfac rows")
    others = [name for name in ("sgd", "adam", "batchnorm") if name in medians]
    if not others:
        return _undecided("no sgd/adam/batchnorm rows")
    ratios = {
        f"{other} / kfac at n_transfer={size}": float(
            medians.loc[size, other] / medians.loc[size, "kfac"]
        )
        for size in medians.index
        for other in others
    }
    holds = all(r > 1.0 for r in ratios.values())
    step_sizes = table.groupby("method")["lr"].first()
    evidence = {
        "median_transfer_risk": {
            str(algorithm): {int(size): float(value) for size, value in column.items()}
            for algorithm, column in medians.items()
        },
        "ratios": ratios,
        "lr": {k: float(v) for k, v in step_sizes.items()},
    }
    smallest = min(ratios, key=ratios.get)
    return Verdict(
        holds=bool(holds),
        evidence=evidence,
        summary=f"smallest risk ratio {smallest} = {ratios[smallest]:.3g} (holds if all > 1)",
    )


def decide_c8(table: pd.DataFrame) -> Verdict:
    evidence, holds = {}, True
    for algorithm in ("kfac", "dfw"):
        rows = table[table["algorithm"] == algorithm]
        if rows["n_effective_minus_d"].nunique() < 2:
            return _undecided(f"{algorithm}: fewer than two sample sizes")
        medians = rows.groupby("n_effective_minus_d")["stationary_distance"].median()
        slope = loglog_slope(medians.index, medians.values)
        evidence[algorithm] = {
            "slope": slope,
            "points": {int(k): float(v) for k, v in medians.items()},
        }
        holds &= FLOOR_SLOPE_RANGE[0] <= slope <= FLOOR_SLOPE_RANGE[1]
    evidence["range"] = list(FLOOR_SLOPE_RANGE)
    summary = ", ".join(f"{a} slope {evidence[a]['slope']:.2f}" for a in ("kfac", "dfw"))
    return Verdict(holds=bool(holds), evidence=evidence, summary=f"{summary} (expected -0.5)")


C1 = Claim(
    id="C1",
    statement="KFAC's subspace contraction does not depend on κ(Σx) or κF",
    decide=decide_c1,
)
C2 = Claim(
    id="C2", statement="SGD/AMD slow down with κ(Σx) (about linearly) and with κF", decide=decide_c2
)
C3 = Claim(
    id="C3",
    statement="isotropic sanity: with Σx = I, κF = 1 every method converges",
    decide=decide_c3,
)
C4 = Claim(
    id="C4",
    statement="full second order (damped Gauss–Newton, Newton) underperforms KFAC "
    "in rate or stability",
    decide=decide_c4,
)
C5 = Claim(
    id="C5",
    statement="Adam only mildly helps: on rotated Σx it still slows with κ; "
    "on axis-aligned Σx it helps more",
    decide=decide_c5,
)
C6 = Claim(
    id="C6", statement="batch-norm only mildly helps: still slows with κ(Σx)", decide=decide_c6
)
C7 = Claim(
    id="C7",
    statement="KFAC-learned features transfer better (lower transfer excess risk) "
    "than SGD/Adam/BN features",
    decide=decide_c7,
)
C8 = Claim(
    id="C8",
    statement="KFAC's and DFW's stationary error shrinks like (n_eff − d)^(−½)",
    decide=decide_c8,
)
