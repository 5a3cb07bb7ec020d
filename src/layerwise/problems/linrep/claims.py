"""Claims C1–C8 of SPEC §5 and C14, C18 (beyond the paper: do the library's layer-wise
optimizers keep KFAC's κ-free contraction?), decided from the stored tables of the linrep
experiments.

Thresholds are fixed here, before looking at results, and stated in each claim's evidence:

- a *slope* is the least-squares slope of log(median over seeds) against log(x); iterations-to-eps
  of a censored (or diverged) seed count as the budget, so a slope over censored points is a lower
  bound and the evidence says how many points were censored;
- C1 "does not depend on κ": |slope| ≤ 0.1 for kfac at each fixed η < 1;
- C2 "slows about linearly or worse": slope ≥ 0.7 against κx over κx ≥ 10, and ≥ 0.5 against κF;
- C5/C6 "still slows with κ": slope ≥ 0.3 over κ ≥ 10 on rotated Σx; C5 "helps more on
  axis-aligned Σx": the axis-aligned slope is at least 0.2 below the rotated one;
- C8 "shrinks like (n_eff − d)^(−½)": slopes against n_eff − d in [−0.7, −0.3].

Every decision is per method label (one algorithm may appear under several labels), and a claim
with several parts (C2: κx and κF; C5: rotated and axis-aligned; C8: kfac and dfw) decides each
part the table can decide, naming what is missing for the others
(:func:`~layerwise.experiments.registry.combine_parts`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from layerwise.experiments.registry import Claim, Verdict, combine_parts
from layerwise.problems.linrep.methods import of_family

SLOPE_FLAT = 0.1
SLOPE_LINEAR = 0.7
SLOPE_KAPPA_F = 0.5
SLOPE_STILL_SLOWS = 0.3
SLOPE_AXIS_GAIN = 0.2
FLOOR_SLOPE_RANGE = (-0.7, -0.3)
#: C2-κx, C5 and C6 fit their slopes against κ(Σx) over κ(Σx) at least this.
KAPPA_X_MIN = 10.0


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


def kappa_slope(
    rows: pd.DataFrame, varying: str, fixed: str, minimum: float = 0.0
) -> tuple[float, dict]:
    """The κ slope of C1/C2: log-log slope of the median iterations to ε against ``varying``
    (``kappa_x`` or ``kappa_f``) over ``varying`` >= ``minimum``, with ``fixed`` at its smallest
    value (NaN without two values); evidence: the medians, censored seeds and step sizes."""
    return _slope_of(_sweep(rows, varying, fixed), varying, minimum)


def decide_c1(table: pd.DataFrame) -> Verdict:
    rows = table[(table["algorithm"] == "kfac") & ~table["lr_tuned"] & (table["lr"] < 1.0)]
    if rows.empty:
        return _undecided("no kfac rows at a fixed step size < 1")
    evidence, holds = {}, True
    for (label, lr), group in rows.groupby(["method", "lr"]):
        for varying, fixed in (("kappa_x", "kappa_f"), ("kappa_f", "kappa_x")):
            slope, points = kappa_slope(group, varying, fixed)
            if math.isnan(slope):
                continue
            evidence[f"{label} (lr={lr:g}) vs {varying}"] = {"slope": slope, **points}
            holds &= bool(abs(slope) <= SLOPE_FLAT)
    if not evidence:
        return _undecided("no kappa sweep in the table")
    slopes = ", ".join(f"{k}: {v['slope']:.3f}" for k, v in evidence.items())
    evidence["threshold"] = f"|slope| <= {SLOPE_FLAT}"
    return Verdict(holds=holds, evidence=evidence, summary=f"kfac log-log slopes {slopes}")


def _values(rows: pd.DataFrame, column: str) -> str:
    return ", ".join(f"{value:g}" for value in sorted(rows[column].dropna().unique())) or "none"


def _c2_part(table: pd.DataFrame, varying: str, fixed: str, minimum: float, threshold: float):
    """Slope of each sgd/amd label's median iterations against ``varying`` (``fixed`` at its
    smallest value, ``varying`` >= ``minimum``)."""
    evidence, holds, missing = {}, True, []
    for algorithm in ("sgd", "amd"):
        rows = table[table["algorithm"] == algorithm]
        if rows.empty:
            missing.append(f"no {algorithm} rows (not among the methods)")
        for label, group in rows.groupby("method"):
            slope, points = kappa_slope(group, varying, fixed, minimum)
            if math.isnan(slope):
                at = group[group[fixed] == group[fixed].min()]
                above = f" >= {minimum:g}" if minimum else ""
                missing.append(
                    f"{label}: fewer than two {varying} values{above} at {fixed} = "
                    f"{group[fixed].min():g} (the table has {varying} {_values(at, varying)})"
                )
                continue
            evidence[f"{label} vs {varying}"] = {"slope": slope, "min": threshold, **points}
            holds &= slope >= threshold
    if not evidence:
        return _undecided("; ".join(missing))
    slopes = ", ".join(f"{k}: {v['slope']:.2f}" for k, v in evidence.items())
    if missing:
        evidence["missing"] = missing
    return Verdict(holds=bool(holds), evidence=evidence, summary=f"slopes {slopes}")


def decide_c2(table: pd.DataFrame) -> Verdict:
    return combine_parts(
        {
            "C2-κx": _c2_part(table, "kappa_x", "kappa_f", KAPPA_X_MIN, SLOPE_LINEAR),
            "C2-κF": _c2_part(table, "kappa_f", "kappa_x", 0.0, SLOPE_KAPPA_F),
        }
    )


def decide_c3(table: pd.DataFrame) -> Verdict:
    rows = table[(table["kappa_x"] == 1.0) & (table["kappa_f"] == 1.0)]
    if rows.empty:
        return _undecided(
            "no rows with kappa_x = kappa_f = 1 (the table has kappa_x "
            f"{_values(table, 'kappa_x')}, kappa_f {_values(table, 'kappa_f')})"
        )
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
    second = table[table["algorithm"].isin(of_family("second_order"))]
    if kfac.empty or second.empty:
        return _undecided("needs kfac and second-order rows")
    evidence, worse_everywhere = {}, True
    for (kappa, label), rows in second.groupby(["kappa_x", "method"]):
        by_damping = rows.groupby("damping")["iterations_to_eps"].median()
        best_damping = float(by_damping.idxmin())
        best = float(by_damping.min())
        failures = int((rows["censored"] | rows["diverged"]).sum())
        kfac_rows = kfac[kfac["kappa_x"] == kappa]
        # The best kfac label at this κ is the reference (named in the evidence).
        kfac_medians = kfac_rows.groupby("method")["iterations_to_eps"].median()
        kfac_best = float(kfac_medians.min())
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
            "kfac_best_label": str(kfac_medians.idxmin()),
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


def _basis_slopes(rows: pd.DataFrame) -> dict[str, tuple[float, dict]]:
    return {
        basis: _slope_of(group, "kappa_x", KAPPA_X_MIN) for basis, group in rows.groupby("basis")
    }


def _labels(table: pd.DataFrame, algorithm: str) -> dict[str, pd.DataFrame]:
    rows = table[table["algorithm"] == algorithm]
    return {str(label): group for label, group in rows.groupby("method")}


def decide_c5(table: pd.DataFrame) -> Verdict:
    labels = _labels(table, "adam")
    if not labels:
        return _undecided("no adam rows (not among the methods)")
    slows, helps = {}, {}
    for label, rows in labels.items():
        slopes = _basis_slopes(rows)
        rotated = slopes.get("rotated", (math.nan, {}))
        axis = slopes.get("axis_aligned", (math.nan, {}))
        if math.isnan(rotated[0]):
            slows[label] = _undecided(
                f"{label}: needs rotated-basis rows at two kappa_x values >= 10 "
                f"(has bases {', '.join(slopes) or 'none'})"
            )
            helps[label] = _undecided(f"{label}: needs the rotated slope too")
            continue
        slows[label] = Verdict(
            holds=rotated[0] >= SLOPE_STILL_SLOWS,
            evidence={"rotated": {"slope": rotated[0], **rotated[1]}},
            summary=f"{label} slope vs kappa_x on rotated inputs {rotated[0]:.2f} "
            f"(>= {SLOPE_STILL_SLOWS})",
        )
        if math.isnan(axis[0]):
            helps[label] = _undecided(
                f"{label}: needs axis-aligned rows at two kappa_x values >= 10"
            )
            continue
        helps[label] = Verdict(
            holds=axis[0] <= rotated[0] - SLOPE_AXIS_GAIN,
            evidence={"axis_aligned": {"slope": axis[0], **axis[1]}},
            summary=f"{label} slope axis-aligned {axis[0]:.2f} vs rotated {rotated[0]:.2f} "
            f"(axis-aligned <= rotated - {SLOPE_AXIS_GAIN})",
        )
    return combine_parts(
        {
            f"C5-rotated {label}" if len(labels) > 1 else "C5-rotated": verdict
            for label, verdict in slows.items()
        }
        | {
            f"C5-axis-aligned {label}" if len(labels) > 1 else "C5-axis-aligned": verdict
            for label, verdict in helps.items()
        }
    )


def decide_c6(table: pd.DataFrame) -> Verdict:
    labels = _labels(table, "batchnorm")
    if not labels:
        return _undecided("no batchnorm rows (not among the methods)")
    evidence, holds, missing = {}, True, []
    for label, rows in labels.items():
        slopes = _basis_slopes(rows)
        if "rotated" not in slopes or math.isnan(slopes["rotated"][0]):
            missing.append(f"{label}: needs rotated-basis rows at two kappa_x values >= 10")
            continue
        slope = slopes["rotated"][0]
        evidence[f"{label}_rotated"] = {"slope": slope, **slopes["rotated"][1]}
        holds &= slope >= SLOPE_STILL_SLOWS
    if not evidence:
        return _undecided("; ".join(missing))
    for other in ("sgd", "kfac"):
        for label, rows in _labels(table, other).items():
            other_slopes = _basis_slopes(rows)
            if "rotated" in other_slopes:
                evidence[f"{label}_rotated_slope"] = other_slopes["rotated"][0]
    evidence["rule"] = f"slope >= {SLOPE_STILL_SLOWS}"
    if missing:
        evidence["missing"] = missing
    slopes_text = ", ".join(
        f"{key.removesuffix('_rotated')} {value['slope']:.2f}"
        for key, value in evidence.items()
        if key.endswith("_rotated")
    )
    return Verdict(
        holds=bool(holds),
        evidence=evidence,
        summary=f"batchnorm slope vs kappa_x on rotated inputs: {slopes_text}",
    )


def decide_c7(table: pd.DataFrame) -> Verdict:
    medians = table.groupby(["n_transfer", "method"])["transfer_risk"].median().unstack()
    algorithm_of = table.groupby("method")["algorithm"].first()
    kfac = [label for label in medians if algorithm_of[label] == "kfac"]
    if not kfac:
        return _undecided("no kfac rows (not among the methods)")
    others = [label for label in medians if algorithm_of[label] in ("sgd", "adam", "batchnorm")]
    if not others:
        return _undecided("no sgd/adam/batchnorm rows (none among the methods)")
    ratios = {
        f"{other} / {reference} at n_transfer={size}": float(
            medians.loc[size, other] / medians.loc[size, reference]
        )
        for reference in kfac
        for size in medians.index
        for other in others
    }
    holds = all(r > 1.0 for r in ratios.values())
    step_sizes = table.groupby("method")["lr"].first()
    evidence = {
        "median_transfer_risk": {
            str(label): {int(size): float(value) for size, value in column.items()}
            for label, column in medians.items()
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


def _c8_part(table: pd.DataFrame, algorithm: str) -> Verdict:
    labels = _labels(table, algorithm)
    if not labels:
        return _undecided(f"no {algorithm} rows ({algorithm} is not among the methods)")
    evidence, holds, missing = {}, True, []
    for label, rows in labels.items():
        if rows["n_effective_minus_d"].nunique() < 2:
            missing.append(
                f"{label}: fewer than two sample sizes (n_eff - d: "
                f"{_values(rows, 'n_effective_minus_d')})"
            )
            continue
        medians = rows.groupby("n_effective_minus_d")["stationary_distance"].median()
        slope = loglog_slope(medians.index, medians.values)
        evidence[label] = {
            "slope": slope,
            "points": {int(k): float(v) for k, v in medians.items()},
        }
        holds &= FLOOR_SLOPE_RANGE[0] <= slope <= FLOOR_SLOPE_RANGE[1]
    if not evidence:
        return _undecided("; ".join(missing))
    summary = ", ".join(f"{label} slope {v['slope']:.2f}" for label, v in evidence.items())
    evidence["range"] = list(FLOOR_SLOPE_RANGE)
    if missing:
        evidence["missing"] = missing
    return Verdict(holds=bool(holds), evidence=evidence, summary=f"{summary} (expected -0.5)")


def decide_c8(table: pd.DataFrame) -> Verdict:
    return combine_parts({"C8-kfac": _c8_part(table, "kfac"), "C8-dfw": _c8_part(table, "dfw")})


#: How every slope below is fitted (part of each rule).
# -- C14, C18 (beyond the paper) ------------------------------------------------------------
#
# Claims C14 and C18: do the project's layer-wise optimizers keep KFAC's κ-free contraction?
#
# The experiment ``linrep-layerwise`` measures iterations to subspace distance ≤ ε against κ(Σx)
# (κF = 1) and against κF (κ(Σx) = 1), as ``linrep-kappa`` does for C1/C2, for the library
# optimizers (Shampoo, SOAP, Muon in their exact and amortized modes, KFAC and EKFAC in exact
# mode) with the paper's sgd and kfac as anchors. Each method label's slopes are those of C1/C2
# (:func:`~layerwise.problems.linrep.claims.kappa_slope`: log-log slope of the median over seeds,
# a censored seed counted as the budget), and each label is classified against C1's and C2's
# thresholds (figure: :func:`layerwise.problems.linrep.figures.layerwise`):
#
# - **κ-free** (like KFAC): |slope| ≤ ``SLOPE_FLAT`` against every κ swept;
# - **slows like SGD**: slope ≥ ``SLOPE_LINEAR`` against κ(Σx) or ≥ ``SLOPE_KAPPA_F`` against κF;
# - **slows, below C2's threshold**: a slope above ``SLOPE_FLAT`` but below C2's threshold:
#   not κ-free (the claims ask for κ-freeness), recorded as its own class;
# - **undecided**: a sweep whose median is censored at every κ (the method does not reach ε
#   within the budget at its tuned step size: "does not converge" at that ε), or a censored sweep
#   whose slope, a lower bound, is still ≤ ``SLOPE_FLAT`` (it could be κ-free or not).
#
# A censored median at some κ makes the slope a lower bound, so "not κ-free" is still decided
# when that lower bound exceeds ``SLOPE_FLAT``.

#: (varying, fixed, "slows like SGD" threshold) of each sweep.
KAPPA_SWEEPS = (("kappa_x", "kappa_f", SLOPE_LINEAR), ("kappa_f", "kappa_x", SLOPE_KAPPA_F))

KAPPA_FREE = "κ-free"
SGD_LIKE = "slows like SGD"
SLOWER = "slows, below C2's threshold"
UNDECIDED = "undecided"


def _sweep_class(rows: pd.DataFrame, varying: str, fixed: str, sgd_threshold: float) -> dict:
    """One label's slope against ``varying`` and its class (the C14/C18 notes above)."""
    slope, evidence = kappa_slope(rows, varying, fixed)
    if math.isnan(slope):
        return {"class": None, "slope": slope}
    at_min = rows[rows[fixed] == rows[fixed].min()]
    median_censored = at_min.groupby(varying)["censored"].mean() > 0.5
    censored_at = [f"{k:g}" for k, v in median_censored.items() if v]
    result = {"slope": slope, **evidence, "median_censored_at": censored_at}
    if len(censored_at) == len(median_censored):
        result["class"] = UNDECIDED
        result["why"] = f"does not reach ε within the budget at any {varying} (median censored)"
    elif slope >= sgd_threshold:
        result["class"] = SGD_LIKE
    elif abs(slope) <= SLOPE_FLAT:
        result["class"] = UNDECIDED if censored_at else KAPPA_FREE
        if censored_at:
            result["why"] = (
                f"censored at {varying} = {', '.join(censored_at)}: the slope {slope:.2f} is a "
                "lower bound"
            )
    else:
        result["class"] = SLOWER
    return result


