"""The anomaly check: a training loss that rises while the metric falls, on a synthetic table."""

from __future__ import annotations

import math

import pandas as pd

from layerwise.experiments.anomalies import rising_loss


def curve(method, lr, losses, distances, seeds=(0, 1, 2)):
    """Rows of one method: per seed, ``losses[seed][step]`` and ``distances[seed][step]``."""
    return [
        dict(method=method, lr=lr, seed=seed, iteration=10 * step, train_loss=loss, distance=d)
        for seed in seeds
        for step, (loss, d) in enumerate(zip(losses[seed], distances[seed], strict=True))
    ]


def test_rising_loss_with_falling_metric_is_flagged_per_curve_with_medians_over_seeds():
    falling = [[1.0, 0.5, 0.1]] * 3
    rows = (
        # Median loss 1 -> 2 (one seed falls: the mean 1 -> 1.37 would rise too, the median
        # is what counts), distance falls: flagged.
        curve("rises", 1.0, [[1.0, 1.5, 2.0], [1.0, 1.5, 2.0], [1.0, 0.2, 0.1]], falling)
        # Loss falls: not flagged.
        + curve("falls", 1.0, [[1.0, 0.5, 0.2]] * 3, falling)
        # Loss and distance both rise: not flagged (nothing contradictory).
        + curve("both rise", 1.0, [[1.0, 2.0, 3.0]] * 3, [[0.1, 0.5, 1.0]] * 3)
        # Loss diverges while the distance falls: flagged.
        + curve("diverges", 0.5, [[1.0, 10.0, math.inf]] * 3, falling)
        # The same method at two step sizes: only the one whose loss rises is flagged.
        + curve("two lrs", 0.1, [[1.0, 0.9, 0.8]] * 3, falling)
        + curve("two lrs", 2.0, [[1.0, 3.0, 5.0]] * 3, falling)
        # Loss rises, distance not finite at the end: nothing to compare.
        + curve("nan metric", 1.0, [[1.0, 2.0, 3.0]] * 3, [[1.0, 0.5, math.nan]] * 3)
    )
    found = rising_loss(pd.DataFrame(rows))
    assert [(a.method, a.where) for a in found] == [
        ("diverges", {"lr": 0.5}),
        ("rises", {"lr": 1.0}),
        ("two lrs", {"lr": 2.0}),
    ]
    rises = found[1]
    assert (rises.loss, rises.metric_values, rises.steps) == ((1.0, 2.0), (1.0, 0.1), (0, 20))
    assert rises.sentence() == (
        "rises (lr 1): median training loss rises from 1 to 2 (iteration 0 to 20) while "
        "distance falls from 1 to 0.1"
    )


def test_a_table_without_loss_or_metric_or_steps_has_no_anomaly():
    rows = pd.DataFrame(curve("rises", 1.0, [[1.0, 2.0, 3.0]] * 3, [[1.0, 0.5, 0.1]] * 3))
    assert len(rising_loss(rows)) == 1
    for column in ("train_loss", "distance", "iteration"):
        assert rising_loss(rows.drop(columns=column)) == []
    assert rising_loss(pd.DataFrame()) == []
