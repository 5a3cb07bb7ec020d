"""Figures of the single-index experiments, drawn from stored tables only.

Medians over seeds with interquartile bands (methods by display name, one colour per family),
theory lines black or grey in distinct styles (the median over seeds of the per-instance
prediction), n/d on a log2 axis, legends outside the axes. The methods' points are spread by
a few percent around each n/d (or damping) value so that coincident points stay visible.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from layerwise.experiments.plots import (
    LEGEND_FONTSIZE,
    display_name,
    legend_outside,
    median_band,
    method_style,
    new_figure,
    new_grid,
    theory_line,
)

#: Horizontal spread of the methods' points around a grid value (see median_band's dodge).
_DODGE = 0.04

#: The two alignments of sgd's spike (sgd_bias): against β⋆ in sgd's colour, against Σβ⋆ in
#: a colour no method family uses, hollow markers so that equal values (κ = 1) show both.
_TARGET_STYLES = {
    "β⋆": {**method_style("sgd"), "marker": "o", "linestyle": "-"},
    "Σβ⋆": {
        "color": "#E69F00",
        "marker": "s",
        "linestyle": "--",
        "markerfacecolor": "none",
        "markersize": 7,
    },
}


def _theory(ax, rows: pd.DataFrame, x: str, label: str | None) -> None:
    line = rows.groupby(x)["theory_align_beta"].median().dropna()
    if not line.empty:
        theory_line(ax, line.index, line.values, label=label)


def _panels(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One panel per (link, κ), titled by both."""
    return [
        (f"{display_name(link)} link, κ = {kappa:g}", group)
        for (link, kappa), group in rows.groupby(["link", "kappa"], sort=True)
    ]


def alignment_figure(table: pd.DataFrame) -> Figure:
    """Spike alignment cos(u, β⋆) against n/d, one panel per (link, κ), sgd and kfac with the
    theory line for v of each, and sgd's cap cos(Σβ⋆, β⋆) (Figure 2 analogue)."""
    panels = _panels(table[table["algorithm"].isin(["sgd", "kfac"])])
    fig, axes = new_figure(len(panels), width=4.0)
    for ax, (title, panel) in zip(axes, panels, strict=True):
        median_band(
            ax,
            panel,
            x="n_over_d",
            y="spike_align_beta",
            linestyle="none",
            dodge=_DODGE,
            label_format="{} spike",
        )
        for method, group in panel.groupby("method"):
            _theory(ax, group, "n_over_d", f"theory cos(v, β⋆), {display_name(method)}")
        cap = panel.groupby("n_over_d")["theory_cap"].median()
        theory_line(ax, cap.index, cap.values, label="SGD cap cos(Σβ⋆, β⋆)")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("n / d")
        ax.set_ylabel("cos(spike, β⋆)")
        ax.set_title(title)
    legend_outside(axes[-1], axes=axes)
    return fig


def sgd_bias_figure(table: pd.DataFrame) -> Figure:
    """sgd's spike: alignment with β⋆ and with Σβ⋆ against n/d, one panel per (link, κ)."""
    panels = _panels(table[table["algorithm"] == "sgd"])
    fig, axes = new_figure(len(panels), width=4.0)
    for ax, (title, panel) in zip(axes, panels, strict=True):
        long = pd.concat(
            [
                panel.assign(target="β⋆", value=panel["spike_align_beta"]),
                panel.assign(target="Σβ⋆", value=panel["spike_align_sigma_beta"]),
            ]
        )
        median_band(
            ax,
            long,
            x="n_over_d",
            y="value",
            by="target",
            style=_TARGET_STYLES.__getitem__,
            dodge=_DODGE,
            label_format="SGD spike vs {}",
        )
        line = panel.groupby("n_over_d")["theory_align_sigma_beta"].median().dropna()
        theory_line(ax, line.index, line.values, label="theory cos(v, Σβ⋆)")
        _theory(ax, panel, "n_over_d", "theory cos(v, β⋆)")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("n / d")
        ax.set_ylabel("alignment")
        ax.set_title(f"SGD, {title}")
    legend_outside(axes[-1], axes=axes)
    return fig


