"""Claims C9–C13 of SPEC.md §5 and C15 (beyond the paper: one Shampoo or Muon step), decided
from the stored tables of the single-index experiments.

Every decision reads medians over seeds per grid point (columns of :mod:`.run`), states
its thresholds here (our choices, fixed before looking at results) and returns the numbers it
used as evidence. A claim whose rows are missing from the table is undecided (None), with what
is missing named. Decisions are per method label (one algorithm may appear under several labels,
e.g. kfac at two dampings); C13 decides its adam and batchnorm parts separately
(:func:`~layerwise.experiments.registry.combine_parts`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from layerwise.experiments.registry import Claim, Verdict, combine_parts

#: C10: the kfac spike counts as aligned with β⋆ at the largest n/d above this median cosine.
KFAC_ALIGNED = 0.9
#: C10: allowed decrease of the kfac median alignment from one n/d > 1 to the next.
MONOTONE_SLACK = 0.01
#: C11: absolute gap always tolerated between a median and its theory line.
THEORY_ABSOLUTE_GAP = 0.03
#: C11: further tolerance, in standard errors of the median over seeds.
THEORY_STANDARD_ERRORS = 3.0
#: C12/C13: risks are compared at n/d at least this.
RISK_MIN_RATIO = 2.0


def _undecided(reason: str) -> Verdict:
    return Verdict(holds=None, evidence={}, summary=reason)


def _round(value: float) -> float:
    return float(np.round(value, 4)) if value == value else math.nan


def _median(rows: pd.DataFrame, column: str) -> float:
    return float(rows[column].median())


# -- C9 ---------------------------------------------------------------------------------------


def decide_sgd_bias(table: pd.DataFrame) -> Verdict:
    """C9: at the largest n/d and every κ > 1, sgd's spike aligns more with Σβ⋆ than with β⋆,
    and its median alignment with β⋆ lies below the instance's cap cos(Σβ⋆, β⋆)."""
    rows = table[(table["algorithm"] == "sgd") & (table["kappa"] > 1)]
    if rows.empty:
        return _undecided("no sgd rows with kappa > 1")
    rows = rows[rows["n_over_d"] == rows["n_over_d"].max()]
    evidence, holds = {"n_over_d": float(rows["n_over_d"].iloc[0])}, True
    several = rows["method"].nunique() > 1
    for (label, link, kappa), group in rows.groupby(["method", "link", "kappa"]):
        beta = _median(group, "spike_align_beta")
        sigma_beta = _median(group, "spike_align_sigma_beta")
        below_cap = float((group["spike_align_beta"] - group["theory_cap"]).median())
        evidence[f"{label}: {link},kappa={kappa:g}" if several else f"{link},kappa={kappa:g}"] = {
            "align_beta": _round(beta),
            "align_sigma_beta": _round(sigma_beta),
            "cap": _round(_median(group, "theory_cap")),
            "median_align_minus_cap": _round(below_cap),
        }
        holds &= sigma_beta > beta and below_cap < 0
    parts = [
        f"{key}: cos(u,β⋆)={v['align_beta']}, cos(u,Σβ⋆)={v['align_sigma_beta']}, cap={v['cap']}"
        for key, v in evidence.items()
        if "kappa=" in key
    ]
    return Verdict(
        holds=bool(holds),
        evidence=evidence,
        summary=f"sgd spike at n/d={evidence['n_over_d']:g}: " + "; ".join(parts),
    )


# -- C10 --------------------------------------------------------------------------------------