def classify_kappa_free(rows: pd.DataFrame, label: str) -> Verdict:
    """Is one label κ-free? holds: κ-free on every sweep; False: some sweep is not κ-free;
    None: no sweep decided. The evidence has each sweep's slope, medians and class."""
    sweeps = {}
    for varying, fixed, threshold in KAPPA_SWEEPS:
        result = _sweep_class(rows, varying, fixed, threshold)
        if result["class"] is not None:
            sweeps[varying] = result
    if not sweeps:
        return Verdict(
            holds=None, evidence={}, summary=f"{label}: no κ sweep with two values in the table"
        )
    classes = {varying: result["class"] for varying, result in sweeps.items()}
    text = ", ".join(
        f"vs {varying} slope {result['slope']:.2f} ({result['class']}"
        + (f": {result['why']}" if "why" in result else "")
        + ")"
        for varying, result in sweeps.items()
    )
    if any(c in (SGD_LIKE, SLOWER) for c in classes.values()):
        holds = False
    elif all(c == KAPPA_FREE for c in classes.values()):
        holds = True
    else:
        holds = None
    return Verdict(holds=holds, evidence=sweeps, summary=f"{label} {text}")


def _labels_of(table: pd.DataFrame, algorithms: tuple[str, ...], mode: str | None = None):
    rows = table[table["algorithm"].isin(algorithms)]
    if mode is not None:
        rows = rows[rows["mode"] == mode]
    return {str(label): group for label, group in rows.groupby("method")}


