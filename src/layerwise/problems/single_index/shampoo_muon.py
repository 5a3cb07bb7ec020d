r"""Claim C15 (one exact Shampoo step, one Muon step): its decision, claim and figures.

From zero state, G = ∇W L̂(W0) = U S Vᵀ, one Shampoo step without accumulation is
U S (S² + ε)^{-1/2} Vᵀ and one Muon step is U Vᵀ (:mod:`.onestep`): matrix functions of G, not
of X1ᵀy1 alone (G also carries the fluctuations of σ'(W0 X1ᵀ) around μ1, the bulk of the sgd
update). Their direction, measured two ways (:mod:`.metrics`):

- the spike (top right singular vector of ΔW): for every ε > 0 it is *exactly* sgd's (the map
  s ↦ s/√(s² + ε) keeps the order of the singular values), so it points along Σβ⋆ like sgd;
  the polar factor has no spike at all (all singular values equal);
- the row alignment ‖ΔW b‖/(‖ΔW‖F ‖b‖), which needs no spike: how much of the update's
  energy lies along b. For the polar step it has a closed form (:func:`.theory.
  polar_row_alignment`): exactly 1/√d for every b when n ≥ d and N ≥ d, and a label-free
  projection formula when n < d. Flattening the spectrum hands the bulk the spike's weight,
  so the feature direction the sgd step found is diluted to chance; Shampoo's damping ε
  interpolates between that (ε → 0) and sgd (ε → ∞).

The decision reads the row alignment (the metric defined for every method) at the largest n/d
and every κ > 1 and classifies each shampoo and muon label as like kfac, like sgd, at chance
or in between.
"""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure

from layerwise.experiments.plots import median_band, new_figure, theory_line
from layerwise.experiments.registry import Claim, Verdict, combine_parts

#: Two medians of the row alignment within this distance count as alike.
LIKE_TOLERANCE = 0.05
#: Row alignments (with β⋆ and with Σβ⋆) at most this multiple of 1/√d count as chance level.
CHANCE_MULTIPLE = 2.0
#: kfac and sgd must differ by at least this (row alignment with β⋆) for "like kfac" and
#: "like sgd" to be told apart; points where they do not are left undecided.
DISTINCT_MARGIN = 2 * LIKE_TOLERANCE

SPECTRAL_ALGORITHMS = ("shampoo", "muon")


def _round(value: float) -> float:
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
        evidence[f"{link},kappa={kappa:g}"] = {k: _round(v) for k, v in point.items()} | {
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


# -- figures -----------------------------------------------------------------------------------


def _row_alignment_panels(table: pd.DataFrame, column: str, target: str) -> Figure:
    kappas = sorted(table["kappa"].unique())
    fig, axes = new_figure(len(kappas))
    for ax, kappa in zip(axes, kappas, strict=True):
        panel = table[(table["kappa"] == kappa) & (table["algorithm"] != "rf")]
        median_band(ax, panel, x="n_over_d", y=column, marker="o")
        line = panel.groupby("n_over_d")[f"theory_{column}"].median().dropna()
        if not line.empty:
            theory_line(ax, line.index, line.values, label="theory (exact muon)")
        chance = panel.groupby("n_over_d")["d"].first() ** -0.5
        ax.plot(chance.index, chance.values, linestyle=":", color="grey", label="chance 1/√d")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("n / d")
        ax.set_ylabel(f"‖ΔW b‖ / (‖ΔW‖F ‖b‖), b = {target}")
        ax.set_title(f"κ = {kappa:g}")
        ax.legend(fontsize=6)
    return fig


def row_alignment_figure(table: pd.DataFrame) -> Figure:
    """Row alignment of ΔW with β⋆ against n/d, one panel per κ, every method."""
    return _row_alignment_panels(table, "row_align_beta", "β⋆")


def sigma_beta_figure(table: pd.DataFrame) -> Figure:
    """Row alignment of ΔW with Σβ⋆ against n/d, one panel per κ, every method."""
    return _row_alignment_panels(table, "row_align_sigma_beta", "Σβ⋆")


def spike_figure(table: pd.DataFrame) -> Figure:
    """Spike alignment cos(u, β⋆) against n/d for the methods whose update has a spike (sgd,
    kfac, shampoo), one panel per κ, with the sgd and kfac theory lines: every shampoo label's
    spike is exactly sgd's (only its separation σ1/σ2 shrinks with ε)."""
    rows = table[table["algorithm"].isin(["sgd", "kfac", "shampoo"])]
    kappas = sorted(rows["kappa"].unique())
    fig, axes = new_figure(len(kappas))
    for ax, kappa in zip(axes, kappas, strict=True):
        panel = rows[rows["kappa"] == kappa]
        median_band(ax, panel, x="n_over_d", y="spike_align_beta", marker="o")
        for index, algorithm in enumerate(("sgd", "kfac")):
            line = panel[panel["algorithm"] == algorithm].groupby("n_over_d")["theory_align_beta"]
            line = line.median().dropna()
            if not line.empty:
                theory_line(ax, line.index, line.values, label="theory (v)" if index == 0 else None)
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("n / d")
        ax.set_ylabel("cos(spike, β⋆)")
        ax.set_title(f"κ = {kappa:g}")
        ax.legend(fontsize=6)
    return fig


CAPTIONS = {
    "row_alignment": "Share of each one-step update's energy along β⋆ (median, IQR over seeds) "
    "against n/d: kfac approaches 1, sgd and damped shampoo stay near sgd's cap, the exact muon "
    "step sits on its closed form 1/√d (dashed) at n ≥ d.",
    "sigma_beta": "The same along Σβ⋆: sgd and damped shampoo approach 1, muon stays at chance.",
    "spike": "Top singular direction of the update against n/d: every shampoo label's spike "
    "coincides with sgd's (on sgd's theory line), whatever its damping.",
}
