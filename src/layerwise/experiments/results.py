"""Stored results as one tidy DataFrame: ``layerwise.load(out, experiment)``.

An output folder can hold several invocations of one experiment (say ``--seeds 10``, then
``--seeds 3``, then another ``--set``); their run files sit side by side in
``OUT/<experiment>/runs/``. :func:`load` picks the runs of one invocation:

- ``invocation=None`` (default): the latest invocation (``config.json``), the rows the report
  uses;
- ``invocation=i`` (an ``int``): the ``i``-th finished invocation of ``invocations.jsonl`` in
  the order they finished, Python-style (``0`` the first, ``-1`` the last finished one);
- ``invocation="all"``: every stored run of the experiment, whatever invocation wrote it.

The returned DataFrame carries the invocation in ``df.attrs``:

- ``df.attrs["config"]``: the merged config the invocation ran (after ``--quick`` and ``--set``),
  the same mapping as a YAML config file;
- ``df.attrs["resolved"]``: the fixed settings with every default, the grid points, each
  method label with its algorithm and every hyperparameter, the seeds;
- ``df.attrs["invocation"]``: the whole record (command, versions, git commit, times, counts,
  run ids; see :mod:`layerwise.experiments.store`).

With ``"all"`` the attributes are those of the latest invocation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from layerwise.experiments import store


class ResultsError(LookupError):
    """The requested experiment or invocation is not stored in the output folder."""


def invocations(out_dir: str | Path, experiment: str) -> list[dict[str, Any]]:
    """Every finished invocation of ``experiment`` under ``out_dir``, in the order they finished."""
    path = store.experiment_dir(out_dir, experiment) / store.INVOCATIONS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load(
    out_dir: str | Path,
    experiment: str,
    invocation: int | Literal["all"] | None = None,
) -> pd.DataFrame:
    """The tidy rows of one invocation of ``experiment`` stored under ``out_dir``.

    Rows are ordered by run id, each run's rows in the order its run function returned them;
    columns are ``seed``, ``method`` (the label), one per grid key, ``run_id`` and the run
    function's own columns. See the module docstring for ``invocation`` and ``df.attrs``.

    Raises :class:`ResultsError` when the folder has no stored invocation of ``experiment``
    (the message lists the experiments it has) or when ``invocation`` is out of range.

    >>> import layerwise
    >>> df = layerwise.load("results/quick", "linrep-kappa")  # doctest: +SKIP
    >>> df.attrs["config"]["grid"]  # doctest: +SKIP
    {'kappa_x': [1, 10, 100], ...}
    """
    latest = store.read_invocation(out_dir, experiment)
    if latest is None:
        stored = store.stored_experiments(out_dir)
        raise ResultsError(
            f"{out_dir}: no stored invocation of {experiment!r} "
            f"(stored: {', '.join(stored) if stored else 'none'})"
        )
    if invocation is None:
        record, run_ids = latest, latest.get("run_ids")
    elif invocation == "all":
        record, run_ids = latest, None
    elif isinstance(invocation, int) and not isinstance(invocation, bool):
        history = invocations(out_dir, experiment)
        if not -len(history) <= invocation < len(history):
            raise ResultsError(
                f"{out_dir}: {experiment!r} has {len(history)} finished invocation(s); "
                f"invocation={invocation} is out of range"
            )
        record = history[invocation]
        run_ids = record.get("run_ids")
    else:
        raise ValueError(f"invocation must be None, an int or 'all', not {invocation!r}")
    table = store.load(out_dir, experiment, run_ids)
    table.attrs["config"] = record.get("config", {})
    table.attrs["resolved"] = record.get("resolved", {})
    table.attrs["invocation"] = record
    return table


def step_size_lines(table: pd.DataFrame) -> list[str]:
    """One line per method label: its step size (``lr``, or training's ``chosen_lr``), marked
    ``tuned`` where the run chose it, per grid point where it differs between points.

    What ``layerwise run`` prints after an experiment, e.g. ``sgd: tuned lr 0.25 at
    kappa_x=1; 0.125 at kappa_x=10``.
    """
    # Training tables hold every tuning candidate's ``lr``; ``chosen_lr`` is the winner.
    column = next((name for name in ("chosen_lr", "lr") if name in table.columns), None)
    if table.empty or column is None or "method" not in table.columns:
        return []
    points = table.attrs.get("resolved", {}).get("points") or [{}]
    keys = [key for key in points[0] if key in table.columns]
    order = list(table.attrs.get("resolved", {}).get("methods", {}))
    labels = sorted(table["method"].unique(), key=lambda m: order.index(m) if m in order else 0)
    lines = []
    for label in labels:
        rows = table[table["method"] == label]
        tuned = "lr_tuned" in rows.columns and bool(rows["lr_tuned"].fillna(False).any())
        word = "tuned lr" if tuned else "lr"
        per_point = (
            rows.groupby(keys, sort=True)[column].first() if keys else rows[column].dropna()[:1]
        )
        values = per_point.dropna().unique()
        if not len(values):
            continue  # a method without a step size (a random-features baseline, say)
        if len(values) == 1:
            text = f"{values[0]:g}"
        else:
            text = "; ".join(
                f"{value:g} at "
                + ",".join(
                    f"{key}={part:g}" if isinstance(part, float) else f"{key}={part}"
                    for key, part in zip(
                        keys, point if isinstance(point, tuple) else (point,), strict=True
                    )
                )
                for point, value in per_point.items()
            )
        lines.append(f"{label}: {word} {text}")
    return lines
