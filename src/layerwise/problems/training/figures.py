"""Figures of the training workloads, drawn from the stored ``report`` rows.

``curves``: validation loss against step and against wall-clock (training time), the median over
seeds with the interquartile band, one colour per optimizer (peers dashed), AdamW's target as a
dotted black line, log-scaled losses.
"""

from __future__ import annotations

import math

from layerwise.experiments import plots

from . import claims


def _band(ax, rows, x: str, color, linestyle: str, label: str) -> None:
    stats = rows.groupby("step").agg(
        x=(x, "median"),
        q25=("val_loss", lambda v: v.quantile(0.25)),
        q50=("val_loss", "median"),
        q75=("val_loss", lambda v: v.quantile(0.75)),
    )
    finite = stats[stats["q50"].map(math.isfinite)]
    ax.plot(finite["x"], finite["q50"], color=color, linestyle=linestyle, label=label)
    ax.fill_between(
        finite["x"], finite["q25"], finite["q75"].clip(upper=1e6), color=color, alpha=0.15, lw=0
    )


def curves(table):
    rows = claims.reported(table)
    goal = claims.target(table)
    fig, (by_step, by_time) = plots.new_figure(2, width=5.5, height=4.0)
    for method, group in rows.groupby("method", sort=False):
        peer = group["family"].iloc[0] == "peer"
        diverged = group.groupby("seed")["diverged"].any().sum()
        label = str(method) + (f" ({diverged} diverged)" if diverged else "")
        color = plots.method_color(str(method))
        _band(by_step, group, "step", color, "--" if peer else "-", label)
        _band(by_time, group, "wall_seconds", color, "--" if peer else "-", label)
    workload = rows["workload"].iloc[0]
    for ax, xlabel in ((by_step, "step"), (by_time, "training wall-clock (s)")):
        ax.axhline(goal, color="black", linestyle=":", linewidth=1, label="AdamW target")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation loss (cross-entropy)")
        ax.set_title(f"{workload}: validation loss vs {xlabel.split(' (')[0]}")
    by_step.legend(fontsize=7, ncol=2)
    return fig
