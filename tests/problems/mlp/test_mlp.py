"""The mlp problem: its training loop against a hand-written one, pairing, determinism, the
method registry, its claim's decision, and its shipped config."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from layerwise import optim
from layerwise.experiments.config import find_config, load_config
from layerwise.experiments.registry import MethodSpec, RunTask
from layerwise.problems.mlp import claims, data, experiments, methods, run, settings

TINY = settings.MLPSettings(
    d_in=3,
    hidden=5,
    teacher_hidden=2,
    d_out=2,
    n_train=16,
    n_test=8,
    steps=6,
    batch_size=4,
    eval_every=2,
)


def task(specs: dict[str, MethodSpec], seeds=(0,)) -> RunTask:
    return RunTask(experiment="mlp-optimizers", settings=TINY, methods=specs, seeds=seeds)


def sgd(lr: float) -> MethodSpec:
    return MethodSpec(name="sgd", params=settings.SGDParams(lr=lr))


def reference_sgd_losses(mlp_settings: settings.MLPSettings, seed: int, lr: float) -> list[tuple]:
    """SGD on the mean squared error with the gradients written out by hand, in numpy."""
    seeded = data.streams(seed)
    (x, y), (x_test, y_test) = (
        tuple(t.numpy() for t in pair) for pair in data.teacher_data(mlp_settings, seeded.data)
    )
    net = run.student(mlp_settings, seeded.init)
    w, a = net[0].weight.detach().numpy().copy(), net[2].weight.detach().numpy().copy()

    def mse(xs, ys):
        return float(np.mean((np.tanh(xs @ w.T) @ a.T - ys) ** 2))

    losses = [(0, mse(x, y), mse(x_test, y_test))]
    for step in range(1, mlp_settings.steps + 1):
        index = torch.randint(
            mlp_settings.n_train, (mlp_settings.batch_size,), generator=seeded.batches
        ).numpy()
        xb, yb = x[index], y[index]
        hidden = np.tanh(xb @ w.T)  # (batch, hidden)
        residual = 2 * (hidden @ a.T - yb) / yb.size  # d(mean e²)/d prediction
        grad_a = residual.T @ hidden
        grad_w = ((residual @ a) * (1 - hidden**2)).T @ xb
        w, a = w - lr * grad_w, a - lr * grad_a
        if step % mlp_settings.eval_every == 0:
            losses.append((step, mse(x, y), mse(x_test, y_test)))
    return losses


def test_training_loop_matches_hand_written_sgd():
    table = run.run_task(task({"sgd": sgd(0.3)}, seeds=(0, 5)))
    for seed in (0, 5):
        rows = table[table["seed"] == seed]
        expected = reference_sgd_losses(TINY, seed, 0.3)
        assert list(rows["step"]) == [step for step, _, _ in expected]
        np.testing.assert_allclose(rows["train_loss"], [r[1] for r in expected], rtol=1e-12)
        np.testing.assert_allclose(rows["test_loss"], [r[2] for r in expected], rtol=1e-12)
    assert table.loc[table["step"] == 6, "train_loss"].gt(0).all()


def test_methods_are_paired_per_seed_and_runs_are_deterministic():
    specs = {"slow": sgd(0.01), "fast": sgd(0.5)}
    table = run.run_task(task(specs, seeds=(0, 1)))
    start = table[table["step"] == 0].set_index(["seed", "method"])["test_loss"]
    assert start[0, "slow"] == start[0, "fast"]  # same teacher, data and initialisation
    assert start[0, "slow"] != start[1, "slow"]  # another seed, another instance
    end = table[table["step"] == TINY.steps].set_index(["seed", "method"])["train_loss"]
    assert end[0, "slow"] != end[0, "fast"]
    pd.testing.assert_frame_equal(run.run_task(task(specs, seeds=(0, 1))), table)


def _ratio_table(ratios_by_method: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for method, ratios in ratios_by_method.items():
        for seed, ratio in enumerate(ratios):
            rows += [
                dict(method=method, seed=seed, step=0, test_loss=2.0),
                dict(method=method, seed=seed, step=10, test_loss=2.0 * ratio),
            ]
    return pd.DataFrame(rows)


def test_held_out_claim_uses_the_median_ratio_over_seeds():
    verdict = claims.decide_held_out(_ratio_table({"a": [0.1, 0.2, 0.9], "b": [0.3, 0.4, 0.45]}))
    assert verdict.holds is True
    ratios = verdict.evidence["final_over_initial_test_loss"]
    assert ratios == pytest.approx({"a": 0.2, "b": 0.4}, rel=1e-12)
    verdict = claims.decide_held_out(_ratio_table({"a": [0.1, 0.2, 0.9], "b": [0.6, 0.7, 0.1]}))
    assert verdict.holds is False and "worst b (0.6" in verdict.summary


EXPECTED_CLASSES = {
    "sgd": torch.optim.SGD,
    "adamw": torch.optim.AdamW,
    "shampoo": optim.Shampoo,
    "soap": optim.SOAP,
    "muon": optim.Muon,
    "kfac": optim.KFAC,
}


@pytest.mark.parametrize("algorithm", sorted(EXPECTED_CLASSES))
def test_every_method_builds_its_optimizer_with_the_given_step_size(algorithm):
    net = run.student(TINY, torch.Generator().manual_seed(0))
    params = methods.METHODS[algorithm].params_model(lr=0.0123)
    optimizer = methods.build_optimizer(net, algorithm, params)
    assert type(optimizer) is EXPECTED_CLASSES[algorithm]
    assert {group["lr"] for group in optimizer.param_groups} == {0.0123}
    assert experiments.PROBLEM.method_models[algorithm] is type(params)


def test_unknown_method_is_refused_by_name():
    net = run.student(TINY, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="'lbfgs'"):
        methods.build_optimizer(net, "lbfgs", settings.SGDParams())


@pytest.mark.parametrize("quick", [False, True])
def test_shipped_config_is_valid(quick):
    config = load_config(find_config("mlp-optimizers"), quick=quick)
    assert config.experiment is experiments.EXPERIMENT
    assert len(config.seeds) >= 2
    assert set(config.methods) <= set(methods.METHODS)
