"""Plot helpers shared by every experiment: names, styles, median + IQR bands, theory lines.

Figures are drawn from stored tables only. Conventions (the same in every figure):

- a method label (a key of a config's ``methods``) is shown by its :func:`display_name`
  ("KFAC, η = ⅛" for ``kfac_eighth``), never as the raw identifier;
- each method *family* has one colour from a colour-blind-friendly palette
  (:data:`FAMILY_COLORS`: Okabe–Ito and Paul Tol colours); the methods of a family (KFAC at
  several step sizes, the library KFAC, EKFAC) share it and differ by marker and line style
  (:func:`method_style`), so a series lying on another stays visible;
- curves are the median over seeds with the interquartile range as a translucent band;
- theory lines are black or grey, each in its own line style (:func:`theory_line`);
- legends sit outside the axes (:func:`legend_outside`) at :data:`LEGEND_FONTSIZE` pt or more;
- axes with values spanning decades are logarithmic.

New experiments add their labels to :data:`METHODS` (a label it does not know gets a readable
name and the colour of the family its prefix names, see :func:`method_style`).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are written to files, never shown

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

#: Legend text size (pt); no legend of the project is smaller.
LEGEND_FONTSIZE = 8.0

#: One colour per method family. Okabe & Ito (2008) and Paul Tol's palettes, assigned so that
#: the families drawn together in one figure stay apart under deuteranopia and protanopia too.
FAMILY_COLORS: dict[str, str] = {
    "sgd": "#0072B2",  # blue
    "amd": "#33BBEE",  # cyan
    "dfw": "#CC79A7",  # reddish purple
    "kfac": "#D55E00",  # vermillion
    "adam": "#009E73",  # bluish green
    "batchnorm": "#CCBB44",  # olive yellow
    "gauss_newton": "#EE6677",  # rose
    "newton": "#332288",  # indigo
    "shampoo": "#DDAA33",  # gold
    "soap": "#44AA99",  # teal
    "muon": "#994455",  # wine
    "rf": "#999999",  # grey: random features, no step
    "oracle": "#000000",  # black: the features along β⋆
}


@dataclass(frozen=True)
class MethodLook:
    """How one method label is shown: its readable ``name``, its ``family`` (the colour),
    a ``marker`` and a ``linestyle``."""

    name: str
    family: str
    marker: str = "o"
    linestyle: str = "-"


#: The method labels of the project's configs. Within a family the markers differ, and the
#: variants of the family's main method are dashed or dotted.
METHODS: dict[str, MethodLook] = {
    # The paper's methods on the linear representation model (linrep).
    "sgd": MethodLook("SGD", "sgd", "o"),
    "amd": MethodLook("AMD", "amd", "s"),
    "dfw": MethodLook("DFW", "dfw", "D"),
    "kfac": MethodLook("KFAC", "kfac", "o"),
    "kfac_one": MethodLook("KFAC, η = 1", "kfac", "^", "--"),
    "kfac_half": MethodLook("KFAC, η = ½", "kfac", "s", "-."),
    "kfac_quarter": MethodLook("KFAC, η = ¼", "kfac", "v", "-."),
    "kfac_eighth": MethodLook("KFAC, η = ⅛", "kfac", "v", ":"),
    "adam": MethodLook("Adam", "adam", "^"),
    "adam_ls": MethodLook("Adam, least-squares head", "adam", "v", "--"),
    "batchnorm": MethodLook("batch-norm SGD", "batchnorm", "P"),
    "gauss_newton": MethodLook("Gauss–Newton", "gauss_newton", "X"),
    "newton": MethodLook("Newton", "newton", "*"),
    # layerwise.optim on the nn.Module version of the linrep model.
    "KFAC": MethodLook("KFAC (library)", "kfac", "D", (0, (5, 1))),
    "EKFAC": MethodLook("EKFAC (library)", "kfac", "P", (0, (3, 1, 1, 1))),
    "library_kfac_quarter": MethodLook("KFAC (library), η = ¼", "kfac", "D", (0, (5, 1))),
    "Shampoo": MethodLook("Shampoo (library)", "shampoo", "s"),
    "Shampoo_exact": MethodLook("Shampoo (library, exact)", "shampoo", "o", "--"),
    "SOAP": MethodLook("SOAP (library)", "soap", "P"),
    "SOAP_exact": MethodLook("SOAP (library, exact)", "soap", "o", "--"),
    "Muon": MethodLook("Muon (library)", "muon", "D"),
    "Muon_exact": MethodLook("Muon (library, exact)", "muon", "o", "--"),
    "AdamW": MethodLook("AdamW (library)", "adam", "o"),
    "SGD": MethodLook("SGD (library)", "sgd", "D"),
    # Single-index model (one large first-layer step).
    "rf": MethodLook("random features (no step)", "rf", "x"),
    "oracle": MethodLook("oracle (features along β⋆)", "oracle", "*"),
    "muon_ns": MethodLook("Muon, Newton–Schulz polar", "muon", "o", "--"),
    # Training workloads and mlp: ours solid, the peers of the same method dashed.
    "adamw": MethodLook("AdamW", "adam", "^"),
    "shampoo": MethodLook("Shampoo", "shampoo", "s"),
    "soap": MethodLook("SOAP", "soap", "P"),
    "muon": MethodLook("Muon", "muon", "D"),
    "ekfac": MethodLook("EKFAC", "kfac", "P", "-."),
    "torch_muon": MethodLook("Muon (torch.optim)", "muon", "v", "--"),
    "heavyball_soap": MethodLook("SOAP (heavyball)", "soap", "v", "--"),
    "pytorch_optimizer_shampoo": MethodLook("Shampoo (pytorch-optimizer)", "shampoo", "v", "--"),
}

# Damping variants (single-index-damping, single-index-layerwise): one marker per value.
for _method in ("kfac", "shampoo"):
    for _damping, _marker, _linestyle in zip(
        ("1e-4", "1e-3", "1e-2", "1e-1", "1"),
        ("v", "^", "s", "D", "P"),
        ("--", "-.", ":", "--", "-."),
        strict=True,
    ):
        METHODS[f"{_method}_{_damping}"] = MethodLook(
            f"{METHODS[_method].name}, λ = {_damping}", _method, _marker, _linestyle
        )

#: Readable names of the grid values and other identifiers that figures show.
VALUE_NAMES: dict[str, str] = {
    "axis_aligned": "axis-aligned Σx",
    "rotated": "rotated Σx",
    "tanh": "tanh",
    "relu": "ReLU",
    "log_spaced": "log-spaced spectrum",
    "digits": "digits (conv net)",
    "lm": "character LM",
    "tabular": "tabular MLP",
    "library_kfac": "KFAC (library)",
    "library_ekfac": "EKFAC (library)",
}

#: Suffixes of ``<method>_<suffix>`` labels that no entry of :data:`METHODS` names.
_SUFFIX_WORDS = {
    "one": "η = 1",
    "half": "η = ½",
    "quarter": "η = ¼",
    "eighth": "η = ⅛",
    "exact": "exact",
    "ns": "Newton–Schulz",
    "ls": "least-squares head",
}
_NUMBER = re.compile(r"^\d+(\.\d+)?(e-?\d+)?$")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_LINESTYLES = ("-", "--", "-.", ":")
_FALLBACK_COLORS = ("#4477AA", "#EE7733", "#228833", "#AA3377", "#997700", "#6699CC")


def _stable_index(text: str, size: int) -> int:
    """The same index in ``range(size)`` for the same text, in every process."""
    return int(hashlib.sha1(text.encode()).hexdigest(), 16) % size


def _split_label(label: str) -> tuple[str, str] | None:
    """``kfac_1e-4`` -> ``("kfac", "1e-4")`` when the prefix is a known method or family."""
    for cut in range(len(label) - 1, 0, -1):
        if label[cut] == "_" and (label[:cut] in METHODS or label[:cut] in FAMILY_COLORS):
            return label[:cut], label[cut + 1 :]
    return None


def display_name(label: Any) -> str:
    """The readable name of a method label or grid value (``"kfac_eighth"`` -> ``"KFAC, η = ⅛"``,
    ``"axis_aligned"`` -> ``"axis-aligned Σx"``).

    Labels not in :data:`METHODS` or :data:`VALUE_NAMES` are composed: ``kfac_1e-4`` ->
    ``"KFAC, λ = 1e-4"`` (a number after a known method is its damping), ``Muon_exact`` ->
    ``"Muon (library), exact"``; anything else has its underscores replaced by spaces.
    """
    text = str(label)
    if text in METHODS:
        return METHODS[text].name
    if text in VALUE_NAMES:
        return VALUE_NAMES[text]
    split = _split_label(text)
    if split is not None:
        base, suffix = split
        if _NUMBER.match(suffix):
            words = f"λ = {suffix}"
        else:
            words = _SUFFIX_WORDS.get(suffix, suffix.replace("_", " "))
        return f"{display_name(base)}, {words}"
    return text.replace("_", " ")


def _look(label: str) -> MethodLook:
    """The :class:`MethodLook` of ``label``: listed, derived from a known prefix, or hashed."""
    if label in METHODS:
        return METHODS[label]
    split = _split_label(label)
    if split is not None:
        base = METHODS.get(split[0])
        family = base.family if base is not None else split[0]
        # Variants of a known method keep its family's colour and get their own marker.
        pairs = [(m, ls) for m in _MARKERS[1:] for ls in _LINESTYLES[1:]]
        marker, linestyle = pairs[_stable_index(label, len(pairs))]
        return MethodLook(display_name(label), family, marker, linestyle)
    marker = _MARKERS[_stable_index(label, len(_MARKERS))]
    return MethodLook(display_name(label), f"other:{label}", marker, ":")


def method_color(label: Any) -> str:
    """The colour of ``label``'s family (stable across runs and figures)."""
    family = _look(str(label)).family
    if family in FAMILY_COLORS:
        return FAMILY_COLORS[family]
    return _FALLBACK_COLORS[_stable_index(family, len(_FALLBACK_COLORS))]