def decide_kfac_alignment(table: pd.DataFrame) -> Verdict:
    """C10: for every κ, kfac's median spike alignment with β⋆ at the largest n/d is at least
    :data:`KFAC_ALIGNED` and does not decrease (beyond :data:`MONOTONE_SLACK`) over n/d > 1."""
    # The claim is stated for the tanh link (other links are shown, not decided on).
    rows = table[(table["algorithm"] == "kfac") & (table["link"] == "tanh")]
    if rows.empty:
        return _undecided("no kfac rows with the tanh link")
    evidence, holds, finals = {}, True, []
    largest = rows["n_over_d"].max()
    # Each label on its own (two kfac labels at different dampings must not be pooled).
    several = rows["method"].nunique() > 1
    for (label, kappa), group in rows.groupby(["method", "kappa"]):
        medians = group.groupby("n_over_d")["spike_align_beta"].median()
        above_one = medians[medians.index > 1]
        monotone = bool((above_one.diff().dropna() >= -MONOTONE_SLACK).all())
        top = medians.index.max()
        final = float(medians.loc[top])
        key = f"{label},kappa={kappa:g}" if several else f"kappa={kappa:g}"
        evidence[key] = {
            "median_by_n_over_d": {f"{k:g}": _round(v) for k, v in medians.items()},
            "monotone_over_n_over_d_gt_1": monotone,
        }
        finals.append(f"{key}: {_round(final)}" + ("" if top == largest else f" at n/d={top:g}"))
        holds &= final >= KFAC_ALIGNED and monotone
    finals = ", ".join(finals)
    # Other links are reported next to sgd, not decided on: with a noisy link (ReLU, σr² close
    # to E[y²]) the kfac step can align worse than sgd at small n/d.
    others = table[(table["link"] != "tanh") & table["algorithm"].isin(["sgd", "kfac"])]
    for (link, kappa), group in others.groupby(["link", "kappa"]):
        medians = group.groupby(["n_over_d", "method"])["spike_align_beta"].median().unstack()
        evidence[f"not decided: {link},kappa={kappa:g}"] = {
            f"n/d={ratio:g}": {m: _round(float(medians.loc[ratio, m])) for m in medians.columns}
            for ratio in medians.index
        }
    return Verdict(
        holds=bool(holds),
        evidence={"n_over_d": float(largest), "threshold": KFAC_ALIGNED, **evidence},
        summary=f"kfac spike cos(u,β⋆) at n/d={largest:g} ({finals}); threshold {KFAC_ALIGNED}",
    )


# -- C11 --------------------------------------------------------------------------------------


def _theory_gaps(rows: pd.DataFrame, column: str, keys: list[str]) -> pd.DataFrame:
    """Per grid point: |median − theory| and its tolerance (absolute + standard errors)."""
    records = []
    for point, group in rows.groupby(keys):
        values = group[column].dropna()
        theory = group["theory_align_beta"].median()
        # Standard error of the median of a normal sample: √(π/2)·std/√seeds.
        spread = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        standard_error = math.sqrt(math.pi / 2) * spread / math.sqrt(max(len(values), 1))
        gap = abs(float(values.median()) - float(theory))
        records.append(
            dict(
                zip(keys, point if isinstance(point, tuple) else (point,), strict=True),
                gap=gap,
                tolerance=THEORY_ABSOLUTE_GAP + THEORY_STANDARD_ERRORS * standard_error,
            )
        )
    return pd.DataFrame(records)


def decide_theory_match(table: pd.DataFrame) -> Verdict:
    """C11: at every grid point, for sgd and kfac, the median over seeds of cos(v, β⋆) (the
    vector the theory describes) and of cos(u, β⋆) (the spike of ΔW) are within
    :data:`THEORY_ABSOLUTE_GAP` + :data:`THEORY_STANDARD_ERRORS` standard errors of the theory."""
    rows = table[table["algorithm"].isin(["sgd", "kfac"]) & table["theory_align_beta"].notna()]
    if rows.empty:
        return _undecided("no sgd/kfac rows with a theory value")
    # The label separates kfac at several dampings.
    keys = ["method", "link", "kappa", "n_over_d"]
    evidence, holds = {}, True
    for column, name in (("v_align_beta", "vector"), ("spike_align_beta", "spike")):
        gaps = _theory_gaps(rows, column, keys)
        worst = gaps.loc[gaps["gap"].idxmax()]
        failing = int((gaps["gap"] > gaps["tolerance"]).sum())
        evidence[name] = {
            "max_gap": _round(float(gaps["gap"].max())),
            "points_outside_tolerance": failing,
            "points": len(gaps),
            "largest_gap_at": {
                k: (_round(v) if isinstance(v, float) else v) for k, v in worst.items()
            },
        }
        holds &= failing == 0
    summary = "; ".join(
        f"{name}: max |median − theory| = {v['max_gap']}, {v['points_outside_tolerance']}/"
        f"{v['points']} points outside tolerance"
        for name, v in evidence.items()
    )
    return Verdict(holds=bool(holds), evidence=evidence, summary=summary)


