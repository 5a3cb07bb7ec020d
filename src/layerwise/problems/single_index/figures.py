"""Figures of the single-index experiments, drawn from stored tables only.

Medians over seeds with interquartile bands (one colour per method), theory as dashed black
lines (the median over seeds of the per-instance prediction), n/d on a log2 axis.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from layerwise.experiments.plots import median_band, new_figure, theory_line


def _theory(ax, rows: pd.DataFrame, x: str, label: str | None) -> None:
    line = rows.groupby(x)["theory_align_beta"].median().dropna()
    if not line.empty:
        theory_line(ax, line.index, line.values, label=label)


def _panels(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One panel per (link, κ), titled by both."""
    return [
        (f"{link}, κ = {kappa:g}", group)
        for (link, kappa), group in rows.groupby(["link", "kappa"], sort=True)
    ]


def alignment_figure(table: pd.DataFrame) -> Figure:
    """Spike alignment cos(u, β⋆) against n/d, one panel per (link, κ), sgd and kfac with theory
    lines for v (Figure 2 analogue); the dotted grey line is the sgd cap cos(Σβ⋆, β⋆)."""
    panels = _panels(table[table["algorithm"].isin(["sgd", "kfac"])])
    fig, axes = new_figure(len(panels))
    for ax, (title, panel) in zip(axes, panels, strict=True):
        median_band(ax, panel, x="n_over_d", y="spike_align_beta", marker="o", linestyle="none")
        for index, (_, group) in enumerate(panel.groupby("method")):
            _theory(ax, group, "n_over_d", "theory (v)" if index == 0 else None)
        cap = panel.groupby("n_over_d")["theory_cap"].median()
        ax.plot(cap.index, cap.values, linestyle=":", color="grey", label="sgd cap")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("n / d")
        ax.set_ylabel("cos(spike, β⋆)")
        ax.set_title(title)
        ax.legend(fontsize=7)
    return fig


def sgd_bias_figure(table: pd.DataFrame) -> Figure:
    """sgd's spike: alignment with β⋆ and with Σβ⋆ against n/d, one panel per (link, κ)."""
    panels = _panels(table[table["algorithm"] == "sgd"])
    fig, axes = new_figure(len(panels))
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
            marker="o",
            label_format="sgd spike vs {}",
        )
        line = panel.groupby("n_over_d")["theory_align_sigma_beta"].median().dropna()
        theory_line(ax, line.index, line.values, label="theory cos(v, Σβ⋆)")
        _theory(ax, panel, "n_over_d", "theory cos(v, β⋆)")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("n / d")
        ax.set_ylabel("alignment")
        ax.set_title(f"sgd, {title}")
        ax.legend(fontsize=7)
    return fig


def risk_figure(table: pd.DataFrame) -> Figure:
    """Excess risk after the ridge readout against n/d for every method (Figure 3 analogue).

    The oracle's risk is orders of magnitude below the others (≈ 0: the teacher is in the
    student class); the axis is cut below the learned methods and the oracle's median is
    written in the title instead of squeezing every other curve."""
    kappas = sorted(table["kappa"].unique())
    fig, axes = new_figure(len(kappas))
    for ax, kappa in zip(axes, kappas, strict=True):
        panel = table[table["kappa"] == kappa]
        median_band(ax, panel, x="n_over_d", y="excess_risk", marker="o")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        learned = panel[panel["algorithm"] != "oracle"]["excess_risk"]
        title = f"κ = {kappa:g}"
        oracle = panel[panel["algorithm"] == "oracle"]["excess_risk"].median()
        if not learned.empty and learned.min() > 0:
            bottom = 0.3 * learned.min()
            ax.set_ylim(bottom=bottom)
            if oracle == oracle and oracle < bottom:
                title += f" (oracle median {oracle:.1e}, below the axis)"
        ax.set_xlabel("n / d")
        ax.set_ylabel("excess test risk")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    return fig


def feature_alignment_figure(table: pd.DataFrame) -> Figure:
    """Spike alignment cos(u, β⋆) of every method with a step against n/d, one panel per κ."""
    rows = table[table["algorithm"] != "rf"]
    kappas = sorted(rows["kappa"].unique())
    fig, axes = new_figure(len(kappas))
    for ax, kappa in zip(axes, kappas, strict=True):
        median_band(
            ax, rows[rows["kappa"] == kappa], x="n_over_d", y="spike_align_beta", marker="o"
        )
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("n / d")
        ax.set_ylabel("cos(spike, β⋆)")
        ax.set_title(f"κ = {kappa:g}")
        ax.legend(fontsize=7)
    return fig


def damping_figure(table: pd.DataFrame) -> Figure:
    """kfac against its damping λG: spike alignment with the damped theory (left panels) and
    excess risk (right panels), one pair per n/d; sgd as a horizontal reference."""
    ratios = sorted(table["n_over_d"].unique())
    fig, axes = new_figure(2 * len(ratios))
    kfac = table[table["algorithm"] == "kfac"]
    sgd = table[table["algorithm"] == "sgd"]
    for index, ratio in enumerate(ratios):
        align_ax, risk_ax = axes[2 * index], axes[2 * index + 1]
        panel = kfac[kfac["n_over_d"] == ratio]
        for ax, column in ((align_ax, "spike_align_beta"), (risk_ax, "excess_risk")):
            median_band(ax, panel, x="damping", y=column, by="algorithm", marker="o")
            reference = sgd[sgd["n_over_d"] == ratio][column].median()
            if reference == reference:
                ax.axhline(reference, color="#1f77b4", linestyle="-.", label="sgd (median)")
            ax.set_xscale("log")
            ax.set_xlabel("damping λG")
            ax.set_title(
                f"n/d = {ratio:g}, κ = {', '.join(f'{k:g}' for k in panel['kappa'].unique())}"
            )
        _theory(align_ax, panel, "damping", "theory (v)")
        align_ax.set_ylim(0, 1.02)
        align_ax.set_ylabel("cos(spike, β⋆)")
        risk_ax.set_yscale("log")
        risk_ax.set_ylabel("excess test risk")
        align_ax.legend(fontsize=7)
        risk_ax.legend(fontsize=7)
    return fig
