"""The registered experiments: quick variants end to end, and the claim decisions."""

from __future__ import annotations

import pandas as pd
import pytest
from matplotlib.figure import Figure

from layerwise.experiments import registry
from layerwise.experiments.config import find_config, load_config
from layerwise.experiments.runner import plan_runs
from layerwise.problems.single_index import claims

NAMES = ("single-index-alignment", "single-index-risk", "single-index-damping")


def _run_quick(name: str) -> tuple[registry.Experiment, pd.DataFrame]:
    config = load_config(find_config(name), quick=True)
    tables = []
    for run in plan_runs(config):
        table = config.experiment.run(run.task)
        tables.append(table.assign(run_id=run.run_id))
    return config.experiment, pd.concat(tables, ignore_index=True)


@pytest.mark.parametrize("name", NAMES)
def test_quick_experiment_runs_and_decides_its_claims(name):
    experiment, table = _run_quick(name)
    assert {"seed", "method", "spike_align_beta", "theory_align_beta"} <= set(table.columns)
    config = load_config(find_config(name), quick=True)
    assert len(table) == len(config.points) * len(config.methods) * len(config.seeds)
    assert experiment.claims
    for claim in experiment.claims:
        verdict = claim.decide(table)
        assert verdict.holds in (True, False), (claim.id, verdict.summary)
        assert verdict.evidence and verdict.summary
    for make in experiment.figures.values():
        assert isinstance(make(table), Figure)


def _alignment_table(sgd_beta, sgd_sigma_beta, kfac_beta, theory_gap=0.0):
    rows = []
    for seed in range(4):
        for ratio in (2.0, 8.0):
            jitter = 0.001 * seed
            rows.append(
                dict(
                    seed=seed,
                    method="sgd",
                    algorithm="sgd",
                    kappa=100.0,
                    n_over_d=ratio,
                    link="tanh",
                    spike_align_beta=sgd_beta + jitter,
                    spike_align_sigma_beta=sgd_sigma_beta,
                    theory_cap=0.65,
                    v_align_beta=sgd_beta + jitter,
                    theory_align_beta=sgd_beta + theory_gap,
                )
            )
            rows.append(
                dict(
                    seed=seed,
                    method="kfac",
                    algorithm="kfac",
                    kappa=100.0,
                    n_over_d=ratio,
                    link="tanh",
                    spike_align_beta=kfac_beta * ratio / 8 + jitter,
                    spike_align_sigma_beta=0.6,
                    theory_cap=0.65,
                    v_align_beta=kfac_beta * ratio / 8 + jitter,
                    theory_align_beta=kfac_beta * ratio / 8,
                )
            )
    return pd.DataFrame(rows)


def test_c9_decides_both_ways():
    assert claims.decide_sgd_bias(_alignment_table(0.6, 0.95, 0.97)).holds is True
    # Aligned with β⋆ more than with Σβ⋆: the claim fails.
    assert claims.decide_sgd_bias(_alignment_table(0.6, 0.5, 0.97)).holds is False
    # Above the cap (0.65): fails too.
    assert claims.decide_sgd_bias(_alignment_table(0.7, 0.95, 0.97)).holds is False
    isotropic = _alignment_table(0.6, 0.95, 0.97).assign(kappa=1.0)
    assert claims.decide_sgd_bias(isotropic).holds is None


def test_c10_and_c11_decide_both_ways():
    assert claims.decide_kfac_alignment(_alignment_table(0.6, 0.95, 0.97)).holds is True
    assert claims.decide_kfac_alignment(_alignment_table(0.6, 0.95, 0.85)).holds is False
    assert claims.decide_theory_match(_alignment_table(0.6, 0.95, 0.97)).holds is True
    far = claims.decide_theory_match(_alignment_table(0.6, 0.95, 0.97, theory_gap=0.1))
    assert far.holds is False
    assert far.evidence["vector"]["max_gap"] == pytest.approx(0.1 - 0.0015, abs=1e-3)


def _risk_table(risks: dict[str, float]) -> pd.DataFrame:
    rows = [
        dict(
            seed=seed,
            method=method,
            algorithm=method.split("_")[0],
            kappa=100.0,
            n_over_d=ratio,
            excess_risk=risk * (1 + 0.01 * seed),
        )
        for seed in range(3)
        for ratio in (1.0, 4.0)
        for method, risk in risks.items()
    ]
    return pd.DataFrame(rows)


def test_c12_and_c13_decide_both_ways():
    good = {"rf": 0.1, "sgd": 0.05, "kfac": 0.01, "adam": 0.06, "batchnorm": 0.07, "oracle": 0.0}
    assert claims.decide_risk_order(_risk_table(good)).holds is True
    verdict = claims.decide_adam_batchnorm(_risk_table(good))
    assert verdict.holds is True and verdict.evidence["batchnorm_worse_than_sgd_at"] == 1
    assert claims.decide_risk_order(_risk_table({**good, "sgd": 0.2})).holds is False
    assert claims.decide_adam_batchnorm(_risk_table({**good, "adam": 0.005})).holds is False
    assert claims.decide_risk_order(_risk_table({"rf": 0.1, "sgd": 0.05})).holds is None


def test_c13_decides_its_adam_part_without_batchnorm_and_each_kfac_label():
    # Issue 15: a config without batchnorm still decides adam; two kfac labels are each compared.
    risks = {"rf": 0.1, "sgd": 0.05, "kfac": 0.01, "kfac_damped": 0.03, "adam": 0.02}
    verdict = claims.decide_adam_batchnorm(_risk_table(risks))
    assert verdict.holds is False  # adam (0.02) is below kfac_damped (0.03)
    assert verdict.evidence["undecided_parts"]["C13-batchnorm"] == (
        "needs methods ['batchnorm'] (not among the methods) at n/d >= 2 and kappa > 1"
    )
    fine = claims.decide_adam_batchnorm(_risk_table({**risks, "adam": 0.04}))
    assert fine.holds is True and "C13-batchnorm undecided" in fine.summary
    assert claims.decide_risk_order(_risk_table(risks)).holds is True


def test_c10_decides_each_kfac_label_apart():
    # Two kfac labels of one algorithm: one aligned (0.97), one not (0.5); pooled they would
    # average to a number that belongs to neither.
    good = _alignment_table(0.6, 0.95, 0.97)
    bad = _alignment_table(0.6, 0.95, 0.5)
    bad = bad[bad["method"] == "kfac"].assign(method="kfac_damped")
    verdict = claims.decide_kfac_alignment(pd.concat([good, bad], ignore_index=True))
    assert verdict.holds is False
    assert verdict.evidence["kfac,kappa=100"]["median_by_n_over_d"]["8"] == pytest.approx(
        0.9715, abs=1e-3
    )
    assert verdict.evidence["kfac_damped,kappa=100"]["median_by_n_over_d"]["8"] == pytest.approx(
        0.5015, abs=1e-3
    )


def test_cli_runs_the_quick_alignment_experiment_and_reports_its_claims(tmp_path):
    import json

    from layerwise import cli

    out = tmp_path / "out"
    argv = ["run", "single-index-alignment", "--quick", "--out", str(out), "--workers", "1"]
    assert cli.main([*argv, "--no-progress"]) == 0
    assert cli.main(["report", str(out)]) == 0
    decided = {
        entry["id"]: entry["holds"] for entry in json.loads((out / "claims.json").read_text())
    }
    assert set(decided) == {"C9", "C10", "C11"}
    assert all(holds in (True, False) for holds in decided.values())
