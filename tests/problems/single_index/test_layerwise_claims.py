"""Decisions of C15 (one shampoo/muon step) on synthetic tables: holds, does not hold,
undecided."""

from __future__ import annotations

import itertools

import pandas as pd

from layerwise.problems.single_index import claims

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
    verdict = claims.decide_spectral_step(table)
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
    verdict = claims.decide_spectral_step(table)
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
    assert claims.decide_spectral_step(no_kfac).holds is None
    alike = _one_step_table(
        {"sgd": ("sgd", 0.9, 0.9), "kfac": ("kfac", 0.92, 0.9), "muon": ("muon", 0.9, 0.9)}
    )
    verdict = claims.decide_spectral_step(alike)
    assert verdict.holds is None and "undecided" in verdict.summary
    isotropic_only = _one_step_table({**REFERENCES, "muon": ("muon", 0.1, 0.1)}, kappas=(1.0,))
    assert claims.decide_spectral_step(isotropic_only).holds is None