def decide_damped_theory_match(table: pd.DataFrame) -> Verdict:
    """C11-damped: the C11 rule over the damping grid; the evidence also lists where kfac's
    median spike alignment falls below sgd's (too little damping at n ≈ d)."""
    verdict = decide_theory_match(table)
    if verdict.holds is None:
        return verdict
    medians = table.groupby(["n_over_d", "method", "algorithm"])["spike_align_beta"].median()
    below = []
    for ratio in sorted(table["n_over_d"].unique()):
        at = medians.loc[ratio]
        sgd = at.xs("sgd", level="algorithm")
        if sgd.empty:
            continue
        for (label, algorithm), value in at.items():
            if algorithm == "kfac" and value < sgd.iloc[0]:
                below.append(
                    {
                        "n_over_d": float(ratio),
                        "method": label,
                        "kfac": _round(value),
                        "sgd": _round(float(sgd.iloc[0])),
                    }
                )
    note = "; kfac spike below sgd at " + (
        ", ".join(f"{b['method']} (n/d={b['n_over_d']:g}: {b['kfac']} < {b['sgd']})" for b in below)
        or "no point"
    )
    return Verdict(
        holds=verdict.holds,
        evidence={**verdict.evidence, "kfac_below_sgd": below},
        summary=verdict.summary + note,
    )


# -- C12, C13 ---------------------------------------------------------------------------------


def _risk_medians(table: pd.DataFrame) -> pd.DataFrame:
    """Median excess risk per (κ, n/d) × method, at n/d >= RISK_MIN_RATIO."""
    rows = table[table["n_over_d"] >= RISK_MIN_RATIO]
    return rows.groupby(["kappa", "n_over_d", "method"])["excess_risk"].median().unstack("method")


def _risk_evidence(medians: pd.DataFrame, methods: list[str]) -> dict:
    return {
        f"kappa={kappa:g},n/d={ratio:g}": {
            m: _round(float(medians.loc[(kappa, ratio), m])) for m in methods
        }
        for kappa, ratio in medians.index
    }


def _labels_by_algorithm(table: pd.DataFrame, algorithms: list[str]) -> dict[str, list[str]]:
    """The method labels of each algorithm (in label order); absent algorithms map to []."""
    algorithm_of = table.groupby("method")["algorithm"].first()
    return {a: sorted(algorithm_of.index[algorithm_of == a]) for a in algorithms}


def _risk_missing(table: pd.DataFrame, labels: dict[str, list[str]]) -> str:
    absent = [a for a, found in labels.items() if not found]
    where = f"at n/d >= {RISK_MIN_RATIO:g} and kappa > 1"
    if absent:
        return f"needs methods {absent} (not among the methods) {where}"
    return f"no rows {where} (the table has kappa {sorted(table['kappa'].unique())})"


def decide_risk_order(table: pd.DataFrame) -> Verdict:
    """C12: at every n/d >= :data:`RISK_MIN_RATIO` with κ > 1, the median excess risk after the
    readout orders kfac < sgd < rf, for every label of each."""
    medians = _risk_medians(table[table["kappa"] > 1])
    labels = _labels_by_algorithm(table, ["kfac", "sgd", "rf"])
    if medians.empty or not all(labels.values()):
        return _undecided(_risk_missing(table, labels))
    kfac, sgd, rf = (medians[labels[a]] for a in ("kfac", "sgd", "rf"))
    ordered = (kfac.max(axis=1) < sgd.min(axis=1)) & (sgd.max(axis=1) < rf.min(axis=1))
    evidence = _risk_evidence(medians, [m for found in labels.values() for m in found])
    return Verdict(
        holds=bool(ordered.all()),
        evidence=evidence,
        summary=f"median excess risk kfac < sgd < rf at {int(ordered.sum())}/{len(ordered)} "
        f"points: " + "; ".join(f"{k}: {v}" for k, v in evidence.items()),
    )


def _not_better_than_kfac(medians: pd.DataFrame, kfac: list[str], label: str) -> Verdict:
    not_better = medians[label] >= medians[kfac].max(axis=1)
    return Verdict(
        holds=bool(not_better.all()),
        evidence=_risk_evidence(medians, [*kfac, label]),
        summary=f"{label} not better than {', '.join(kfac)} at {int(not_better.sum())}/"
        f"{len(not_better)} points",
    )