def risk_figure(table: pd.DataFrame) -> Figure:
    """Excess risk after the ridge readout against n/d for every method (Figure 3 analogue).

    The oracle's risk is orders of magnitude below the others (≈ 0: the teacher is in the
    student class); the axis is cut below the learned methods, and an oracle below the cut
    is not drawn (nor in the legend) but written at the bottom of the panel instead of
    squeezing every other curve."""
    kappas = sorted(table["kappa"].unique())
    fig, axes = new_figure(len(kappas), width=4.2)
    for ax, kappa in zip(axes, kappas, strict=True):
        panel = table[table["kappa"] == kappa]
        is_oracle = panel["algorithm"] == "oracle"
        learned = panel[~is_oracle]["excess_risk"]
        oracle = panel[is_oracle]["excess_risk"].median()
        bottom = 0.3 * learned.min() if not learned.empty and learned.min() > 0 else None
        hidden = bottom is not None and oracle == oracle and oracle < bottom
        median_band(
            ax, panel[~is_oracle] if hidden else panel, x="n_over_d", y="excess_risk", dodge=_DODGE
        )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        if bottom is not None:
            ax.set_ylim(bottom=bottom)
        if hidden:
            ax.text(
                0.02,
                0.02,
                f"▼ {display_name('oracle')}: median {oracle:.1e}, below the axis",
                transform=ax.transAxes,
                fontsize=LEGEND_FONTSIZE,
                color=method_style("oracle")["color"],
            )
        ax.set_xlabel("n / d")
        ax.set_ylabel("excess test risk")
        ax.set_title(f"κ = {kappa:g}")
    legend_outside(axes[-1], axes=axes)
    return fig


def feature_alignment_figure(table: pd.DataFrame) -> Figure:
    """Spike alignment cos(u, β⋆) of every method with a step against n/d, one panel per κ."""
    rows = table[table["algorithm"] != "rf"]
    kappas = sorted(rows["kappa"].unique())
    fig, axes = new_figure(len(kappas), width=4.2)
    for ax, kappa in zip(axes, kappas, strict=True):
        median_band(
            ax, rows[rows["kappa"] == kappa], x="n_over_d", y="spike_align_beta", dodge=_DODGE
        )
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("n / d")
        ax.set_ylabel("cos(spike, β⋆)")
        ax.set_title(f"κ = {kappa:g}")
    legend_outside(axes[-1], axes=axes)
    return fig


def damping_figure(table: pd.DataFrame) -> Figure:
    """kfac against its damping λG: spike alignment with the damped theory (left panels) and
    excess risk (right panels), one row per n/d; sgd as a horizontal reference."""
    ratios = sorted(table["n_over_d"].unique())
    fig, grid = new_grid(len(ratios), 2, width=4.2, height=3.2)
    kfac = table[table["algorithm"] == "kfac"]
    sgd = table[table["algorithm"] == "sgd"]
    reference_style = {**method_style("sgd"), "linestyle": "-.", "marker": None}
    for (align_ax, risk_ax), ratio in zip(grid, ratios, strict=True):
        panel = kfac[kfac["n_over_d"] == ratio]
        for ax, column in ((align_ax, "spike_align_beta"), (risk_ax, "excess_risk")):
            median_band(ax, panel, x="damping", y=column, by="algorithm")
            reference = sgd[sgd["n_over_d"] == ratio][column].median()
            if reference == reference:
                ax.axhline(reference, label="SGD (median)", **reference_style)
            ax.set_xscale("log")
            ax.set_xlabel("damping λG")
            ax.set_title(
                f"n/d = {ratio:g}, κ = {', '.join(f'{k:g}' for k in panel['kappa'].unique())}"
            )
        _theory(align_ax, panel, "damping", "theory cos(v, β⋆), damped")
        align_ax.set_ylim(0, 1.02)
        align_ax.set_ylabel("cos(spike, β⋆)")
        risk_ax.set_yscale("log")
        risk_ax.set_ylabel("excess test risk")
    legend_outside(grid[0][-1], axes=[ax for row in grid for ax in row])
    return fig


# -- single-index-layerwise (C15): one shampoo or muon step -------------------------------------

