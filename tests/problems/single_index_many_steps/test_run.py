"""The many-step run (claim C17): reproducible, paired across methods, norm-matched, and its
first step equal to the one-step methods' directions."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from layerwise import optim
from layerwise.experiments.registry import MethodSpec
from layerwise.optim.matrix import polar_svd
from layerwise.problems.single_index import onestep
from layerwise.problems.single_index_many_steps.data import make_instance, step_batches
from layerwise.problems.single_index_many_steps.methods import batch_loss
from layerwise.problems.single_index_many_steps.run import run_seeds, train
from layerwise.problems.single_index_many_steps.settings import (
    ManyKfacParams,
    ManySgdParams,
    ManyStepsSettings,
    OptimizerParams,
    check_method,
)

SETTINGS = ManyStepsSettings(d=10, n_over_d=3, kappa=20, steps=6, record_every=3, n_test=64)
METHODS = {
    "sgd": MethodSpec(name="sgd", params=ManySgdParams()),
    "kfac": MethodSpec(name="kfac", params=ManyKfacParams(damping=1e-3)),
    "adam": MethodSpec(name="adam", params=OptimizerParams()),
    "shampoo": MethodSpec(name="shampoo", params=OptimizerParams(options={"exact": True})),
    "soap": MethodSpec(name="soap", params=OptimizerParams()),
    "muon": MethodSpec(name="muon", params=OptimizerParams()),
}
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return run_seeds(SETTINGS, METHODS, SEEDS)


def test_rows_and_recorded_steps(table):
    assert SETTINGS.recorded_steps == (1, 3, 6)
    assert len(table) == len(METHODS) * len(SEEDS) * 3
    assert table[["spike_align_beta", "row_align_beta", "test_loss"]].notna().all().all()


def test_reproducible_for_a_seed_and_paired_across_methods(table):
    again = run_seeds(SETTINGS, METHODS, SEEDS)
    pd.testing.assert_frame_equal(table, again)
    alone = run_seeds(SETTINGS, {"kfac": METHODS["kfac"]}, (1,))
    together = table[(table["method"] == "kfac") & (table["seed"] == 1)].reset_index(drop=True)
    pd.testing.assert_frame_equal(together, alone, check_exact=False, rtol=1e-10)
    # Every method saw the same first batch at the same W0: the same loss before step 1.
    first = table[table["step"] == 1].groupby("seed")["batch_loss"]
    assert (first.max() - first.min()).max() < 1e-14


def test_first_updates_are_norm_matched_to_sgd(table):
    first = table[table["step"] == 1].pivot(index="seed", columns="method", values="update_norm")
    for method in METHODS:
        torch.testing.assert_close(
            torch.tensor(first[method].values), torch.tensor(first["sgd"].values), rtol=1e-9, atol=0
        )


def test_first_step_has_the_one_step_directions():
    instance = make_instance(SETTINGS, SEEDS)
    x, y = step_batches(SETTINGS, instance)
    for name, one_step in (
        ("sgd", lambda w, a, xb, yb: onestep.sgd_step(w, a, xb, yb, lr=1.0, activation="tanh")),
        (
            "kfac",
            lambda w, a, xb, yb: onestep.kfac_step(
                w, a, xb, yb, lr=1.0, damping=1e-3, activation="tanh"
            ),
        ),
    ):
        for s in range(len(SEEDS)):
            weights, _ = train(METHODS[name], SETTINGS, instance.w0[s], instance.a[s], x[s], y[s])
            moved = weights[1] - instance.w0[s]
            expected = one_step(instance.w0[s : s + 1], instance.a[s : s + 1], x[s, :1], y[s, :1])
            cosine = (moved * expected[0]).sum() / (moved.norm() * expected[0].norm())
            assert float(cosine) == pytest.approx(1.0, abs=1e-10)
            # ... and the step is lr/T of the one-step update (sgd) or norm-matched to it (kfac).
            sgd = onestep.sgd_step(
                instance.w0[s : s + 1],
                instance.a[s : s + 1],
                x[s, :1],
                y[s, :1],
                lr=1.0 / SETTINGS.steps,
                activation="tanh",
            )
            assert float(moved.norm()) == pytest.approx(float(sgd.norm()), rel=1e-9)


def test_same_batch_policy_reuses_the_first_batch():
    settings = ManyStepsSettings(**{**SETTINGS.model_dump(), "batches": "same"})
    x, y = step_batches(settings, make_instance(settings, SEEDS))
    assert x.shape[1] == settings.steps and torch.equal(x[:, 0], x[:, -1])
    assert torch.equal(y[:, 0], y[:, -1])


def test_settings_refuse_bad_values():
    with pytest.raises(ValueError, match="record_every=7 must be <= steps=6"):
        ManyStepsSettings(steps=6, record_every=7)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        ManyStepsSettings(steps=0, record_every=1)
    with pytest.raises(ValueError, match=r"shampoo: options \{'betas_typo': 1\} refused"):
        check_method(SETTINGS, "shampoo", OptimizerParams(options={"betas_typo": 1}))
    with pytest.raises(ValueError, match="adam: options"):
        check_method(SETTINGS, "adam", OptimizerParams(options={"lr": -1}))
    with pytest.raises(ValueError, match="kfac: damping must be > 0"):
        check_method(
            ManyStepsSettings(d=10, n_over_d=1),
            "kfac",
            ManyKfacParams(damping=0),
        )


def test_soap_first_step_is_the_polar_factor_of_the_gradient():
    # From zero state in the exact eigenbases of GGᵀ and GᵀG, SOAP's Adam sees diag(S) and
    # takes its sign: U Vᵀ, the muon step (docs/beyond_the_paper.md, C15 and C17).
    instance = make_instance(SETTINGS, (0,))
    x, y = step_batches(SETTINGS, instance)
    model = onestep.TwoLayerNetwork(instance.w0[0], instance.a[0], "tanh")
    optimizer = optim.SOAP(model.parameters(), lr=1.0)
    batch_loss(model, x[0, 0], y[0, 0]).backward()
    gradient = model.first.weight.grad.clone()
    optimizer.step()
    moved = model.first.weight.detach() - instance.w0[0]
    polar = -polar_svd(gradient)

    def cosine(u, v):
        return float((u * v).sum() / (u.norm() * v.norm()))

    assert cosine(moved, polar) > 0.9999
    assert cosine(-gradient, polar) < 0.95  # the gradient itself is far from its polar factor
