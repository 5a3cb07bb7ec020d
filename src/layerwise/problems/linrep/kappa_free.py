"""Claims C14 and C18: do the project's layer-wise optimizers keep KFAC's κ-free contraction?

The experiment ``linrep-layerwise`` measures iterations to subspace distance ≤ ε against κ(Σx)
(κF = 1) and against κF (κ(Σx) = 1), as ``linrep-kappa`` does for C1/C2, for the library
optimizers (Shampoo, SOAP, Muon in their exact and amortized modes, KFAC and EKFAC in exact
mode) with the paper's sgd and kfac as anchors. Each method label's slopes are those of C1/C2
(:func:`~layerwise.problems.linrep.claims.kappa_slope`: log-log slope of the median over seeds,
a censored seed counted as the budget), and each label is classified against C1's and C2's
thresholds (figure: :func:`layerwise.problems.linrep.figures.layerwise`):

- **κ-free** (like KFAC): |slope| ≤ ``SLOPE_FLAT`` against every κ swept;
- **slows like SGD**: slope ≥ ``SLOPE_LINEAR`` against κ(Σx) or ≥ ``SLOPE_KAPPA_F`` against κF;
- **slows, below C2's threshold**: a slope above ``SLOPE_FLAT`` but below C2's threshold:
  not κ-free (the claims ask for κ-freeness), recorded as its own class;
- **undecided**: a sweep whose median is censored at every κ (the method does not reach ε
  within the budget at its tuned step size: "does not converge" at that ε), or a censored sweep
  whose slope, a lower bound, is still ≤ ``SLOPE_FLAT`` (it could be κ-free or not).

A censored median at some κ makes the slope a lower bound, so "not κ-free" is still decided
when that lower bound exceeds ``SLOPE_FLAT``.
"""

from __future__ import annotations

import math

import pandas as pd

from layerwise.experiments.registry import Claim, RunTask, Verdict, combine_parts
from layerwise.problems.linrep.claims import (
    SLOPE_FLAT,
    SLOPE_KAPPA_F,
    SLOPE_LINEAR,
    kappa_slope,
)
from layerwise.problems.linrep.run import run_summary

#: (varying, fixed, "slows like SGD" threshold) of each sweep.
SWEEPS = (("kappa_x", "kappa_f", SLOPE_LINEAR), ("kappa_f", "kappa_x", SLOPE_KAPPA_F))

KAPPA_FREE = "κ-free"
SGD_LIKE = "slows like SGD"
SLOWER = "slows, below C2's threshold"
UNDECIDED = "undecided"


def mode_of(params) -> str:
    """``exact`` or ``amortized`` for a library optimizer (its ``exact`` option), ``paper`` for
    the paper's algorithms."""
    options = getattr(params, "options", None)
    if options is None:
        return "paper"
    return "exact" if options.exact else "amortized"


def run_layerwise(task: RunTask) -> pd.DataFrame:
    """``run_summary`` rows with the column ``mode`` (``exact``/``amortized``/``paper``)."""
    table = run_summary(task)
    modes = {label: mode_of(spec.params) for label, spec in task.methods.items()}
    return table.assign(mode=table["method"].map(modes))


def _sweep_class(rows: pd.DataFrame, varying: str, fixed: str, sgd_threshold: float) -> dict:
    """One label's slope against ``varying`` and its class (module docstring)."""
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


def classify(rows: pd.DataFrame, label: str) -> Verdict:
    """Is one label κ-free? holds: κ-free on every sweep; False: some sweep is not κ-free;
    None: no sweep decided. The evidence has each sweep's slope, medians and class."""
    sweeps = {}
    for varying, fixed, threshold in SWEEPS:
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


def _labels(table: pd.DataFrame, algorithms: tuple[str, ...], mode: str | None = None):
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
        f"anchor {label}": classify(rows, label)
        for label, rows in _labels(table, ("sgd", "kfac")).items()
    }


def decide_c14(table: pd.DataFrame) -> Verdict:
    """C14: every exact Shampoo, SOAP and Muon label κ-free (``combine_parts``); the amortized
    labels, library KFAC and the anchors are reported alongside."""
    exact = _labels(table, ("shampoo", "soap", "muon"), "exact")
    if not exact:
        return Verdict(
            holds=None, evidence={}, summary="no exact-mode shampoo/soap/muon rows in the table"
        )
    deciding = combine_parts(
        {f"C14 {label}": classify(rows, label) for label, rows in exact.items()}
    )
    context = {
        f"C14 {label} (amortized)": classify(rows, label)
        for label, rows in _labels(table, ("shampoo", "soap", "muon"), "amortized").items()
    }
    context |= {
        label: classify(rows, label) for label, rows in _labels(table, ("library_kfac",)).items()
    }
    return _with_context(deciding, context | _anchors(table))


def decide_c18(table: pd.DataFrame) -> Verdict:
    """C18: every EKFAC label and every SOAP label (exact and amortized) κ-free."""
    labels = _labels(table, ("library_ekfac", "soap"))
    if not labels:
        return Verdict(
            holds=None, evidence={}, summary="no library_ekfac or soap rows in the table"
        )
    deciding = combine_parts(
        {f"C18 {label}": classify(rows, label) for label, rows in labels.items()}
    )
    context = {
        label: classify(rows, label) for label, rows in _labels(table, ("library_kfac",)).items()
    }
    return _with_context(deciding, context | _anchors(table))


_CLASSES = (
    f"each method label's slopes are C1/C2's (log-log slope of the median over seeds of "
    f"iterations to ε against κ(Σx) at κF = 1 and against κF at κ(Σx) = 1, a censored seed "
    f"counted as the budget); a label is κ-free when |slope| ≤ {SLOPE_FLAT} (C1's threshold) "
    f"against every κ swept, slows like SGD at slope ≥ {SLOPE_LINEAR} against κ(Σx) or "
    f"≥ {SLOPE_KAPPA_F} against κF (C2's thresholds), and in between it slows below C2's "
    f"threshold, which is not κ-free either; a sweep whose median is censored at every κ "
    f"(no convergence to ε within the budget at the tuned step size) or whose censored slope "
    f"is ≤ {SLOPE_FLAT} is undecided"
)

C14 = Claim(
    id="C14",
    statement="In linear representation learning, do Shampoo, SOAP and Muon (exact mode) "
    "contract at a rate free of κ(Σx) and κF like KFAC, rather than slowing down like SGD?",
    decide=decide_c14,
    rule=f"Holds when every exact-mode Shampoo, SOAP and Muon label is κ-free, does not hold "
    f"when one is not (decided labels only, combine_parts); {_CLASSES}. The amortized modes "
    f"(the optimizers' defaults), library KFAC and the sgd/kfac anchors are classified the same "
    f"way and reported, not decided on.",
    figure="layerwise",
)
C18 = Claim(
    id="C18",
    statement="Does Adam in the eigenbasis, on KFAC's factors (EKFAC) and on Shampoo's "
    "factors (SOAP, exact and amortized), keep KFAC's κ-free contraction in linear "
    "representation learning?",
    decide=decide_c18,
    rule=f"Holds when every EKFAC and SOAP label (exact and amortized) is κ-free, does not hold "
    f"when one is not (decided labels only, combine_parts); {_CLASSES}. Library KFAC and the "
    f"anchors are reported, not decided on.",
    figure="layerwise",
)
