"""Figures of the linrep experiments, drawn from stored tables only.

Conventions of :mod:`layerwise.experiments.plots`: one colour per method label, median over
seeds with an interquartile band, theory as dashed black lines, log axes where values span
decades. Legends show each method's step size (``lr``; "tuned" when chosen by the tuning stage).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from layerwise.experiments.plots import (
    METHOD_COLORS,
    median_band,
    method_color,
    new_figure,
    theory_line,
)
from layerwise.problems.linrep import theory


def _labelled(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``label``: the method and its step size, e.g. ``sgd (lr 0.25, tuned)``."""

    def label(rows: pd.DataFrame) -> str:
        lrs = sorted(rows["lr"].unique())
        tuned = ", tuned" if rows["lr_tuned"].any() else ""
        values = "/".join(f"{v:g}" for v in lrs)
        return f"lr {values}{tuned}"

    names = {method: f"{method} ({label(rows)})" for method, rows in table.groupby("method")}
    return table.assign(label=table["method"].map(names))


def _value_ticks(ax, values) -> None:
    """Label a log x axis at the grid values only (minor tick labels overlap otherwise)."""
    values = np.unique(np.asarray(values, dtype=float))
    ax.set_xticks(values, [f"{v:g}" for v in values])
    ax.set_xticks([], minor=True)


def _band(ax, table, x, y, **kwargs):
    """median_band keyed by method (fixed colours), legend text with the step size.

    Labels without a fixed colour in ``METHOD_COLORS`` get a hashed colour that may repeat a
    fixed one, so they are drawn dotted to stay distinguishable.
    """
    table = _labelled(table)
    fixed = table["method"].isin(list(METHOD_COLORS))
    median_band(ax, table[fixed], x=x, y=y, by="method", **kwargs)
    if (~fixed).any():
        median_band(ax, table[~fixed], x=x, y=y, by="method", **{**kwargs, "linestyle": ":"})
    names = dict(zip(table["method"], table["label"], strict=False))
    for line in ax.get_lines():
        if line.get_label() in names:
            line.set_label(names[line.get_label()])


def trajectories(table: pd.DataFrame) -> Figure:
    fig, axes = new_figure(3, width=4.8)
    panels = (
        ("train_loss", "training loss (batch)"),
        ("distance", "subspace distance ‖P⊥U‖₂"),
        ("transfer_risk", "transfer excess risk"),
    )
    for ax, (column, label) in zip(axes, panels, strict=True):
        _band(ax, table, "iteration", column)
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel(label)
    axes[1].legend(fontsize=5.5, framealpha=0.6)
    fig.suptitle("linear representation learning (median, IQR over seeds)")
    return fig


def _iterations_vs(ax, rows: pd.DataFrame, varying: str, xlabel: str) -> None:
    _band(ax, rows, varying, "iterations_to_eps", marker="o")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _value_ticks(ax, rows[varying])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("iterations to eps (censored = budget)")
    if not rows.empty:
        ax.axhline(rows["budget"].max(), color="grey", linewidth=0.8, linestyle=":")


def kappa(table: pd.DataFrame) -> Figure:
    fig, axes = new_figure(2, width=5.5)
    eps = float(table["eps"].iloc[0])
    for ax, (varying, fixed, xlabel) in zip(
        axes,
        (("kappa_x", "kappa_f", "κ(Σx)"), ("kappa_f", "kappa_x", "κ(F⋆)")),
        strict=True,
    ):
        rows = table[table[fixed] == table[fixed].min()]
        if rows[varying].nunique() < 2:
            continue
        _iterations_vs(ax, rows, varying, xlabel)
        grid = np.sort(rows[varying].unique())
        fixed_lrs = rows[(rows["algorithm"] == "kfac") & ~rows["lr_tuned"] & (rows["lr"] < 1)]
        for lr in sorted(fixed_lrs["lr"].unique()):
            value = theory.kfac_iterations_to_eps(lr, eps)
            theory_line(ax, grid, np.full(len(grid), value), label=f"kfac theory η={lr:g}")
        other = float(rows[fixed].min())
        bound = [
            theory.gradient_iterations_to_eps(
                *((g, other) if varying == "kappa_x" else (other, g)), eps
            )
            for g in grid
        ]
        theory_line(ax, grid, bound, label="gradient-step bound κx·κF²·log(1/ε)")
        ax.legend(fontsize=5.5, framealpha=0.6)
    return fig


def basis(table: pd.DataFrame) -> Figure:
    bases = sorted(table["basis"].unique())
    fig, axes = new_figure(len(bases), width=5.0)
    for ax, name in zip(axes, bases, strict=True):
        _iterations_vs(ax, table[table["basis"] == name], "kappa_x", "κ(Σx)")
        ax.set_title(f"Σx basis: {name}")
        ax.legend(fontsize=5.5, framealpha=0.6)
    return fig


def transfer(table: pd.DataFrame) -> Figure:
    fig, axes = new_figure(1, width=5.5)
    ax = axes[0]
    _band(ax, table, "n_transfer", "transfer_risk", marker="o")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _value_ticks(ax, table["n_transfer"])
    ax.set_xlabel("transfer samples n_transfer")
    ax.set_ylabel("transfer excess risk")
    ax.legend(fontsize=5.5, framealpha=0.6)
    return fig


def floor(table: pd.DataFrame) -> Figure:
    fig, axes = new_figure(1, width=5.5)
    ax = axes[0]
    _band(ax, table, "n_effective_minus_d", "stationary_distance", marker="o")
    kfac = table[table["algorithm"] == "kfac"]
    if not kfac.empty:
        medians = kfac.groupby("n_effective_minus_d")["stationary_distance"].median()
        x = medians.index.to_numpy(dtype=float)
        anchor = medians.iloc[0] * np.sqrt(x[0])
        theory_line(ax, x, anchor / np.sqrt(x), label="slope −½ (through kfac's first point)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _value_ticks(ax, table["n_effective_minus_d"])
    ax.set_xlabel("n_eff − d (samples per step used by the G update, minus d)")
    ax.set_ylabel("stationary subspace distance")
    ax.legend(fontsize=5.5, framealpha=0.6)
    return fig


def second_order(table: pd.DataFrame) -> Figure:
    kappas = sorted(table["kappa_x"].unique())
    fig, axes = new_figure(len(kappas), width=4.5)
    for ax, value in zip(axes, kappas, strict=True):
        rows = table[table["kappa_x"] == value]
        second = rows[rows["algorithm"].isin(["gauss_newton", "newton"])]
        _band(ax, second, "damping", "iterations_to_eps", marker="o")
        for method, group in rows[rows["algorithm"] == "kfac"].groupby("method"):
            median = group["iterations_to_eps"].median()
            ax.axhline(
                median,
                color=method_color(str(method)),
                linestyle="-.",
                linewidth=1.2,
                label=f"{method} (lr {group['lr'].iloc[0]:g}), median",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("damping μ")
        ax.set_ylabel("iterations to eps (censored = budget)")
        ax.set_title(f"κ(Σx) = {value:g}")
        ax.legend(fontsize=5.5, framealpha=0.6)
    return fig