#: The spike figure's spread: three shampoo labels lie exactly on sgd's points.
_SPIKE_DODGE = 0.1
#: Two theory lines whose right ends are closer than this (in cosine) get no direct labels.
_LABEL_GAP = 0.1


def _direct_label_left(ax, x: float, y: float, text: str) -> None:
    """A theory line's direct label at its left end, just above it (for a line whose right end
    is taken by another line's label)."""
    ax.annotate(
        text,
        (x, y),
        xytext=(4, 3),
        textcoords="offset points",
        fontsize=LEGEND_FONTSIZE,
        color="#555555",
        va="bottom",
        ha="left",
    )


def _row_alignment_panels(table: pd.DataFrame, column: str, target: str) -> Figure:
    """One panel per κ: the row alignment ``column`` of every method with a step against n/d,
    the exact muon step's closed form and the chance level 1/√d as theory lines."""
    kappas = sorted(table["kappa"].unique())
    fig, axes = new_figure(len(kappas), width=4.2)
    for ax, kappa in zip(axes, kappas, strict=True):
        panel = table[(table["kappa"] == kappa) & (table["algorithm"] != "rf")]
        median_band(ax, panel, x="n_over_d", y=column, dodge=_DODGE)
        line = panel.groupby("n_over_d")[f"theory_{column}"].median().dropna()
        if not line.empty:
            theory_line(
                ax, line.index, line.values, label="theory, exact Muon", annotate="exact Muon"
            )
        chance = panel.groupby("n_over_d")["d"].first() ** -0.5
        theory_line(ax, chance.index, chance.values, label="chance 1/√d")
        if not chance.empty:
            _direct_label_left(ax, chance.index[0], chance.iloc[0], "chance 1/√d")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("n / d")
        ax.set_ylabel(f"‖ΔW b‖ / (‖ΔW‖F ‖b‖), b = {target}")
        ax.set_title(f"κ = {kappa:g}")
    legend_outside(axes[-1], axes=axes)
    return fig


def row_alignment_figure(table: pd.DataFrame) -> Figure:
    """Row alignment of ΔW with β⋆ against n/d, one panel per κ, every method (C15)."""
    return _row_alignment_panels(table, "row_align_beta", "β⋆")


def sigma_beta_figure(table: pd.DataFrame) -> Figure:
    """Row alignment of ΔW with Σβ⋆ against n/d, one panel per κ, every method (C15)."""
    return _row_alignment_panels(table, "row_align_sigma_beta", "Σβ⋆")


def spike_figure(table: pd.DataFrame) -> Figure:
    """Spike alignment cos(u, β⋆) against n/d for the methods whose update has a spike (sgd,
    kfac, shampoo), one panel per κ, with the sgd and kfac theory lines for v: every shampoo
    label's spike is exactly sgd's (only its separation σ1/σ2 shrinks with ε); the dodge keeps
    the coincident points side by side."""
    rows = table[table["algorithm"].isin(["sgd", "kfac", "shampoo"])]
    kappas = sorted(rows["kappa"].unique())
    fig, axes = new_figure(len(kappas), width=4.2)
    for ax, kappa in zip(axes, kappas, strict=True):
        panel = rows[rows["kappa"] == kappa]
        median_band(ax, panel, x="n_over_d", y="spike_align_beta", dodge=_SPIKE_DODGE)
        lines = {
            algorithm: panel[panel["algorithm"] == algorithm]
            .groupby("n_over_d")["theory_align_beta"]
            .median()
            .dropna()
            for algorithm in ("sgd", "kfac")
        }
        ends = [line.iloc[-1] for line in lines.values() if not line.empty]
        # Direct labels only where the two lines end apart; else the legend alone names them.
        apart = len(ends) < 2 or abs(ends[0] - ends[1]) > _LABEL_GAP
        for algorithm, line in lines.items():
            if not line.empty:
                name = display_name(algorithm)
                theory_line(
                    ax,
                    line.index,
                    line.values,
                    label=f"theory cos(v, β⋆), {name}",
                    annotate=name if apart else None,
                )
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("n / d")
        ax.set_ylabel("cos(spike, β⋆)")
        ax.set_title(f"κ = {kappa:g}")
    legend_outside(axes[-1], axes=axes)
    return fig