def _with_context(deciding: Verdict, context: dict[str, Verdict]) -> Verdict:
    """``deciding`` with labels that are measured but do not decide the claim added to its
    evidence and summary (each with its own verdict)."""
    if not context:
        return deciding
    words = {True: KAPPA_FREE, False: "not κ-free", None: UNDECIDED}
    evidence = dict(deciding.evidence)
    evidence["not_deciding"] = {
        name: {"kappa_free": part.holds, **part.evidence} for name, part in context.items()
    }
    extra = "; ".join(f"{part.summary} [{words[part.holds]}]" for part in context.values())
    return Verdict(
        holds=deciding.holds,
        evidence=evidence,
        summary=f"{deciding.summary}. Measured, not deciding: {extra}",
    )


def _anchors(table: pd.DataFrame) -> dict[str, Verdict]:
    return {
        f"anchor {label}": classify_kappa_free(rows, label)
        for label, rows in _labels_of(table, ("sgd", "kfac")).items()
    }


def decide_c14(table: pd.DataFrame) -> Verdict:
    """C14: every exact Shampoo, SOAP and Muon label κ-free (``combine_parts``); the amortized
    labels, library KFAC and the anchors are reported alongside."""
    exact = _labels_of(table, ("shampoo", "soap", "muon"), "exact")
    if not exact:
        return Verdict(
            holds=None, evidence={}, summary="no exact-mode shampoo/soap/muon rows in the table"
        )
    deciding = combine_parts(
        {f"C14 {label}": classify_kappa_free(rows, label) for label, rows in exact.items()}
    )
    context = {
        f"C14 {label} (amortized)": classify_kappa_free(rows, label)
        for label, rows in _labels_of(table, ("shampoo", "soap", "muon"), "amortized").items()
    }
    context |= {
        label: classify_kappa_free(rows, label)
        for label, rows in _labels_of(table, ("library_kfac",)).items()
    }
    return _with_context(deciding, context | _anchors(table))


