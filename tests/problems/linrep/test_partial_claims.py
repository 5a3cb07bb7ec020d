"""Issue 15: claims decide each part the stored table can decide, per method label, and name
what is missing for the others (configs that omit an optional part, two labels of one
algorithm)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from layerwise.problems.linrep import claims

ALGORITHM = {"sgd": "sgd", "amd": "amd", "adam": "adam", "adam_slow": "adam", "bn": "batchnorm"}


def _iterations_table(slopes, sweeps, basis="rotated") -> pd.DataFrame:
    """Median-free synthetic rows: iterations = 20·κx^s·κF^s (+ seed), for each label."""
    rows = []
    for label, slope in slopes.items():
        for kappa_x, kappa_f in sweeps:
            for seed in range(3):
                rows.append(
                    dict(
                        seed=seed,
                        method=label,
                        algorithm=ALGORITHM[label],
                        lr=0.1,
                        lr_tuned=True,
                        kappa_x=float(kappa_x),
                        kappa_f=float(kappa_f),
                        basis=basis,
                        censored=False,
                        iterations_to_eps=round(20 * (kappa_x * kappa_f) ** slope) + seed,
                    )
                )
    return pd.DataFrame(rows)


KAPPA_X_SWEEP = [(1, 1), (10, 1), (100, 1), (1000, 1)]
KAPPA_F_SWEEP = [(1, 1), (1, 3), (1, 10)]


def test_c2_decides_its_kappa_f_part_without_a_kappa_x_sweep():
    table = _iterations_table({"sgd": 1.0, "amd": 1.0}, KAPPA_F_SWEEP)
    verdict = claims.decide_c2(table)
    assert verdict.holds is True
    assert verdict.evidence["C2-κF"]["sgd vs kappa_f"]["slope"] == pytest.approx(1.0, abs=0.05)
    reason = verdict.evidence["undecided_parts"]["C2-κx"]
    assert "fewer than two kappa_x values >= 10" in reason and "kappa_x 1" in reason
    # A decided part that fails makes the claim fail, whatever the other part.
    flat = claims.decide_c2(_iterations_table({"sgd": 0.0, "amd": 0.0}, KAPPA_F_SWEEP))
    assert flat.holds is False


def test_c2_with_both_sweeps_and_without_amd():
    table = _iterations_table({"sgd": 1.0}, KAPPA_X_SWEEP + KAPPA_F_SWEEP)
    verdict = claims.decide_c2(table)
    assert verdict.holds is True and "undecided_parts" not in verdict.evidence
    assert verdict.evidence["C2-κx"]["missing"] == ["no amd rows (not among the methods)"]
    # Nothing to decide: undecided, and the summary says what is missing.
    nothing = claims.decide_c2(_iterations_table({"adam": 1.0}, KAPPA_X_SWEEP))
    assert nothing.holds is None and "no sgd rows" in nothing.summary


def test_c3_names_the_grid_it_lacks():
    verdict = claims.decide_c3(_iterations_table({"sgd": 1.0}, [(10, 1), (100, 1)]))
    assert verdict.holds is None and "kappa_x 10, 100" in verdict.summary


def test_c5_decides_per_label_and_the_rotated_part_alone():
    rotated = _iterations_table({"adam": 0.8, "adam_slow": 0.1}, KAPPA_X_SWEEP)
    verdict = claims.decide_c5(rotated)
    # Two labels of one algorithm are decided separately, not pooled.
    assert verdict.evidence["C5-rotated adam"]["holds"] is True
    assert verdict.evidence["C5-rotated adam_slow"]["holds"] is False
    assert verdict.holds is False
    assert "needs axis-aligned rows" in verdict.evidence["undecided_parts"]["C5-axis-aligned adam"]
    only_adam = rotated[rotated["method"] == "adam"]
    axis = _iterations_table({"adam": 0.2}, KAPPA_X_SWEEP, basis="axis_aligned")
    both = claims.decide_c5(pd.concat([only_adam, axis]))
    assert both.holds is True and set(both.evidence) == {"C5-rotated", "C5-axis-aligned"}


def test_c6_without_batchnorm_says_so():
    verdict = claims.decide_c6(_iterations_table({"sgd": 1.0}, KAPPA_X_SWEEP))
    assert verdict.holds is None and verdict.summary == "no batchnorm rows (not among the methods)"


def _floor_table(methods) -> pd.DataFrame:
    return pd.DataFrame(
        [
            dict(
                method=label,
                algorithm=algorithm,
                n_effective_minus_d=m,
                stationary_distance=scale / np.sqrt(m) if m else np.nan,
            )
            for label, algorithm, scale, sizes in methods
            for m in sizes
        ]
    )


def test_c8_without_dfw_in_the_config_decides_kfac_and_says_dfw_is_absent():
    verdict = claims.decide_c8(_floor_table([("kfac", "kfac", 1.0, (50, 150, 350))]))
    assert verdict.holds is True
    assert verdict.evidence["undecided_parts"] == {
        "C8-dfw": "no dfw rows (dfw is not among the methods)"
    }
    assert "fewer than two sample sizes" not in verdict.summary


def test_c8_with_one_dfw_sample_size_and_two_kfac_labels():
    verdict = claims.decide_c8(
        _floor_table(
            [
                ("kfac", "kfac", 1.0, (50, 150, 350)),
                ("kfac_flat", "kfac", 1.0, (50, 150, 350)),
                ("dfw", "dfw", 2.0, (50,)),
            ]
        )
    )
    assert verdict.evidence["undecided_parts"]["C8-dfw"] == (
        "dfw: fewer than two sample sizes (n_eff - d: 50)"
    )
    assert set(verdict.evidence["C8-kfac"]) == {"holds", "kfac", "kfac_flat", "range"}


def test_c7_compares_each_label():
    rows = []
    for label, algorithm, risk in (
        ("kfac", "kfac", 1.0),
        ("kfac_bad", "kfac", 5.0),
        ("sgd", "sgd", 2.0),
    ):
        for seed in range(3):
            rows.append(
                dict(
                    seed=seed,
                    method=label,
                    algorithm=algorithm,
                    n_transfer=10,
                    transfer_risk=risk,
                    lr=0.1,
                )
            )
    verdict = claims.decide_c7(pd.DataFrame(rows))
    ratios = verdict.evidence["ratios"]
    assert ratios["sgd / kfac at n_transfer=10"] == pytest.approx(2.0)
    assert ratios["sgd / kfac_bad at n_transfer=10"] == pytest.approx(0.4)
    assert verdict.holds is False


def test_c4_names_the_kfac_label_it_compares_against():
    rows = []
    for label, algorithm, damping, iterations in (
        ("kfac", "kfac", np.nan, 40),
        ("kfac_fast", "kfac", np.nan, 10),
        ("gauss_newton", "gauss_newton", 1e-3, 20),
    ):
        for seed in range(2):
            rows.append(
                dict(
                    seed=seed,
                    method=label,
                    algorithm=algorithm,
                    damping=damping,
                    kappa_x=10.0,
                    iterations_to_eps=iterations,
                    censored=False,
                    diverged=False,
                    seconds_per_iteration=1.0,
                )
            )
    verdict = claims.decide_c4(pd.DataFrame(rows))
    evidence = verdict.evidence["gauss_newton kappa_x=10"]
    assert evidence["kfac_best_label"] == "kfac_fast" and evidence["kfac_best_iterations"] == 10
    assert verdict.holds is True  # 20 iterations against kfac_fast's 10: slower
