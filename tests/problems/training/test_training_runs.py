"""Training runs: tuning seeds disjoint from reported seeds, the tuning choice, divergence,
unavailable peers, attention preconditioned by KFAC, the claims, and a quick end-to-end run."""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from layerwise.experiments import report, runner, store
from layerwise.experiments.config import find_config, load_config
from layerwise.experiments.executors import make_executor
from layerwise.experiments.registry import MethodSpec, RunTask
from layerwise.problems.training import claims, models, run
from layerwise.problems.training.settings import (
    TUNING_SEED_OFFSET,
    AdamWParams,
    LayerwiseParams,
    PeerParams,
    SGDParams,
    TrainingSettings,
)

TINY = TrainingSettings(
    workload="tabular", steps=12, batch_size=16, eval_every=4, width=8, depth=1, tuning_seeds=2
)


def task(methods, seeds=(0, 1), settings=TINY) -> RunTask:
    return RunTask(experiment="training-tabular", settings=settings, methods=methods, seeds=seeds)


def test_tuning_and_reported_seeds_are_disjoint():
    rows = run.run_task(
        task({"sgd": MethodSpec(name="sgd", params=SGDParams(lr_grid=(0.01, 0.1)))})
    )
    tuned = set(rows[rows["phase"] == "tune"]["seed"])
    reported = set(rows[rows["phase"] == "report"]["seed"])
    assert tuned == {TUNING_SEED_OFFSET, TUNING_SEED_OFFSET + 1}
    assert reported == {0, 1}
    with pytest.raises(ValueError, match="tuning seeds"):
        run.run_task(
            task({"sgd": MethodSpec(name="sgd", params=SGDParams())}, seeds=(0, TUNING_SEED_OFFSET))
        )


def test_tuning_keeps_the_lowest_mean_final_validation_loss():
    grid = (1e-5, 0.3, 1e6)  # far too small, reasonable, diverging
    rows = run.run_task(task({"sgd": MethodSpec(name="sgd", params=SGDParams(lr_grid=grid))}))
    tune = rows[rows["phase"] == "tune"]
    finals = tune[tune["step"] == TINY.steps].groupby("lr")["val_loss"].mean()
    assert math.isinf(finals[1e6]) and tune[tune["lr"] == 1e6]["diverged"].all()
    assert rows["chosen_lr"].iloc[0] == finals.idxmin() == 0.3
    assert set(rows[rows["phase"] == "report"]["lr"]) == {0.3}


def test_a_diverged_run_is_recorded_to_the_budget():
    rows = run.run_task(
        task({"sgd": MethodSpec(name="sgd", params=SGDParams(lr_grid=(1e6,)))}, seeds=(0,))
    )
    assert rows["diverged"].all()
    assert list(rows["step"]) == [0, 4, 8, 12]
    assert math.isinf(rows["val_loss"].iloc[-1])


def test_a_missing_peer_is_a_row_not_a_failure(monkeypatch):
    monkeypatch.setitem(sys.modules, "heavyball", None)  # import heavyball raises ImportError
    methods = {
        "adamw": MethodSpec(name="adamw", params=AdamWParams(lr_grid=(0.01,))),
        "heavyball_soap": MethodSpec(name="heavyball_soap", params=PeerParams(lr_grid=(0.01,))),
    }
    rows = run.run_task(task(methods, seeds=(0,)))
    missing = rows[~rows["available"]]
    assert list(missing["method"]) == ["heavyball_soap"] and "heavyball" in missing["note"].iloc[0]
    verdict = claims.decide_peer_match(rows)
    assert verdict.holds is None and "heavyball_soap" in verdict.evidence["unavailable"]


def test_a_task_of_a_missing_peer_alone_has_the_columns_the_runner_requires(monkeypatch):
    # The runner splits methods into tasks: a task holding only a missing peer must still
    # store rows (one per reported seed), not fail for want of a seed column.
    from layerwise.experiments.runner import REQUIRED_COLUMNS

    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)
    methods = {
        "pytorch_optimizer_shampoo": MethodSpec(
            name="pytorch_optimizer_shampoo", params=PeerParams(lr_grid=(0.01,))
        )
    }
    rows = run.run_task(task(methods, seeds=(0, 3)))
    assert set(REQUIRED_COLUMNS) <= set(rows.columns)
    assert list(rows["seed"]) == [0, 3] and not rows["available"].any()
    assert list(claims.unavailable(rows)) == ["pytorch_optimizer_shampoo"]
    assert "pytorch-optimizer" in rows["note"].iloc[0]


