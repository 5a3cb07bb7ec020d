"""Plot helpers shared by every experiment: one colour per method, median + IQR bands, theory.

Figures are drawn from stored tables only. Conventions (the same in every figure):

- each method has one fixed colour (:data:`METHOD_COLORS`; unknown methods get a stable colour
  from a hash of the name);
- curves are the median over seeds with the interquartile range as a band;
- theory lines are dashed black;
- axes with errors spanning decades are logarithmic.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written to files, never shown

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

#: One colour per method name, shared by all figures of the project.
METHOD_COLORS: dict[str, str] = {
    "sgd": "#1f77b4",
    "amd": "#17becf",
    "dfw": "#9467bd",
    "kfac": "#d62728",
    "kfac_half": "#ff7f0e",
    "kfac_one": "#8b0000",
    "kfac_eighth": "#ffbb78",
    "adam": "#2ca02c",
    "adam_ls": "#98df8a",
    "batchnorm": "#8c564b",
    "gauss_newton": "#e377c2",
    "newton": "#7f7f7f",
    "rf": "#bcbd22",
    "oracle": "#000000",
    "KFAC": "#ff9896",
    "Shampoo": "#c5b0d5",
    "SOAP": "#c49c94",
    "Muon": "#f7b6d2",
    "AdamW": "#aec7e8",
    "SGD": "#9edae5",
    # The training workloads: ours solid, the peers of the same method dashed in a lighter shade.
    "adamw": "#2ca02c",
    "shampoo": "#6a3d9a",
    "soap": "#a6761d",
    "muon": "#e7298a",
    # single-index-layerwise: shampoo's damping from near-polar (light) to near-sgd (dark).
    "shampoo_1e-4": "#cab2d6",
    "shampoo_1e-2": "#8e6bbf",
    "shampoo_1": "#3f007d",
    "muon_ns": "#f7a1c4",
    "ekfac": "#ff7f0e",
    "pytorch_optimizer_shampoo": "#b39ddb",
    "heavyball_soap": "#d9b77a",
    "torch_muon": "#f4a6c8",
}

_FALLBACK = plt.get_cmap("tab20").colors


def method_color(method: str) -> str | tuple[float, float, float]:
    """The fixed colour of ``method`` (stable across runs and figures)."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    digest = int(hashlib.sha1(method.encode()).hexdigest(), 16)
    return _FALLBACK[digest % len(_FALLBACK)]


def median_band(
    ax: Axes,
    table: pd.DataFrame,
    *,
    x: str,
    y: str,
    by: str = "method",
    label_format: str = "{}",
    marker: str | None = None,
    linestyle: str = "-",
) -> None:
    """Plot, for each value of ``by``, the median of ``y`` over rows sharing ``x`` (the seeds)
    as a line and the interquartile range as a translucent band."""
    for key, rows in table.groupby(by, sort=True):
        stats = rows.groupby(x)[y].quantile([0.25, 0.5, 0.75]).unstack()
        color = method_color(str(key))
        ax.plot(
            stats.index,
            stats[0.5],
            color=color,
            marker=marker,
            linestyle=linestyle,
            label=label_format.format(key),
        )
        ax.fill_between(stats.index, stats[0.25], stats[0.75], color=color, alpha=0.2, lw=0)


def theory_line(ax: Axes, x, y, *, label: str | None = "theory") -> None:
    """Draw a theory prediction as a dashed black line."""
    ax.plot(x, y, linestyle="--", color="black", linewidth=1.2, label=label)


def new_figure(
    ncols: int = 1, *, width: float = 4.5, height: float = 3.4
) -> tuple[Figure, list[Axes]]:
    """A figure with ``ncols`` side-by-side axes (always returned as a list)."""
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def save_figure(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write ``fig`` as PNG and PDF under ``out_dir`` and close it; return the two paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    fig.tight_layout()
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return paths