def decide_c18(table: pd.DataFrame) -> Verdict:
    """C18: every EKFAC label and every SOAP label (exact and amortized) κ-free."""
    labels = _labels_of(table, ("library_ekfac", "soap"))
    if not labels:
        return Verdict(
            holds=None, evidence={}, summary="no library_ekfac or soap rows in the table"
        )
    deciding = combine_parts(
        {f"C18 {label}": classify_kappa_free(rows, label) for label, rows in labels.items()}
    )
    context = {
        label: classify_kappa_free(rows, label)
        for label, rows in _labels_of(table, ("library_kfac",)).items()
    }
    return _with_context(deciding, context | _anchors(table))


_KAPPA_FREE_CLASSES = (
    f"each method label's slopes are C1/C2's (log-log slope of the median over seeds of "
    f"iterations to ε against κ(Σx) at κF = 1 and against κF at κ(Σx) = 1, a censored seed "
    f"counted as the budget); a label is κ-free when |slope| ≤ {SLOPE_FLAT} (C1's threshold) "
    f"against every κ swept, slows like SGD at slope ≥ {SLOPE_LINEAR} against κ(Σx) or "
    f"≥ {SLOPE_KAPPA_F} against κF (C2's thresholds), and in between it slows below C2's "
    f"threshold, which is not κ-free either; a sweep whose median is censored at every κ "
    f"(no convergence to ε within the budget at the tuned step size) or whose censored slope "
    f"is ≤ {SLOPE_FLAT} is undecided"
)