def decide_adam_batchnorm(table: pd.DataFrame) -> Verdict:
    """C13: at every n/d >= :data:`RISK_MIN_RATIO` with κ > 1, neither adam's nor batchnorm's
    median excess risk is below kfac's (each label of each; the adam and batchnorm parts are
    decided separately); the evidence also says whether batchnorm is worse than sgd (hurts) at
    each point."""
    medians = _risk_medians(table[table["kappa"] > 1])
    labels = _labels_by_algorithm(table, ["kfac", "adam", "batchnorm", "sgd"])
    parts = {}
    for algorithm in ("adam", "batchnorm"):
        needed = {"kfac": labels["kfac"], algorithm: labels[algorithm]}
        if medians.empty or not all(needed.values()):
            parts[f"C13-{algorithm}"] = _undecided(_risk_missing(table, needed))
            continue
        several = len(labels[algorithm]) > 1
        for label in labels[algorithm]:
            name = f"C13-{algorithm} {label}" if several else f"C13-{algorithm}"
            parts[name] = _not_better_than_kfac(medians, labels["kfac"], label)
    verdict = combine_parts(parts)
    if verdict.holds is None or not labels["sgd"] or not labels["batchnorm"]:
        return verdict
    hurts = medians[labels["batchnorm"]].min(axis=1) > medians[labels["sgd"]].max(axis=1)
    return Verdict(
        holds=verdict.holds,
        evidence={
            **verdict.evidence,
            "batchnorm_worse_than_sgd_at": int(hurts.sum()),
            "points": len(hurts),
            "sgd": _risk_evidence(medians, labels["sgd"]),
        },
        summary=f"{verdict.summary}; batchnorm worse than sgd at {int(hurts.sum())}/{len(hurts)}",
    )


# -- C15 --------------------------------------------------------------------------------------
#
# From zero state, G = ∇W L̂(W0) = U S Vᵀ, one Shampoo step without accumulation is
# U S (S² + ε)^{-1/2} Vᵀ and one Muon step is U Vᵀ (:mod:`.onestep`): matrix functions of G, not
# of X1ᵀy1 alone (G also carries the fluctuations of σ'(W0 X1ᵀ) around μ1, the bulk of the sgd
# update). Their direction, measured two ways (:mod:`.metrics`):
#
# - the spike (top right singular vector of ΔW): for every ε > 0 it is *exactly* sgd's (the map
#   s ↦ s/√(s² + ε) keeps the order of the singular values), so it points along Σβ⋆ like sgd;
#   the polar factor has no spike at all (all singular values equal);
# - the row alignment ‖ΔW b‖/(‖ΔW‖F ‖b‖), which needs no spike: how much of the update's energy
#   lies along b. For the polar step it has a closed form (:func:`.theory.polar_row_alignment`):
#   exactly 1/√d for every b when n ≥ d and N ≥ d, and a label-free projection formula when
#   n < d. Flattening the spectrum hands the bulk the spike's weight, so the feature direction
#   the sgd step found is diluted to chance; Shampoo's damping ε interpolates between that
#   (ε → 0) and sgd (ε → ∞).
#
# The decision reads the row alignment (the metric defined for every method) at the largest n/d
# and every κ > 1 and classifies each shampoo and muon label as like kfac, like sgd, at chance
# or in between.

#: Two medians of the row alignment within this distance count as alike.
LIKE_TOLERANCE = 0.05
#: Row alignments (with β⋆ and with Σβ⋆) at most this multiple of 1/√d count as chance level.
CHANCE_MULTIPLE = 2.0
#: kfac and sgd must differ by at least this (row alignment with β⋆) for "like kfac" and
#: "like sgd" to be told apart; points where they do not are left undecided.
DISTINCT_MARGIN = 2 * LIKE_TOLERANCE

SPECTRAL_ALGORITHMS = ("shampoo", "muon")


def _round_c15(value: float) -> float:
    """C15's evidence to 4 decimals (Python's decimal rounding, as its stored reports have)."""
    return round(float(value), 4) if value == value else math.nan


