"""Claim C17 (many small steps instead of one large one), decided from the stored table.

The one-step picture (C9, C10, C13): kfac's spike aligns with β⋆, sgd's with Σβ⋆ (below the
cap cos(Σβ⋆, β⋆)), adam's lies in between. C17 asks whether that ordering of the spike's
alignment with β⋆ still holds after T small steps (:mod:`.run`). The shampoo, soap and
muon rows are reported where they fall, not decided on.
"""

from __future__ import annotations

import math

import pandas as pd

from layerwise.experiments.registry import Claim, Verdict, combine_parts

#: kfac's final median spike alignment with β⋆ must exceed sgd's by at least this.
PERSIST_MARGIN = 0.1
#: adam counts as in between when sgd − slack <= adam <= kfac + slack (final medians).
BETWEEN_SLACK = 0.02
#: Reported positions of the other methods: within this of kfac or of sgd counts as alike.
ALIKE = 0.05

REPORTED_ALGORITHMS = ("shampoo", "soap", "muon")


def _round(value: float) -> float:
    return round(float(value), 4) if value == value else math.nan


def _final_medians(table: pd.DataFrame) -> pd.DataFrame:
    """Median over seeds at the last recorded step, per (link, κ) × method label."""
    final = table[table["step"] == table["step"].max()]
    return final.groupby(["link", "kappa", "method"])["spike_align_beta"].median().unstack()


def _labels(table: pd.DataFrame, algorithm: str) -> list[str]:
    algorithm_of = table.groupby("method")["algorithm"].first()
    return sorted(algorithm_of.index[algorithm_of == algorithm])


def _position(value: float, sgd: float, kfac: float) -> str:
    if value >= kfac - ALIKE:
        return "like kfac"
    if abs(value - sgd) <= ALIKE:
        return "like sgd"
    return "between sgd and kfac" if sgd < value < kfac else "below sgd"


def decide_many_steps(table: pd.DataFrame) -> Verdict:
    """C17 at the last step and every κ > 1: part ``kfac-vs-sgd`` (kfac − sgd >=
    :data:`PERSIST_MARGIN`) and part ``adam-between`` (sgd − :data:`BETWEEN_SLACK` <= adam <=
    kfac + :data:`BETWEEN_SLACK`), on medians over seeds of the spike's alignment with β⋆."""
    rows = table[table["kappa"] > 1]
    labels = {a: _labels(table, a) for a in ("sgd", "kfac", "adam")}
    if rows.empty or not labels["sgd"] or not labels["kfac"]:
        return Verdict(holds=None, evidence={}, summary="needs sgd and kfac rows with kappa > 1")
    medians = _final_medians(rows)
    final_step = int(rows["step"].max())
    sgd = medians[labels["sgd"]].max(axis=1)
    kfac = medians[labels["kfac"]].min(axis=1)
    points = [f"{link},kappa={kappa:g}" for link, kappa in medians.index]
    persists = (kfac - sgd) >= PERSIST_MARGIN
    parts = {
        "C17-kfac-vs-sgd": Verdict(
            holds=bool(persists.all()),
            evidence={
                p: {"kfac": _round(k), "sgd": _round(s)}
                for p, k, s in zip(points, kfac, sgd, strict=True)
            },
            summary=", ".join(
                f"{p}: kfac {_round(k)} vs sgd {_round(s)}"
                for p, k, s in zip(points, kfac, sgd, strict=True)
            ),
        )
    }
    if labels["adam"]:
        adam = medians[labels["adam"]]
        between = adam.ge(sgd - BETWEEN_SLACK, axis=0) & adam.le(kfac + BETWEEN_SLACK, axis=0)
        parts["C17-adam-between"] = Verdict(
            holds=bool(between.all().all()),
            evidence={
                p: {label: _round(adam.iloc[i][label]) for label in adam.columns}
                for i, p in enumerate(points)
            },
            summary=", ".join(
                f"{p}: adam {_round(adam.iloc[i].iloc[0])} (sgd {_round(sgd.iloc[i])}, kfac "
                f"{_round(kfac.iloc[i])})"
                for i, p in enumerate(points)
            ),
        )
    else:
        parts["C17-adam-between"] = Verdict(holds=None, evidence={}, summary="no adam rows")
    verdict = combine_parts(parts)
    others = {}
    for algorithm in REPORTED_ALGORITHMS:
        for label in _labels(table, algorithm):
            others[label] = {
                p: {
                    "spike_align_beta": _round(medians.iloc[i][label]),
                    "position": _position(medians.iloc[i][label], sgd.iloc[i], kfac.iloc[i]),
                }
                for i, p in enumerate(points)
            }
    reported = "; ".join(
        f"{label}: "
        + ", ".join(f"{p} {v['spike_align_beta']} ({v['position']})" for p, v in by.items())
        for label, by in others.items()
    )
    return Verdict(
        holds=verdict.holds,
        evidence={"step": final_step, **verdict.evidence, "not decided": others},
        summary=f"spike cos(u, β⋆) after {final_step} steps: {verdict.summary}"
        + (f"; not decided: {reported}" if reported else ""),
    )


C17 = Claim(
    id="C17",
    statement="After T small steps instead of one large one, does the one-step picture persist: "
    "kfac's first-layer spike aligns with β⋆ more than sgd's, adam's in between?",
    decide=decide_many_steps,
    rule="Medians over seeds of cos(spike of W_T − W0, β⋆) at the last step, every κ > 1: "
    f"holds when kfac exceeds sgd by at least {PERSIST_MARGIN} and adam lies within "
    f"[sgd − {BETWEEN_SLACK}, kfac + {BETWEEN_SLACK}]; shampoo, soap and muon are reported as "
    f"like kfac / like sgd (within {ALIKE}) / between / below sgd, not decided on.",
    figure="over_steps",
)