_SLOPE_WORDS = (
    "slope = least-squares slope of log(median over seeds of iterations to ε) against log κ; "
    "a censored or diverged seed counts as the budget"
)

C1 = Claim(
    id="C1",
    statement="KFAC's subspace contraction does not depend on κ(Σx) or κF",
    decide=decide_c1,
    rule=f"Holds when, for every kfac label at a fixed step size η < 1 (tuned step sizes are "
    f"not used), |slope| ≤ {SLOPE_FLAT} against κ(Σx) (κF at its smallest value) and against "
    f"κF (κ(Σx) at its smallest value); {_SLOPE_WORDS}.",
    figure="kappa",
)
C2 = Claim(
    id="C2",
    statement="SGD/AMD slow down with κ(Σx) (about linearly) and with κF",
    decide=decide_c2,
    rule=f"Two parts, each decided where the table allows (holds when every decided part "
    f"holds): C2-κx, every sgd and amd label has slope ≥ {SLOPE_LINEAR} against κ(Σx) over "
    f"κ(Σx) ≥ {KAPPA_X_MIN:g} (κF smallest); C2-κF, slope ≥ {SLOPE_KAPPA_F} against κF "
    f"(κ(Σx) smallest); {_SLOPE_WORDS}.",
    figure="kappa",
)
C3 = Claim(
    id="C3",
    statement="isotropic sanity: with Σx = I, κF = 1 every method converges",
    decide=decide_c3,
    rule="Holds when, at κ(Σx) = κF = 1, every method reaches subspace distance ≤ ε within "
    "the iteration budget on every seed (no censored seed).",
    figure="kappa",
)
C4 = Claim(
    id="C4",
    statement="full second order (damped Gauss–Newton, Newton) underperforms KFAC "
    "in rate or stability",
    decide=decide_c4,
    rule="Holds when, at every κ(Σx), each damped Gauss–Newton and Newton label is slower "
    "(median iterations to ε at its best damping above the best kfac label's median) or less "
    "stable (some seed censored or diverged over the damping grid while kfac never diverges); "
    "cost per iteration relative to kfac is reported, not decided on.",
    figure="second-order",
)
C5 = Claim(
    id="C5",
    statement="Adam only mildly helps: on rotated Σx it still slows with κ; "
    "on axis-aligned Σx it helps more",
    decide=decide_c5,
    rule=f"Two parts per adam label (holds when every decided part holds): C5-rotated, slope "
    f"≥ {SLOPE_STILL_SLOWS} against κ(Σx) over κ(Σx) ≥ {KAPPA_X_MIN:g} on rotated Σx; "
    f"C5-axis-aligned, the axis-aligned slope is at least {SLOPE_AXIS_GAIN} below the rotated "
    f"one; {_SLOPE_WORDS}.",
    figure="basis",
)
C6 = Claim(
    id="C6",
    statement="batch-norm only mildly helps: still slows with κ(Σx)",
    decide=decide_c6,
    rule=f"Holds when every batchnorm label has slope ≥ {SLOPE_STILL_SLOWS} against κ(Σx) "
    f"over κ(Σx) ≥ {KAPPA_X_MIN:g} on rotated Σx (sgd's and kfac's rotated slopes are shown "
    f"for comparison); {_SLOPE_WORDS}.",
    figure="basis",
)
C7 = Claim(
    id="C7",
    statement="KFAC-learned features transfer better (lower transfer excess risk) "
    "than SGD/Adam/BN features",
    decide=decide_c7,
    rule="Holds when, at every n_transfer, the median over seeds of the transfer excess risk "
    "of every sgd, adam and batchnorm label divided by that of every kfac label is above 1.",
    figure="transfer",
)
C8 = Claim(
    id="C8",
    statement="KFAC's and DFW's stationary error shrinks like (n_eff − d)^(−½)",
    decide=decide_c8,
    rule=f"Two parts, C8-kfac and C8-dfw (holds when every decided part holds): every label's "
    f"least-squares slope of log(median over seeds of the stationary subspace distance) "
    f"against log(n_eff − d) lies in [{FLOOR_SLOPE_RANGE[0]}, {FLOOR_SLOPE_RANGE[1]}] "
    f"(theory: −0.5).",
    figure="floor",
)
C14 = Claim(
    id="C14",
    statement="In linear representation learning, do Shampoo, SOAP and Muon (exact mode) "
    "contract at a rate free of κ(Σx) and κF like KFAC, rather than slowing down like SGD?",
    decide=decide_c14,
    rule=f"Holds when every exact-mode Shampoo, SOAP and Muon label is κ-free, does not hold "
    f"when one is not (decided labels only, combine_parts); {_KAPPA_FREE_CLASSES}. The "
    f"amortized modes (the optimizers' defaults), library KFAC and the sgd/kfac anchors are "
    f"classified the same way and reported, not decided on.",
    figure="layerwise",
)
C18 = Claim(
    id="C18",
    statement="Does Adam in the eigenbasis, on KFAC's factors (EKFAC) and on Shampoo's "
    "factors (SOAP, exact and amortized), keep KFAC's κ-free contraction in linear "
    "representation learning?",
    decide=decide_c18,
    rule=f"Holds when every EKFAC and SOAP label (exact and amortized) is κ-free, does not hold "
    f"when one is not (decided labels only, combine_parts); {_KAPPA_FREE_CLASSES}. Library "
    f"KFAC and the anchors are reported, not decided on.",
    figure="layerwise",
)
