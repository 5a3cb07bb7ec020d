"""Decisions of C17 (many small steps) on synthetic tables: holds, does not hold, undecided."""

from __future__ import annotations

import itertools

import pandas as pd

from layerwise.problems.single_index_many_steps import claims


def _many_steps_table(finals: dict[str, float], kappas=(10.0, 100.0)) -> pd.DataFrame:
    """Spike alignments with β⋆ at steps 1 (0.5 for all) and 20 (``finals``), three seeds."""
    rows = []
    for (label, final), kappa, step, offset in itertools.product(
        finals.items(), kappas, (1, 20), (-0.01, 0.0, 0.01)
    ):
        rows.append(
            dict(
                method=label,
                algorithm=label,
                kappa=kappa,
                link="tanh",
                step=step,
                spike_align_beta=(final if step == 20 else 0.5) + offset,
            )
        )
    return pd.DataFrame(rows)


def test_c17_holds_when_kfac_leads_and_adam_is_in_between():
    verdict = claims.decide_many_steps(
        _many_steps_table({"sgd": 0.6, "kfac": 0.95, "adam": 0.7, "muon": 0.1})
    )
    assert verdict.holds is True
    assert verdict.evidence["not decided"]["muon"]["tanh,kappa=100"]["position"] == "below sgd"


def test_c17_does_not_hold_when_adam_falls_below_sgd_or_kfac_does_not_lead():
    below = claims.decide_many_steps(_many_steps_table({"sgd": 0.6, "kfac": 0.95, "adam": 0.5}))
    assert below.holds is False
    assert below.evidence["C17-kfac-vs-sgd"]["holds"] is True
    assert below.evidence["C17-adam-between"]["holds"] is False
    close = claims.decide_many_steps(_many_steps_table({"sgd": 0.6, "kfac": 0.65, "adam": 0.62}))
    assert close.holds is False and close.evidence["C17-kfac-vs-sgd"]["holds"] is False


def test_c17_undecided_without_kfac_or_anisotropy():
    assert claims.decide_many_steps(_many_steps_table({"sgd": 0.6})).holds is None
    isotropic = _many_steps_table({"sgd": 0.6, "kfac": 0.9}, kappas=(1.0,))
    assert claims.decide_many_steps(isotropic).holds is None
