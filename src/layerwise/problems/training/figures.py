"""Figures of the training workloads, drawn from the stored ``report`` rows.

``curves``: validation loss against step and against wall-clock (training time), the median over
seeds with the interquartile band, optimizers by display name in their family's colour (peers
dashed, with their own markers), AdamW's target as a dotted black line, log-scaled losses, one
legend outside the panels.
"""

from __future__ import annotations

import math

from layerwise.experiments import plots

from . import claims

#: Markers per curve (the evaluation points are many; every one marked would clutter).
_MARKERS_PER_CURVE = 8


def _band(ax, rows, x: str, style: dict, label: str, index: int) -> None:
    stats = rows.groupby("step").agg(
        x=(x, "median"),
        q25=("val_loss", lambda v: v.quantile(0.25)),
        q50=("val_loss", "median"),
        q75=("val_loss", lambda v: v.quantile(0.75)),
    )
    finite = stats[stats["q50"].map(math.isfinite)]
    step = max(1, math.ceil(len(finite) / _MARKERS_PER_CURVE))
    ax.plot(
        finite["x"],
        finite["q50"],
        **style,
        markersize=5,
        markevery=(index % step, step),  # staggered, so that overlapping curves keep markers
        label=label,
    )
    ax.fill_between(
        finite["x"],
        finite["q25"],
        finite["q75"].clip(upper=1e6),
        color=style["color"],
        alpha=0.15,
        lw=0,
    )


def curves(table):
    rows = claims.reported(table)
    goal = claims.target(table)
    fig, (by_step, by_time) = plots.new_figure(2, width=5.0, height=4.0)
    # By display name, so that a peer follows ours of the same method in the legend.
    groups = sorted(rows.groupby("method"), key=lambda item: plots.display_name(item[0]).lower())
    for index, (method, group) in enumerate(groups):
        diverged = group.groupby("seed")["diverged"].any().sum()
        label = plots.display_name(method) + (f" ({diverged} diverged)" if diverged else "")
        style = plots.method_style(method)
        _band(by_step, group, "step", style, label, index)
        _band(by_time, group, "wall_seconds", style, label, index)
    workload = plots.display_name(rows["workload"].iloc[0])
    for ax, xlabel in ((by_step, "step"), (by_time, "training wall-clock (s)")):
        ax.axhline(goal, color="black", linestyle=":", linewidth=1, label="AdamW target")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation loss (cross-entropy)")
        ax.set_title(f"{workload}: validation loss vs {xlabel.split(' (')[0]}")
    plots.legend_outside(by_time, axes=[by_step, by_time])
    return fig
