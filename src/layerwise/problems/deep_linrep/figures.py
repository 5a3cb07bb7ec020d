"""Figure of ``deep-linrep-kappa``, drawn from the stored table only.

One panel per depth L: median iterations to ε (band: interquartile range over seeds) against
κ(Σx) (``kappa``, κF at its smallest value) or κF (``kappa_f``, κ(Σx) smallest) per method, the
budget dotted, and for each fixed kfac step size η below the stability
bound 2/(L + 1) the prediction ``log ε / log|1 − η|`` of :mod:`.theory` (statement 1) as a
theory line labelled with its η. The methods' points are spread by a few percent around each
grid value so that coincident points stay visible. The conventions (display names, one colour
per family, legend outside) are :mod:`layerwise.experiments.plots`'.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from layerwise.experiments.plots import (
    budget_line,
    legend_outside,
    median_band,
    new_figure,
    theory_line,
)
from layerwise.problems.deep_linrep.claims import GAUSS_NEWTON
from layerwise.problems.deep_linrep.theory import largest_stable_step
from layerwise.problems.linrep.theory import kfac_iterations_to_eps

#: Horizontal spread of the methods' points around a grid value (see median_band's dodge): the
#: library KFAC and kfac at the same η, and their theory line, coincide.
_DODGE = 0.04


def _iterations_against(table: pd.DataFrame, varying: str, fixed: str, name: str) -> Figure:
    depths = sorted(int(v) for v in table["depth"].unique())
    fig, axes = new_figure(len(depths), width=4.2)
    eps = float(table["eps"].iloc[0])
    for ax, depth in zip(axes, depths, strict=True):
        rows = table[(table["depth"] == depth) & (table[fixed] == table[fixed].min())]
        median_band(ax, rows, x=varying, y="iterations_to_eps", dodge=_DODGE)
        grid = np.sort(rows[varying].unique())
        fixed_step = rows[rows["algorithm"].isin(GAUSS_NEWTON) & ~rows["lr_tuned"]]
        for lr in sorted(fixed_step["lr"].unique()):
            if lr < largest_stable_step(depth):
                value = kfac_iterations_to_eps(float(lr), eps)
                theory_line(
                    ax,
                    grid,
                    np.full(len(grid), value),
                    label=f"log ε / log(1 − η), η = {lr:g}",
                    annotate=f"η = {lr:g}",
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        budget_line(ax, float(rows["budget"].max()))
        ax.set_xticks(grid, [f"{v:g}" for v in grid])
        ax.set_xticks([], minor=True)
        ax.set_xlabel(name)
        ax.set_ylabel("iterations to ε (censored = budget)")
        ax.set_title(f"L = {depth}: y = F G_{depth}⋯G_1 x")
    legend_outside(axes[-1], axes=axes)
    return fig


def kappa(table: pd.DataFrame) -> Figure:
    """Iterations to ε against κ(Σx), κF at its smallest value."""
    return _iterations_against(table, "kappa_x", "kappa_f", "κ(Σx)")


def kappa_f(table: pd.DataFrame) -> Figure:
    """Iterations to ε against κF, κ(Σx) at its smallest value."""
    return _iterations_against(table, "kappa_f", "kappa_x", "κF = κ(F⋆)")
