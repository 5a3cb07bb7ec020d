"""The protocol on every data family and method (tiny sizes): columns, pairing, refusals."""

from __future__ import annotations

import math

import pytest

from layerwise.experiments.registry import MethodSpec, RunTask
from layerwise.problems.single_index.methods import METHOD_MODELS
from layerwise.problems.single_index.run import run_seeds, run_task
from layerwise.problems.single_index.settings import (
    KfacParams,
    SingleIndexSettings,
)

ALL_METHODS = {
    name: MethodSpec(name=name, params=(KfacParams(damping=0.1) if name == "kfac" else model()))
    for name, model in METHOD_MODELS.items()
}
SMALL = dict(d=12, n_validation=64, n_test=128)


@pytest.mark.parametrize(
    "options",
    [
        dict(covariance="spiked", kappa=5.0, target="aligned", link="he1_he2"),
        dict(covariance="power_law", kappa=20.0, target="orthogonal", activation="relu"),
        dict(rotated=False, kappa=10.0, link="relu", second_layer="sign", noise_std=0.1),
    ],
)
def test_every_method_runs_on_every_family(options):
    settings = SingleIndexSettings(**SMALL, n_over_d=2.0, **options)
    table = run_seeds(settings, ALL_METHODS, (0, 1))
    assert len(table) == 2 * len(ALL_METHODS)
    assert table["excess_risk"].notna().all() and (table["excess_risk"] >= 0).all()
    # No spike without a step (rf) or with all singular values equal (the exact muon step).
    no_spike = table["method"].isin(["rf", "muon"])
    assert table.loc[no_spike, "spike_align_beta"].isna().all()
    assert table.loc[~no_spike, "spike_align_beta"].between(0, 1 + 1e-12).all()
    stepped = table[table["method"] != "rf"]
    assert stepped["row_align_beta"].between(0, 1 + 1e-12).all()
    muon = table["method"] == "muon"  # n/d = 2, N = d: the closed form 1/√d
    assert table.loc[muon, "theory_row_align_beta"].sub(1 / math.sqrt(12)).abs().max() < 1e-12
    assert table.loc[~muon, "theory_row_align_beta"].isna().all()
    has_theory = table["method"].isin(["sgd", "kfac", "shampoo"])
    assert table.loc[has_theory, "theory_align_beta"].notna().all()
    assert table.loc[~has_theory, "theory_align_beta"].isna().all()
    if options.get("target") == "aligned":
        # β⋆ is an eigenvector: Σβ⋆ ∥ β⋆, the cap is 1.
        assert table["theory_cap"].sub(1.0).abs().max() < 1e-12


def test_methods_of_a_seed_share_instance_and_data():
    settings = SingleIndexSettings(**SMALL, n_over_d=2.0, kappa=10.0)
    together = run_seeds(settings, ALL_METHODS, (0, 1))
    alone = run_seeds(settings, {"sgd": ALL_METHODS["sgd"]}, (1,))
    row = together[(together["method"] == "sgd") & (together["seed"] == 1)].iloc[0]
    for column in ("spike_align_beta", "excess_risk", "theory_align_beta", "theory_cap"):
        assert row[column] == pytest.approx(alone.iloc[0][column], rel=1e-10)


def test_run_task_refuses_undamped_kfac_at_n_le_d():
    task = RunTask(
        experiment="single-index-alignment",
        settings=SingleIndexSettings(**SMALL, n_over_d=1.0),
        methods={"kfac": MethodSpec(name="kfac", params=KfacParams())},
        seeds=(0,),
    )
    with pytest.raises(ValueError, match="damping must be > 0 when n <= d"):
        run_task(task)


def test_readout_can_be_switched_off():
    settings = SingleIndexSettings(**SMALL, readout=False)
    table = run_seeds(settings, {"sgd": ALL_METHODS["sgd"]}, (0,))
    assert math.isnan(table.iloc[0]["excess_risk"])
    assert not math.isnan(table.iloc[0]["spike_align_beta"])
