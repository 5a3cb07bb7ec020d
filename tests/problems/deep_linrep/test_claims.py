"""C16's decision on synthetic tables (each part can hold, fail and be undecided) and the
registered experiment end to end on its quick config."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from layerwise.experiments import registry
from layerwise.problems.deep_linrep.claims import decide_c16

#: (κ(Σx), κF) points: the κ(Σx) sweep at κF = 1 and the κF sweep at κ(Σx) = 1.
POINTS = [(k, 1.0) for k in (1.0, 10.0, 100.0, 1000.0)] + [(1.0, 3.0), (1.0, 10.0)]


def _rows(method, algorithm, depth, lr, tuned, iterations_of_kappa, diverged=()):
    rows = []
    for kappa, kappa_f in POINTS:
        for seed in range(3):
            bad = (kappa, kappa_f, seed) in diverged
            rows.append(
                dict(
                    seed=seed,
                    method=method,
                    algorithm=algorithm,
                    depth=depth,
                    lr=lr,
                    lr_tuned=tuned,
                    kappa_x=kappa,
                    kappa_f=kappa_f,
                    iterations_to_eps=1000 if bad else iterations_of_kappa(kappa, kappa_f) + seed,
                    censored=bad,
                    diverged=bad,
                    eps=1e-3,
                    budget=1000,
                )
            )
    return rows


def _table(sgd_power=1.0, kfac_power=0.0, sgd_power_f=2.0, kfac_power_f=0.0, depths=(2, 4)):
    rows = []
    for depth in depths:
        rows += _rows(
            "sgd", "sgd", depth, 0.5, True, lambda k, f: int(20 * k**sgd_power * f**sgd_power_f)
        )
        rows += _rows(
            "kfac_eighth",
            "kfac",
            depth,
            0.125,
            False,
            lambda k, f: int(52 * k**kfac_power * f**kfac_power_f),
        )
        # Outside the stable range at depth 4 (2/5) and diverging: reported, not deciding.
        rows += _rows("kfac_half", "kfac", depth, 0.5, False, lambda k, f: 11, {(1.0, 1.0, 0)})
        rows += _rows("kfac", "kfac", depth, 1.0, True, lambda k, f: 1)
    return pd.DataFrame(rows)


def test_c16_holds_when_kfac_is_flat_and_sgd_linear_at_every_depth():
    verdict = decide_c16(_table())
    assert verdict.holds is True, verdict.summary
    parts = ("kfac", "sgd-κx", "sgd-κF")
    assert set(verdict.evidence) == {f"C16-{m} L={d}" for m in parts for d in (2, 4)}
    assert set(verdict.evidence["C16-kfac L=2"]) >= {
        "kfac_eighth (η=0.125) vs κ(Σx)",
        "kfac_eighth (η=0.125) vs κF",
    }
    depth4 = verdict.evidence["C16-kfac L=4"]
    assert depth4["outside_stable_range"] == ["kfac_half (η=0.5 >= 0.4)"]
    assert "kfac_half (η=0.5) vs κF" in verdict.evidence["C16-kfac L=2"]  # 0.5 < 2/3 decides


def test_c16_fails_when_sgd_does_not_slow_or_kfac_depends_on_kappa():
    assert decide_c16(_table(sgd_power=0.5)).evidence["C16-sgd-κx L=2"]["holds"] is False
    slow_f = decide_c16(_table(sgd_power_f=0.3))
    assert slow_f.holds is False and slow_f.evidence["C16-sgd-κx L=2"]["holds"] is True
    for changes in ({"kfac_power": 0.3}, {"kfac_power_f": 0.3}):
        verdict = decide_c16(_table(**changes))
        assert verdict.holds is False
        assert verdict.evidence["C16-kfac L=2"]["holds"] is False


def test_c16_counts_divergence_as_the_budget_and_reports_it():
    table = _table()
    table = table[table["method"] != "kfac_half"]
    diverging = _rows(
        "kfac_eighth",
        "kfac",
        2,
        0.125,
        False,
        lambda k, f: 52,
        {(1000.0, 1.0, 0), (1000.0, 1.0, 1)},
    )
    table = pd.concat(
        [
            table[~((table["method"] == "kfac_eighth") & (table["depth"] == 2))],
            pd.DataFrame(diverging),
        ]
    )
    verdict = decide_c16(table)
    part = verdict.evidence["C16-kfac L=2"]["kfac_eighth (η=0.125) vs κ(Σx)"]
    assert part["diverged_seeds"]["1000"] == 2 and part["median_iterations"]["1000"] == 1000
    assert verdict.evidence["C16-kfac L=2"]["holds"] is False


def test_c16_undecided_parts_say_what_is_missing():
    table = _table()
    only_sgd = table[table["algorithm"] == "sgd"]
    verdict = decide_c16(only_sgd)
    assert verdict.holds is True
    assert "no kfac or library_kfac rows" in verdict.evidence["undecided_parts"]["C16-kfac L=2"]
    assert decide_c16(table.iloc[0:0]).holds is None


@pytest.mark.slow
def test_quick_experiment_runs_decides_and_draws():
    from tests.problems.linrep.quick import run_quick

    table, config = run_quick("deep-linrep-kappa")
    assert set(table["method"]) == set(config.methods)
    assert set(table["depth"]) == {2, 4}
    verdict = config.experiment.claims[0].decide(table)
    assert verdict.holds in (True, False), verdict.summary
    evidence = verdict.evidence["C16-kfac L=4"]
    assert not np.isnan(evidence["kfac_eighth (η=0.125) vs κ(Σx)"]["slope"])
    assert not np.isnan(evidence["kfac_eighth (η=0.125) vs κF"]["slope"])
    for figure in config.experiment.figures.values():
        fig = figure(table)
        assert len(fig.axes) == 2
        plt.close(fig)


def test_registered_with_its_claim_and_caption():
    experiment = registry.experiment("deep-linrep-kappa")
    assert experiment.problem == "deep_linrep"
    assert [c.id for c in experiment.claims] == ["C16"]
    assert experiment.claims[0].rule and set(experiment.captions) == set(experiment.figures)


def test_kappa_figure_has_a_panel_per_depth_and_the_stable_theory_lines():
    from layerwise.problems.deep_linrep.figures import kappa

    fig = kappa(_table())
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title()[:5] for ax in axes] == ["L = 2", "L = 4"]
    theory = [
        [line.get_label() for line in ax.get_lines() if "log ε" in line.get_label()] for ax in axes
    ]
    # η = ½ is below 2/3 at L = 2 but not below 2/5 at L = 4; η = 1 (tuned) never gets a line.
    assert theory == [
        ["log ε / log(1 − η), η = 0.125", "log ε / log(1 − η), η = 0.5"],
        ["log ε / log(1 − η), η = 0.125"],
    ]
    assert fig.legends or axes[-1].get_legend() is not None
    plt.close(fig)


def test_kappa_f_figure_sweeps_kappa_f_at_the_smallest_kappa_x():
    from layerwise.problems.deep_linrep.figures import kappa_f

    fig = kappa_f(_table())
    axes = [ax for ax in fig.axes if ax.get_title()]
    sgd = [line for line in axes[0].get_lines() if line.get_label() == "SGD"]
    assert len(sgd) == 1
    # The grid values, all shifted by the one factor of the method's dodge.
    shifted = np.asarray(sgd[0].get_xdata(), dtype=float) / np.array([1.0, 3.0, 10.0])
    assert np.allclose(shifted, shifted[0]) and abs(np.log(shifted[0])) < 0.2
    assert axes[0].get_xlabel().startswith("κF")
    plt.close(fig)
