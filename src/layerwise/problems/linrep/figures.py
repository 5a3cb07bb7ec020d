"""Figures of the linrep experiments, drawn from stored tables only.

Conventions of :mod:`layerwise.experiments.plots`: methods by their display names, one colour
per method family (markers and line styles tell a family's methods apart), median over seeds
with an interquartile band, theory lines black or grey in distinct styles, legends outside the
axes, log axes where values span decades. Legends show each method's step size η ("tuned"
when chosen by the tuning stage). On the log x axes of the sweeps the methods' points are
spread by a few percent around each grid value so that coincident points stay visible; the
ticks mark the grid values.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from layerwise.experiments.plots import (
    budget_line,
    display_name,
    legend_outside,
    median_band,
    method_style,
    new_figure,
    new_grid,
    theory_line,
)
from layerwise.problems.linrep import theory
from layerwise.problems.linrep.methods import of_family

#: Horizontal spread of the methods' points around a grid value (see median_band's dodge).
_DODGE = 0.03


def _fraction(value: float) -> str:
    """``0.125`` -> ``"⅛"``: the step sizes of the configs as the fractions they are."""
    names = {1.0: "1", 0.5: "½", 0.25: "¼", 0.125: "⅛"}
    return names.get(float(value), f"{value:g}")


def _legend_names(table: pd.DataFrame) -> dict[str, str]:
    """Each method's legend text: its display name and step size, e.g. ``SGD, tuned η = ¼``.

    A label whose display name already states its fixed step size (``KFAC, η = ½``) is shown
    as it is.
    """
    names = {}
    for method, rows in table.groupby("method"):
        name = display_name(method)
        lrs = [_fraction(v) for v in sorted(rows["lr"].unique())]
        values = f"= {lrs[0]}" if len(lrs) == 1 else "∈ {" + ", ".join(lrs) + "}"
        if rows["lr_tuned"].any():
            names[method] = f"{name}, tuned η {values}"
        elif "η" in name:
            names[method] = name
        else:
            names[method] = f"{name}, η {values}"
    return names


def _value_ticks(ax, values) -> None:
    """Label a log x axis at the grid values only (minor tick labels overlap otherwise)."""
    values = np.unique(np.asarray(values, dtype=float))
    ax.set_xticks(values, [f"{v:g}" for v in values])
    ax.set_xticks([], minor=True)


def _band(ax, table, x, y, *, names: dict[str, str] | None = None, **kwargs):
    """median_band keyed by method, legend text with the step size (``names``: the legend
    texts, when several panels share one legend)."""
    labels = names if names is not None else _legend_names(table)
    median_band(ax, table, x=x, y=y, by="method", labels=labels, **kwargs)


#: The trajectories' panels: (column, y label).
_TRAJECTORY_PANELS = (
    ("train_loss", "training loss (batch)"),
    ("distance", "subspace distance ‖P⊥U‖₂"),
    ("transfer_risk", "transfer excess risk"),
)


def trajectories(table: pd.DataFrame) -> Figure:
    """Training loss, subspace distance and transfer risk against iterations: one row of
    panels for the paper's methods, one for the library optimizers (with the paper's SGD and
    KFAC as references), each row with its own legend."""
    algorithm = table["algorithm"].astype(str)
    library = algorithm.isin(of_family("library"))  # layerwise.optim on the nn.Module
    references = table["method"].isin(["sgd", "kfac"])
    rows = [("the paper's methods", table[~library])]
    if library.any():
        rows.append(("library optimizers (layerwise.optim)", table[library | references]))
    fig, grid = new_grid(len(rows), len(_TRAJECTORY_PANELS))
    for axes, (title, group) in zip(grid, rows, strict=True):
        for ax, (column, label) in zip(axes, _TRAJECTORY_PANELS, strict=True):
            _band(ax, group, "iteration", column)
            ax.set_yscale("log")
            ax.set_xlabel("iteration")
            ax.set_ylabel(label)
            ax.set_title(title, fontsize=9)
        legend_outside(axes[-1], axes=axes)
    fig.suptitle("linear representation learning (median, IQR over seeds)")
    return fig


def _iterations_vs(
    ax, rows: pd.DataFrame, varying: str, xlabel: str, names: dict[str, str] | None = None
) -> None:
    _band(ax, rows, varying, "iterations_to_eps", names=names, dodge=_DODGE)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _value_ticks(ax, rows[varying])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("iterations to ε (censored = budget)")
    if not rows.empty:
        budget_line(ax, float(rows["budget"].max()))


#: The two sweeps of an iterations-to-ε figure: (varying, fixed at its smallest, axis label).
_KAPPA_SWEEPS = (("kappa_x", "kappa_f", "κ(Σx)"), ("kappa_f", "kappa_x", "κ(F⋆)"))


def _kappa_sweeps(
    table: pd.DataFrame, theory_lines: Callable[[Axes, pd.DataFrame, str, str], None] | None = None
) -> Figure:
    """Iterations to ε against κ(Σx) (κF at its smallest) and against κF (κ(Σx) at its
    smallest), one line per method, the budget labelled; ``theory_lines(ax, rows, varying,
    fixed)`` adds a panel's theory lines."""
    fig, axes = new_figure(2, width=5.0)
    names = _legend_names(table)  # one text per method in the shared legend
    for ax, (varying, fixed, xlabel) in zip(axes, _KAPPA_SWEEPS, strict=True):
        rows = table[table[fixed] == table[fixed].min()]
        if rows[varying].nunique() < 2:
            ax.set_title(f"fewer than two {xlabel} values")
            continue
        _iterations_vs(ax, rows, varying, xlabel, names)
        if theory_lines is not None:
            theory_lines(ax, rows, varying, fixed)
    legend_outside(axes[-1], axes=axes)
    return fig


