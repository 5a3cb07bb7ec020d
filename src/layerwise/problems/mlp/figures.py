"""Figures of ``mlp-optimizers``, drawn from the stored table only."""

from __future__ import annotations

import pandas as pd

from layerwise.experiments import plots


def losses(table: pd.DataFrame):
    """Training and held-out loss vs step, median over seeds with the interquartile band, one
    legend (methods by display name) outside the panels."""
    fig, (train_ax, test_ax) = plots.new_figure(2)
    for ax, column, title in (
        (train_ax, "train_loss", "training"),
        (test_ax, "test_loss", "held-out"),
    ):
        plots.median_band(ax, table, x="step", y=column)
        ax.set_yscale("log")
        ax.set_xlabel("step (minibatch updates)")
        ax.set_ylabel(f"{title} loss (mean squared error)")
        ax.set_title(f"{title} loss")
    plots.legend_outside(test_ax)
    return fig
