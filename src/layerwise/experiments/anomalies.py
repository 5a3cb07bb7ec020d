"""Anomalies the report flags: a training loss that rises while the metric falls.

A stored table with a step column (:data:`STEP_COLUMNS`), the training loss
(:data:`LOSS_COLUMN`) and a metric where lower is better (:data:`METRIC_COLUMNS`) is cut into
curves: one per method (and per value of :data:`CURVE_COLUMNS` and the experiment's grid keys
present in the table). For each curve, with medians over seeds at the first and last step,

    flagged  ⇔  loss(last) > loss(first)  and  metric(last) < metric(first)

A method that diverges in loss (loss → inf) while its metric improves is flagged too; a curve
whose metric is not finite at either end is not (nothing to compare). Such a curve is not
wrong by itself (library KFAC at step size 1 in linrep fits the batch worse while it finds the
subspace), but a reader must not take its loss curve as its progress.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from layerwise.experiments.evidence import format_float

STEP_COLUMNS = ("iteration", "step")
LOSS_COLUMN = "train_loss"
#: Metrics, lower is better, in the order they are checked (each flagged on its own).
METRIC_COLUMNS = ("distance", "test_loss", "val_loss")
#: Rows that differ in these are separate curves (a tuning stage's step sizes, its phases).
CURVE_COLUMNS = ("phase", "lr")
#: Named in an anomaly's sentence even when the method has one value (what a reader asks first).
ALWAYS_NAMED = ("lr",)


@dataclass(frozen=True)
class Anomaly:
    """One curve whose training loss rises from its first to its last step while ``metric``
    falls (medians over seeds)."""

    method: str
    metric: str
    step_column: str
    steps: tuple[float, float]
    loss: tuple[float, float]
    metric_values: tuple[float, float]
    #: The other values that identify the curve (e.g. ``{"lr": 1.0}``).
    where: Mapping[str, Any] = field(default_factory=dict)

    def sentence(self) -> str:
        where = ", ".join(f"{key} {_text(value)}" for key, value in self.where.items())
        at = f" ({where})" if where else ""
        first, last = (format_float(float(step)) for step in self.steps)
        return (
            f"{self.method}{at}: median training loss rises from {format_float(self.loss[0])} "
            f"to {format_float(self.loss[1])} ({self.step_column} {first} to {last}) while "
            f"{self.metric} falls from {format_float(self.metric_values[0])} to "
            f"{format_float(self.metric_values[1])}"
        )


def _text(value: Any) -> str:
    return format_float(value) if isinstance(value, float) else str(value)


def rising_loss(table: pd.DataFrame, group_columns: Iterable[str] = ()) -> list[Anomaly]:
    """Every curve of ``table`` whose training loss rises while a metric falls (module
    docstring); ``group_columns`` (e.g. the grid keys) also separate curves. A table without
    the columns needed gives no anomaly."""
    step = next((column for column in STEP_COLUMNS if column in table.columns), None)
    metrics = [column for column in METRIC_COLUMNS if column in table.columns]
    if step is None or LOSS_COLUMN not in table.columns or not metrics or "method" not in table:
        return []
    keys = ["method"] + [
        column
        for column in dict.fromkeys([*CURVE_COLUMNS, *group_columns])
        if column in table.columns and column != "method"
    ]
    found = []
    for values, curve in table.groupby(keys, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        identity = dict(zip(keys, values, strict=True))
        method = str(identity.pop("method"))
        # Only the keys that tell this method's curves apart are worth naming.
        varying = {
            key: value
            for key, value in identity.items()
            if key in ALWAYS_NAMED
            or table.loc[table["method"] == method, key].nunique(dropna=False) > 1
        }
        medians = curve.groupby(step)[[LOSS_COLUMN, *metrics]].median().sort_index()
        if len(medians) < 2:
            continue
        first, last = medians.iloc[0], medians.iloc[-1]
        loss = (float(first[LOSS_COLUMN]), float(last[LOSS_COLUMN]))
        if not loss[1] > loss[0]:
            continue
        for metric in metrics:
            before, after = float(first[metric]), float(last[metric])
            if math.isfinite(before) and math.isfinite(after) and after < before:
                found.append(
                    Anomaly(
                        method=method,
                        metric=metric,
                        step_column=step,
                        steps=(float(medians.index[0]), float(medians.index[-1])),
                        loss=loss,
                        metric_values=(before, after),
                        where=varying,
                    )
                )
    return found