def kappa(table: pd.DataFrame) -> Figure:
    """Iterations to ε against κ(Σx) and against κF, with kfac's predicted count at each fixed
    η < 1 and the gradient-step bound κx·κF²·log(1/ε), each theory line labelled at its end."""
    eps = float(table["eps"].iloc[0])

    def theory_lines(ax: Axes, rows: pd.DataFrame, varying: str, fixed: str) -> None:
        grid = np.sort(rows[varying].unique())
        fixed_lrs = rows[(rows["algorithm"] == "kfac") & ~rows["lr_tuned"] & (rows["lr"] < 1)]
        for lr in sorted(fixed_lrs["lr"].unique()):
            value = theory.kfac_iterations_to_eps(lr, eps)
            theory_line(
                ax,
                grid,
                np.full(len(grid), value),
                label=f"KFAC theory, η = {_fraction(lr)}: log ε / log(1 − η)",
                annotate=f"η = {_fraction(lr)}",
            )
        other = float(rows[fixed].min())
        bound = [
            theory.gradient_iterations_to_eps(
                *((g, other) if varying == "kappa_x" else (other, g)), eps
            )
            for g in grid
        ]
        theory_line(ax, grid, bound, label="gradient-step bound κx·κF²·log(1/ε)", annotate="bound")

    return _kappa_sweeps(table, theory_lines)


def basis(table: pd.DataFrame) -> Figure:
    bases = sorted(table["basis"].unique())
    fig, axes = new_figure(len(bases), width=4.5)
    names = _legend_names(table)
    for ax, name in zip(axes, bases, strict=True):
        _iterations_vs(ax, table[table["basis"] == name], "kappa_x", "κ(Σx)", names)
        ax.set_title(display_name(name))
    legend_outside(axes[-1], axes=axes)
    return fig


def transfer(table: pd.DataFrame) -> Figure:
    fig, axes = new_figure(1, width=5.0)
    ax = axes[0]
    _band(ax, table, "n_transfer", "transfer_risk", dodge=_DODGE)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _value_ticks(ax, table["n_transfer"])
    ax.set_xlabel("transfer samples n_transfer")
    ax.set_ylabel("transfer excess risk")
    legend_outside(ax)
    return fig


def floor(table: pd.DataFrame) -> Figure:
    fig, axes = new_figure(1, width=5.0)
    ax = axes[0]
    _band(ax, table, "n_effective_minus_d", "stationary_distance", dodge=_DODGE)
    kfac = table[table["algorithm"] == "kfac"]
    if not kfac.empty:
        medians = kfac.groupby("n_effective_minus_d")["stationary_distance"].median()
        x = medians.index.to_numpy(dtype=float)
        anchor = medians.iloc[0] * np.sqrt(x[0])
        theory_line(ax, x, anchor / np.sqrt(x), label="slope −½ (through KFAC's first point)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _value_ticks(ax, table["n_effective_minus_d"])
    ax.set_xlabel("n_eff − d (samples per step used by the G update, minus d)")
    ax.set_ylabel("stationary subspace distance")
    legend_outside(ax)
    return fig


def second_order(table: pd.DataFrame) -> Figure:
    """Gauss–Newton and Newton against their damping, with the median of each kfac label as a
    horizontal reference; coincident references keep apart by line style and by markers at
    staggered positions."""
    kappas = sorted(table["kappa_x"].unique())
    fig, axes = new_figure(len(kappas), width=4.2)
    names = _legend_names(table)
    for ax, value in zip(axes, kappas, strict=True):
        rows = table[table["kappa_x"] == value]
        second = rows[rows["algorithm"].isin(of_family("second_order"))]
        _band(ax, second, "damping", "iterations_to_eps", names=names, dodge=_DODGE)
        references = rows[rows["algorithm"] == "kfac"]
        dampings = np.sort(second["damping"].unique()) if not second.empty else np.array([1.0])
        span = np.geomspace(dampings[0], dampings[-1], 9) if len(dampings) > 1 else dampings
        for index, (method, group) in enumerate(references.groupby("method")):
            median = group["iterations_to_eps"].median()
            style = method_style(method)
            ax.plot(
                span,
                np.full(len(span), median),
                color=style["color"],
                marker=style["marker"],
                linestyle=["--", "-."][index % 2],
                markevery=(index % 2, 2),
                linewidth=1.2,
                zorder=3,
                label=f"{names[method]}, median",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        budget_line(ax, float(rows["budget"].max()))
        ax.set_xlabel("damping μ")
        ax.set_ylabel("iterations to ε (censored = budget)")
        ax.set_title(f"κ(Σx) = {value:g}")
    legend_outside(axes[-1], axes=axes)
    return fig


def layerwise(table: pd.DataFrame) -> Figure:
    """C14/C18: iterations to ε against κ(Σx) (κF smallest) and against κF (κ(Σx) smallest),
    one line per method (library optimizers, exact and amortized, with the paper's sgd and
    kfac), the budget labelled; a flat line is κ-free like kfac, a rising one slows like sgd."""
    fig = _kappa_sweeps(table)
    fig.suptitle("layer-wise optimizers in linrep (median, IQR over seeds)")
    return fig
