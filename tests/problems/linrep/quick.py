"""Run a linrep experiment's quick variant through the config and plan of the runner, in-process."""

from __future__ import annotations

from functools import cache

import pandas as pd

from layerwise.experiments.config import load_config, packaged_configs
from layerwise.experiments.runner import plan_runs

CONFIGS = packaged_configs()


@cache
def _run_quick(name: str) -> tuple[pd.DataFrame, object]:
    """The concatenated rows of every planned run of the packaged ``NAME.yaml`` with ``--quick``,
    with the runner's grid columns and run ids added, and the resolved config."""
    config = load_config(CONFIGS / f"{name}.yaml", quick=True)
    tables = []
    for run in plan_runs(config):
        table = config.experiment.run(run.task)
        for key, value in run.point.items():
            if key not in table.columns:
                table[key] = [value] * len(table)
        tables.append(table.assign(run_id=run.run_id))
    return pd.concat(tables, ignore_index=True), config


def run_quick(name: str) -> tuple[pd.DataFrame, object]:
    """:func:`_run_quick`, computed once per pytest run (callers get a copy of the table)."""
    table, config = _run_quick(name)
    return table.copy(), config