def classify(point: dict[str, float]) -> str:
    """Where one method's medians fall: ``point`` holds ``beta`` and ``sigma_beta`` (the
    method's row alignments), ``sgd_beta``, ``sgd_sigma_beta``, ``kfac_beta`` and ``chance``."""
    if point["beta"] >= point["kfac_beta"] - LIKE_TOLERANCE:
        return "like kfac"
    if (
        abs(point["beta"] - point["sgd_beta"]) <= LIKE_TOLERANCE
        and abs(point["sigma_beta"] - point["sgd_sigma_beta"]) <= LIKE_TOLERANCE
    ):
        return "like sgd"
    if max(point["beta"], point["sigma_beta"]) <= CHANCE_MULTIPLE * point["chance"]:
        return "chance"
    return "between sgd and chance" if point["beta"] < point["sgd_beta"] else "between"


def _medians(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.groupby("method")[["row_align_beta", "row_align_sigma_beta"]].median()


def _decide_label(rows: pd.DataFrame, label: str, references: dict[str, list[str]]) -> Verdict:
    evidence, kinds = {}, []
    for (link, kappa), group in rows.groupby(["link", "kappa"]):
        medians = _medians(group)
        sgd = medians.loc[references["sgd"]]
        kfac = medians.loc[references["kfac"]]
        point = {
            "beta": float(medians.loc[label, "row_align_beta"]),
            "sigma_beta": float(medians.loc[label, "row_align_sigma_beta"]),
            "sgd_beta": float(sgd["row_align_beta"].mean()),
            "sgd_sigma_beta": float(sgd["row_align_sigma_beta"].mean()),
            "kfac_beta": float(kfac["row_align_beta"].max()),
            "chance": 1.0 / math.sqrt(float(group["d"].iloc[0])),
        }
        distinct = point["kfac_beta"] - point["sgd_beta"] >= DISTINCT_MARGIN
        kind = classify(point) if distinct else "undecided (kfac ≈ sgd)"
        kinds.append(kind)
        evidence[f"{link},kappa={kappa:g}"] = {k: _round_c15(v) for k, v in point.items()} | {
            "class": kind
        }
    decided = [kind for kind in kinds if not kind.startswith("undecided")]
    summary = "; ".join(
        f"{key}: {v['class']} (row cos with β⋆ {v['beta']}, Σβ⋆ {v['sigma_beta']}; sgd "
        f"{v['sgd_beta']}/{v['sgd_sigma_beta']}, kfac {v['kfac_beta']}, chance {v['chance']})"
        for key, v in evidence.items()
    )
    holds = None if not decided else all(kind == "like kfac" for kind in decided)
    return Verdict(holds=holds, evidence=evidence, summary=summary)


def decide_spectral_step(table: pd.DataFrame) -> Verdict:
    """C15, one part per shampoo or muon label (:func:`classify` at the largest n/d, κ > 1)."""
    rows = table[table["kappa"] > 1]
    algorithm_of = table.groupby("method")["algorithm"].first()
    references = {a: sorted(algorithm_of.index[algorithm_of == a]) for a in ("sgd", "kfac")}
    labels = sorted(algorithm_of.index[algorithm_of.isin(SPECTRAL_ALGORITHMS)])
    missing = [a for a, found in references.items() if not found]
    if rows.empty or missing or not labels:
        lacking = missing + ([] if labels else ["shampoo or muon"])
        reason = f"needs methods {lacking}" if lacking else "needs rows with kappa > 1"
        return Verdict(holds=None, evidence={}, summary=reason)
    rows = rows[rows["n_over_d"] == rows["n_over_d"].max()]
    parts = {f"C15-{label}": _decide_label(rows, label, references) for label in labels}
    verdict = combine_parts(parts)
    return Verdict(
        holds=verdict.holds,
        evidence={"n_over_d": float(rows["n_over_d"].iloc[0]), **verdict.evidence},
        summary=f"at n/d={rows['n_over_d'].iloc[0]:g}: {verdict.summary}",
    )


# -- the claims ------------------------------------------------------------------------------

C9 = Claim(
    id="C9",
    statement="One SGD step's spike aligns with Σβ⋆ more than with β⋆ and stays below the cap "
    "cos(Σβ⋆, β⋆) (anisotropic Σ, largest n/d).",
    decide=decide_sgd_bias,
    rule="Holds when, at the largest n/d, for every sgd label, link and κ > 1, the median over "
    "seeds of cos(u, Σβ⋆) exceeds the median of cos(u, β⋆) (u: the spike of the step) and the "
    "median of cos(u, β⋆) − cap is below 0, with cap = cos(Σβ⋆, β⋆) of each seed's instance.",
    figure="sgd_bias",
)
C10 = Claim(
    id="C10",
    statement="One KFAC step's spike aligns with β⋆ and the alignment grows to near 1 with n/d "
    f"(tanh link; median >= {KFAC_ALIGNED} at the largest n/d).",
    decide=decide_kfac_alignment,
    rule=f"Holds when, with the tanh link, for every kfac label and κ, the median over seeds "
    f"of cos(u, β⋆) at the largest n/d is at least {KFAC_ALIGNED}, and over n/d > 1 the median "
    f"never drops by more than {MONOTONE_SLACK} from one n/d to the next; other links are "
    f"shown next to sgd, not decided on.",
    figure="alignment",
)
C11 = Claim(
    id="C11",
    statement="Simulation matches the theory lines for sgd and kfac, both for the vector v and "
    "for the spike of ΔW (f0 ≈ 0).",
    decide=decide_theory_match,
    rule=f"Holds when, for sgd and kfac at every grid point (label, link, κ, n/d), the median "
    f"over seeds of cos(v, β⋆) and of cos(u, β⋆) is within {THEORY_ABSOLUTE_GAP} + "
    f"{THEORY_STANDARD_ERRORS:g} standard errors of the median (√(π/2)·sd/√seeds) of the "
    f"theory line; one point outside makes it not hold.",
    figure="alignment",
)
C11_DAMPED = Claim(
    id="C11-damped",
    statement="The damped (ridge) deterministic equivalent matches the kfac simulation at "
    "n/d <= 1 across the damping grid, for v and for the spike.",
    decide=decide_damped_theory_match,
    rule=f"The C11 rule over the damping grid: holds when, for sgd and every kfac damping label "
    f"at every grid point, the median cos(v, β⋆) and cos(u, β⋆) are within "
    f"{THEORY_ABSOLUTE_GAP} + {THEORY_STANDARD_ERRORS:g} standard errors of the damped theory; "
    f"where kfac's median spike alignment falls below sgd's is listed, not decided on.",
    figure="damping",
)
C12 = Claim(
    id="C12",
    statement="After the ridge readout, test risk orders kfac < sgd < rf under anisotropic Σ "
    f"(tanh link, medians at n/d >= {RISK_MIN_RATIO:g}).",
    decide=decide_risk_order,
    rule=f"Holds when, at every κ > 1 and n/d ≥ {RISK_MIN_RATIO:g}, the largest median over "
    f"seeds of the excess risk after the readout among the kfac labels is below the smallest "
    f"among the sgd labels, and the largest sgd one below the smallest rf one.",
    figure="risk",
)
C13 = Claim(
    id="C13",
    statement="Adam's and batch-norm's one-step features are not better than KFAC's "
    "(the evidence also says whether batch-norm hurts compared with sgd).",
    decide=decide_adam_batchnorm,
    rule=f"Two parts, C13-adam and C13-batchnorm (holds when every decided part holds): at "
    f"every κ > 1 and n/d ≥ {RISK_MIN_RATIO:g}, each label's median excess risk is at least "
    f"the largest kfac-label median; whether batchnorm is worse than sgd at each point is "
    f"reported, not decided on.",
    figure="risk",
)
C15 = Claim(
    id="C15",
    statement="Does one exact Shampoo step (damping ε) or one Muon (polar) step from zero state "
    "align the first-layer update with β⋆ like KFAC, rather than with Σβ⋆ like SGD? "
    "(holds: like KFAC; the verdict says where each label falls instead)",
    decide=decide_spectral_step,
    rule="At the largest n/d and every κ > 1, medians over seeds of the row alignment "
    "‖ΔW b‖/(‖ΔW‖F‖b‖) with b = β⋆ and b = Σβ⋆, per shampoo/muon label: 'like kfac' when its "
    f"alignment with β⋆ is at least kfac's minus {LIKE_TOLERANCE}; 'like sgd' when both "
    f"alignments are within {LIKE_TOLERANCE} of sgd's; 'chance' when both are at most "
    f"{CHANCE_MULTIPLE:g}/√d; otherwise 'between'. A label holds when it is like kfac at every "
    f"such κ; points where kfac and sgd differ by less than {DISTINCT_MARGIN:g} are undecided.",
    figure="row_alignment",
)
