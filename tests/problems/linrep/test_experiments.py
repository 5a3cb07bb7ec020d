"""Each quick experiment runs end to end, decides its claims and draws its figures."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from layerwise.experiments import registry
from layerwise.problems.linrep import claims

from . import quick as quick_module
from .quick import run_quick

EXPERIMENTS = [
    "linrep-trajectories",
    "linrep-kappa",
    "linrep-basis",
    "linrep-transfer",
    "linrep-floor",
    "linrep-second-order",
]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_quick_experiment_runs_and_decides(name):
    table, config = run_quick(name)
    assert {"seed", "method", "lr", "lr_tuned"} <= set(table.columns)
    assert set(table["method"]) == set(config.methods)
    assert set(table["seed"]) == set(config.seeds)
    for claim in config.experiment.claims:
        verdict = claim.decide(table)
        assert verdict.holds in (True, False), (claim.id, verdict.summary)
        assert verdict.evidence and verdict.summary
    for figure in config.experiment.figures.values():
        fig = figure(table)
        assert isinstance(fig, Figure) and fig.axes
        plt.close(fig)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_full_configs_validate(name):
    from layerwise.experiments.config import load_config

    from .quick import CONFIGS

    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.experiment.name == name and config.points
    assert len(config.seeds) == 10


def test_registered_experiments_and_claims():
    experiments = registry.experiments()
    for name in EXPERIMENTS:
        assert experiments[name].problem == "linrep"
    ids = sorted(c.id for name in EXPERIMENTS for c in experiments[name].claims)
    assert ids == [f"C{i}" for i in range(1, 9)]


def test_trajectory_rows_are_paired_across_methods():
    table, _ = run_quick("linrep-trajectories")
    start = table[table["iteration"] == 0]
    # Same seed -> same initialization -> same initial distance for every method.
    spread = start.groupby("seed")["distance"].agg(lambda v: v.max() - v.min())
    assert (spread < 1e-12).all()


def _kappa_table(slopes: dict[str, float], kappas=(1.0, 10.0, 100.0, 1000.0)) -> pd.DataFrame:
    rows = []
    for label, slope in slopes.items():
        algorithm, lr, tuned = {
            "kfac_half": ("kfac", 0.5, False),
            "sgd": ("sgd", 0.1, True),
            "amd": ("amd", 0.1, True),
        }[label]
        for kappa in kappas:
            for seed in range(3):
                rows.append(
                    dict(
                        seed=seed,
                        method=label,
                        algorithm=algorithm,
                        lr=lr,
                        lr_tuned=tuned,
                        kappa_x=kappa,
                        kappa_f=1.0,
                        censored=False,
                        iterations_to_eps=round(20 * kappa**slope) + seed,
                    )
                )
    return pd.DataFrame(rows)


def test_slope_claims_on_synthetic_tables():
    assert claims.loglog_slope([1, 10, 100], [3, 30, 300]) == pytest.approx(1.0)
    flat = claims.decide_c1(_kappa_table({"kfac_half": 0.0}))
    steep = claims.decide_c1(_kappa_table({"kfac_half": 0.5}))
    assert flat.holds is True and steep.holds is False
    # Without a κF sweep C2 decides its κx part and names the κF part as undecided (issue 15).
    partial = claims.decide_c2(_kappa_table({"sgd": 1.0, "amd": 1.0}))
    assert partial.holds is True and "C2-κF" in partial.evidence["undecided_parts"]


def test_floor_claim_on_synthetic_table():
    rows = [
        dict(method=a, algorithm=a, n_effective_minus_d=m, stationary_distance=c / np.sqrt(m))
        for a, c in (("kfac", 1.0), ("dfw", 2.0))
        for m in (50, 150, 350, 750)
    ]
    verdict = claims.decide_c8(pd.DataFrame(rows))
    assert verdict.holds is True
    assert verdict.evidence["C8-kfac"]["kfac"]["slope"] == pytest.approx(-0.5)


def test_floor_quick_through_the_runner_store_and_report(tmp_path):
    from layerwise.experiments import report
    from layerwise.experiments.config import load_config
    from layerwise.experiments.executors import InProcessExecutor
    from layerwise.experiments.runner import run_experiment

    from .quick import CONFIGS

    config = load_config(CONFIGS / "linrep-floor.yaml", quick=True)
    summary = run_experiment(config, tmp_path, InProcessExecutor(), progress=False)
    assert not summary.failed and summary.done == summary.total
    (section,) = [s for s in report.build(tmp_path) if s.name == "linrep-floor"]
    assert not section.figure_errors
    assert [c.verdict.holds in (True, False) for c in section.claims] == [True]


def test_tables_are_deterministic_except_the_declared_timing_columns():
    """Same config and seeds -> identical rows; only `Experiment.timing_columns` may differ."""
    first, config = run_quick("linrep-transfer")
    rerun = quick_module._run_quick.__wrapped__("linrep-transfer")[0]
    timing = list(config.experiment.timing_columns)
    assert timing == ["seconds_per_iteration"]
    pd.testing.assert_frame_equal(first.drop(columns=timing), rerun.drop(columns=timing))
