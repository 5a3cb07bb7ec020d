"""The C15 and C17 experiments' quick variants end to end: rows, decisions, figures."""

from __future__ import annotations

import pandas as pd
import pytest
from matplotlib.figure import Figure

from layerwise.experiments.config import find_config, load_config
from layerwise.experiments.runner import plan_runs


@pytest.mark.parametrize("name", ["single-index-layerwise", "single-index-many-steps"])
def test_quick_experiment_runs_decides_and_draws(name):
    config = load_config(find_config(name), quick=True)
    table = pd.concat(
        [config.experiment.run(run.task) for run in plan_runs(config)], ignore_index=True
    )
    rows_per_seed = 1 if name == "single-index-layerwise" else None
    if rows_per_seed is not None:
        assert len(table) == len(config.points) * len(config.methods) * len(config.seeds)
    assert table["row_align_beta"].between(0, 1 + 1e-12).all()
    for claim in config.experiment.claims:
        verdict = claim.decide(table)
        assert verdict.holds in (True, False), (claim.id, verdict.summary)
        assert claim.rule and claim.figure in config.experiment.figures
    for figure_name, make in config.experiment.figures.items():
        assert isinstance(make(table), Figure)
        assert config.experiment.captions[figure_name]
