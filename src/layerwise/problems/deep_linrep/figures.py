"""Figure of ``deep-linrep-kappa``, drawn from the stored table only.

One panel per depth L: median iterations to ε (band: interquartile range over seeds) against
κ(Σx) per method, the budget dotted, and for each fixed kfac step size η the prediction
``log(ε)/log|1 − η|`` of :mod:`.theory` (statement 1) dashed; step sizes in the legend.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from layerwise.experiments.plots import median_band, new_figure, theory_line
from layerwise.problems.deep_linrep.claims import GAUSS_NEWTON
from layerwise.problems.deep_linrep.theory import largest_stable_step
from layerwise.problems.linrep.theory import kfac_iterations_to_eps


def _legend_names(rows: pd.DataFrame) -> dict[str, str]:
    """``label (lr 0.25)`` or ``label (lr 0.5/1, tuned)`` per method label."""
    names = {}
    for method, group in rows.groupby("method"):
        values = "/".join(f"{v:g}" for v in sorted(group["lr"].unique()))
        names[method] = f"{method} (lr {values}{', tuned' if group['lr_tuned'].any() else ''})"
    return names


def kappa(table: pd.DataFrame) -> Figure:
    depths = sorted(int(v) for v in table["depth"].unique())
    fig, axes = new_figure(len(depths), width=4.6)
    eps = float(table["eps"].iloc[0])
    for ax, depth in zip(axes, depths, strict=True):
        rows = table[(table["depth"] == depth) & (table["kappa_f"] == table["kappa_f"].min())]
        median_band(ax, rows, x="kappa_x", y="iterations_to_eps", marker="o")
        names = _legend_names(rows)
        for line in ax.get_lines():
            line.set_label(names.get(line.get_label(), line.get_label()))
        grid = np.sort(rows["kappa_x"].unique())
        fixed = rows[rows["algorithm"].isin(GAUSS_NEWTON) & ~rows["lr_tuned"]]
        for lr in sorted(fixed["lr"].unique()):
            if lr < largest_stable_step(depth):
                value = kfac_iterations_to_eps(float(lr), eps)
                theory_line(ax, grid, np.full(len(grid), value), label=f"theory η={lr:g}")
        ax.axhline(rows["budget"].max(), color="grey", linewidth=0.8, linestyle=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(grid, [f"{v:g}" for v in grid])
        ax.set_xticks([], minor=True)
        ax.set_xlabel("κ(Σx)")
        ax.set_ylabel("iterations to ε (censored = budget)")
        ax.set_title(f"L = {depth}: y = F G_{depth}⋯G_1 x")
        ax.legend(fontsize=5.5, framealpha=0.6)
    return fig