def method_style(label: Any) -> dict[str, Any]:
    """``{"color", "marker", "linestyle"}`` of a method label, to pass to ``Axes.plot``.

    The colour is the family's (:data:`FAMILY_COLORS`); marker and line style tell the
    family's methods apart. Unknown labels get a stable hashed style, dotted.
    """
    look = _look(str(label))
    return {"color": method_color(label), "marker": look.marker, "linestyle": look.linestyle}


def _importance(label: str) -> int:
    """Draw order: the paper's layer-wise methods above the rest, references below."""
    family = _look(label).family
    return {"kfac": 3, "dfw": 2, "rf": 0, "oracle": 0}.get(family, 1)


def median_band(
    ax: Axes,
    table: pd.DataFrame,
    *,
    x: str,
    y: str,
    by: str = "method",
    label_format: str = "{}",
    labels: Mapping[Any, str] | Callable[[Any], str] | None = None,
    style: Callable[[Any], Mapping[str, Any]] = method_style,
    marker: str | None = None,
    linestyle: str | None = None,
    dodge: float = 0.0,
    markers_per_line: int = 8,
) -> None:
    """Plot, for each value of ``by``, the median of ``y`` over rows sharing ``x`` (the seeds)
    as a line and the interquartile range as a translucent band.

    Line and marker come from ``style(key)`` (default :func:`method_style`); ``marker`` or
    ``linestyle`` override them for every key. The legend text is
    ``label_format.format(labels(key))`` (``labels`` a mapping or function, default
    :func:`display_name`).

    So that no series is hidden under another: the layer-wise methods are drawn on top; a
    long line carries ``markers_per_line`` markers, staggered between the lines; and
    ``dodge > 0`` shifts the i-th of n series horizontally by the factor
    ``exp(dodge · (i − (n − 1)/2))`` (for log x axes, where grid points are far apart), so
    coincident points sit side by side instead of on top of each other.
    """
    groups = list(table.groupby(by, sort=True))
    for index, (key, rows) in enumerate(groups):
        stats = rows.groupby(x)[y].quantile([0.25, 0.5, 0.75]).unstack()
        look = dict(style(key))
        if marker is not None:
            look["marker"] = marker
        if linestyle is not None:
            look["linestyle"] = linestyle
        name = labels(key) if callable(labels) else (labels or {}).get(key, display_name(key))
        xs = stats.index.to_numpy(dtype=float)
        if dodge:
            xs = xs * math.exp(dodge * (index - (len(groups) - 1) / 2))
        markevery = None
        if len(xs) > 2 * markers_per_line:
            step = math.ceil(len(xs) / markers_per_line)
            markevery = (index * max(1, step // max(1, len(groups))) % step, step)
        order = 2.0 + 0.1 * _importance(str(key))
        ax.plot(
            xs,
            stats[0.5].to_numpy(),
            **{"markevery": markevery, "markersize": 5, "zorder": order, **look},
            label=label_format.format(name),
        )
        ax.fill_between(
            xs,
            stats[0.25].to_numpy(),
            stats[0.75].to_numpy(),
            color=look.get("color"),
            alpha=0.15,
            lw=0,
            zorder=1,
        )


#: Line styles of successive theory lines on one axes: black and greys, all different.
THEORY_STYLES: tuple[dict[str, Any], ...] = (
    {"linestyle": "--", "color": "black"},
    {"linestyle": ":", "color": "black", "linewidth": 1.6},
    {"linestyle": "-.", "color": "#555555"},
    {"linestyle": (0, (6, 2, 1, 2, 1, 2)), "color": "#555555"},
    {"linestyle": (0, (1, 3)), "color": "#555555", "linewidth": 1.6},
)

#: The ``gid`` of every theory line (how a figure's theory lines are found again).
THEORY_GID = "theory"


def theory_line(
    ax: Axes, x, y, *, label: str | None = "theory", annotate: str | None = None
) -> None:
    """Draw a theory prediction in the next unused style of :data:`THEORY_STYLES` on ``ax``.

    ``label`` is its legend entry (the formula's name); ``annotate`` writes that text at the
    line's right end as well, just above it (a direct label, for figures with several theory
    lines).
    """
    drawn = sum(1 for line in ax.get_lines() if line.get_gid() == THEORY_GID)
    look = {"linewidth": 1.2, **THEORY_STYLES[drawn % len(THEORY_STYLES)]}
    (line,) = ax.plot(x, y, label=label, zorder=4, **look)
    line.set_gid(THEORY_GID)
    if annotate:
        xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if len(xs):
            ax.annotate(
                annotate,
                (xs[-1], ys[-1]),
                xytext=(-8, 3),  # above the line, left of its end (clear of the end markers)
                textcoords="offset points",
                fontsize=LEGEND_FONTSIZE,
                color=look["color"],
                va="bottom",
                ha="right",
                annotation_clip=False,
            )


def budget_line(ax: Axes, budget: float, unit: str = "iterations") -> None:
    """The iteration budget (where censored counts sit) as a dotted grey line, labelled above
    the line; the y axis grows to make room for the label (call after ``set_yscale``)."""
    ax.axhline(budget, color="grey", linewidth=0.8, linestyle=":", zorder=1.5)
    ax.set_ylim(top=budget * 3.0 if ax.get_yscale() == "log" else budget * 1.12)
    ax.text(
        0.99,
        budget,
        f"budget: {budget:g} {unit}",
        transform=blended_transform_factory(ax.transAxes, ax.transData),
        ha="right",
        va="bottom",
        fontsize=LEGEND_FONTSIZE,
        color="#555555",
    )


def legend_outside(
    ax: Axes, *, axes: Sequence[Axes] | None = None, title: str | None = None, **kwargs: Any
) -> None:
    """A legend to the right of ``ax``, outside its data area, at :data:`LEGEND_FONTSIZE` pt.

    ``axes``: collect the entries of all these axes (each label once), for one legend shared
    by a row of panels; the legend is placed right of ``ax`` (the row's last panel).
    """
    handles, labels = [], []
    for source in axes or [ax]:
        for handle, label in zip(*source.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if not handles:
        return
    legend = ax.legend(
        handles,
        labels,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        fontsize=LEGEND_FONTSIZE,
        title=title,
        title_fontsize=LEGEND_FONTSIZE,
        frameon=False,
        **kwargs,
    )
    # Out of the layout: the axes keep their size and the saved figure grows to the right
    # (save_figure's bbox_inches="tight") instead of the panels shrinking to make room.
    legend.set_in_layout(False)


def new_figure(
    ncols: int = 1, *, width: float = 4.5, height: float = 3.4
) -> tuple[Figure, list[Axes]]:
    """A figure with ``ncols`` side-by-side axes (always returned as a list)."""
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def new_grid(
    nrows: int, ncols: int, *, width: float = 4.0, height: float = 3.0
) -> tuple[Figure, list[list[Axes]]]:
    """A figure with ``nrows`` rows of ``ncols`` axes, returned as a list of rows."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return fig, [list(row) for row in axes]


def save_figure(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write ``fig`` as PNG and PDF under ``out_dir`` and close it; return the two paths.

    The saved area grows to take in legends placed outside the axes.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    fig.tight_layout()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    artists = [*fig.get_default_bbox_extra_artists(), *legends, *fig.legends]
    for path in paths:
        fig.savefig(path, dpi=120, bbox_inches="tight", bbox_extra_artists=artists)
    plt.close(fig)
    return paths
