"""Decisions of C15 (one shampoo/muon step) and C17 (many steps) on synthetic tables: holds,
does not hold, undecided."""

from __future__ import annotations

import itertools

import pandas as pd

from layerwise.problems.single_index import many_steps_claims, shampoo_muon

D = 64  # chance level 1/√d = 0.125


def _one_step_table(
    values: dict[str, tuple[str, float, float]], kappas=(1.0, 100.0)
) -> pd.DataFrame:
    """Rows for label -> (algorithm, row alignment with β⋆, with Σβ⋆), at two n/d and three
    seeds (±0.01 around the value); at n/d = 1 every method sits at 0.3 (not the decided point)."""
    rows = []
    for (label, (algorithm, beta, sigma_beta)), kappa, ratio, offset in itertools.product(
        values.items(), kappas, (1.0, 8.0), (-0.01, 0.0, 0.01)
    ):
        final = ratio == 8.0
        rows.append(
            dict(
                method=label,
                algorithm=algorithm,
                kappa=kappa,
                n_over_d=ratio,
                d=D,
                link="tanh",
                row_align_beta=(beta if final else 0.3) + offset,
                row_align_sigma_beta=(sigma_beta if final else 0.3) + offset,
            )
        )
    return pd.DataFrame(rows)


REFERENCES = {"sgd": ("sgd", 0.6, 0.97), "kfac": ("kfac", 0.95, 0.6)}


def test_c15_holds_only_when_every_label_aligns_like_kfac():
    table = _one_step_table({**REFERENCES, "shampoo_x": ("shampoo", 0.93, 0.62)})
    verdict = shampoo_muon.decide_spectral_step(table)
    assert verdict.holds is True
    assert verdict.evidence["C15-shampoo_x"]["tanh,kappa=100"]["class"] == "like kfac"


def test_c15_does_not_hold_and_names_where_each_label_falls():
    table = _one_step_table(
        {
            **REFERENCES,
            "shampoo_1": ("shampoo", 0.61, 0.96),
            "shampoo_1e-2": ("shampoo", 0.45, 0.8),
            "muon": ("muon", 0.125, 0.13),
        }
    )
    verdict = shampoo_muon.decide_spectral_step(table)
    assert verdict.holds is False
    classes = {
        part: verdict.evidence[part]["tanh,kappa=100"]["class"]
        for part in ("C15-shampoo_1", "C15-shampoo_1e-2", "C15-muon")
    }
    assert classes == {
        "C15-shampoo_1": "like sgd",
        "C15-shampoo_1e-2": "between sgd and chance",
        "C15-muon": "chance",
    }
    assert "kappa=1," not in str(verdict.evidence)  # κ = 1 is not decided on


def test_c15_undecided_without_references_or_when_kfac_equals_sgd():
    no_kfac = _one_step_table({"sgd": REFERENCES["sgd"], "muon": ("muon", 0.12, 0.12)})
    assert shampoo_muon.decide_spectral_step(no_kfac).holds is None
    alike = _one_step_table(
        {"sgd": ("sgd", 0.9, 0.9), "kfac": ("kfac", 0.92, 0.9), "muon": ("muon", 0.9, 0.9)}
    )
    verdict = shampoo_muon.decide_spectral_step(alike)
    assert verdict.holds is None and "undecided" in verdict.summary
    isotropic_only = _one_step_table({**REFERENCES, "muon": ("muon", 0.1, 0.1)}, kappas=(1.0,))
    assert shampoo_muon.decide_spectral_step(isotropic_only).holds is None


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
    verdict = many_steps_claims.decide_many_steps(
        _many_steps_table({"sgd": 0.6, "kfac": 0.95, "adam": 0.7, "muon": 0.1})
    )
    assert verdict.holds is True
    assert verdict.evidence["not decided"]["muon"]["tanh,kappa=100"]["position"] == "below sgd"


def test_c17_does_not_hold_when_adam_falls_below_sgd_or_kfac_does_not_lead():
    below = many_steps_claims.decide_many_steps(
        _many_steps_table({"sgd": 0.6, "kfac": 0.95, "adam": 0.5})
    )
    assert below.holds is False
    assert below.evidence["C17-kfac-vs-sgd"]["holds"] is True
    assert below.evidence["C17-adam-between"]["holds"] is False
    close = many_steps_claims.decide_many_steps(
        _many_steps_table({"sgd": 0.6, "kfac": 0.65, "adam": 0.62})
    )
    assert close.holds is False and close.evidence["C17-kfac-vs-sgd"]["holds"] is False


def test_c17_undecided_without_kfac_or_anisotropy():
    assert many_steps_claims.decide_many_steps(_many_steps_table({"sgd": 0.6})).holds is None
    isotropic = _many_steps_table({"sgd": 0.6, "kfac": 0.9}, kappas=(1.0,))
    assert many_steps_claims.decide_many_steps(isotropic).holds is None