def test_kfac_preconditions_the_attention_projections():
    from layerwise.optim import KFAC

    settings = TrainingSettings(workload="lm", width=16, depth=1, heads=2, context=8)
    model = models.build(settings, 0, 128, torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from layerwise.problems.training.methods import build_optimizers

        (optimizer,) = build_optimizers(model, "kfac", 0.1, LayerwiseParams())
    assert isinstance(optimizer, KFAC)
    assert not [w for w in caught if "attention" in str(w.message)]
    x = torch.randint(0, 128, (4, 8))
    loss = torch.nn.functional.cross_entropy(model(x), torch.randint(0, 128, (32,)))
    loss.backward()
    before = model.blocks[0].attention.query.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.blocks[0].attention.query.weight)


def _curves(losses: dict[str, list[float]], family: dict[str, str]) -> pd.DataFrame:
    rows = []
    for method, curve in losses.items():
        for seed in (0, 1, 2):
            for index, loss in enumerate(curve):
                rows.append(
                    dict(
                        method=method,
                        algorithm=method,
                        family=family[method],
                        method_kind=method,
                        phase="report",
                        available=True,
                        seed=seed,
                        step=10 * index,
                        val_loss=loss + 0.01 * seed,
                        val_accuracy=0.5,
                        wall_seconds=index * (2.0 if method == "kfac" else 1.0),
                        step_seconds=0.1,
                        state_bytes=8,
                        diverged=False,
                        chosen_lr=0.1,
                        workload="tabular",
                    )
                )
    return pd.DataFrame(rows)


def test_claims_from_curves():
    family = {"adamw": "baseline", "kfac": "ours"}
    # AdamW's target is its median final loss 0.51; kfac reaches it at step 10 of AdamW's 30:
    # 1/3 of the steps, but at twice the time per step 2/3 of the wall-clock.
    table = _curves({"adamw": [1.0, 0.8, 0.6, 0.5], "kfac": [1.0, 0.5, 0.4, 0.3]}, family)
    assert claims.target(table) == pytest.approx(0.51)
    t1, t2 = claims.decide_fewer_steps(table), claims.decide_less_wall_clock(table)
    assert t1.holds and t1.evidence["step_ratio_vs_adamw"]["kfac"] == pytest.approx(1 / 3)
    assert t2.holds and t2.evidence["wall_ratio_vs_adamw"]["kfac"] == pytest.approx(2 / 3)
    slow = _curves({"adamw": [1.0, 0.8, 0.6, 0.5], "kfac": [1.0, 0.9, 0.8, 0.7]}, family)
    assert claims.decide_fewer_steps(slow).holds is False
    assert math.isinf(claims.summary(slow).set_index("method").loc["kfac", "step_ratio"])


def test_quick_end_to_end(tmp_path):
    config = load_config(find_config("training-tabular"), quick=True)
    keep = {"adamw", "muon", "torch_muon"}
    config = dataclasses.replace(
        config, methods={k: v for k, v in config.methods.items() if k in keep}
    )
    result = runner.run_experiment(
        config, tmp_path, make_executor("local", workers=1), progress=False
    )
    assert result.failed == []
    written = report.write_report(tmp_path)
    verdicts = {c.id: c for c in written.claims if c.experiment == "training-tabular"}
    assert set(verdicts) == {"T1", "T2", "T3"}
    assert verdicts["T1"].verdict.holds is not None
    assert set(verdicts["T3"].verdict.evidence["pairs"]) == {"muon vs torch_muon"}
    text = written.paths["markdown"].read_text()
    assert "speed-up to AdamW's target" in text and "| torch_muon |" in text
    assert (tmp_path / "figures" / "training-tabular-curves.png").exists()
    table = store.load(tmp_path, "training-tabular")
    assert np.isfinite(table[table["phase"] == "report"]["val_loss"]).all()
