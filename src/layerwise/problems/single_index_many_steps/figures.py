"""Figure of ``single-index-many-steps``, drawn from the stored table only.

The conventions of :mod:`layerwise.experiments.plots`: methods by display name, one colour per
family, the median over seeds with its interquartile band, theory lines black or grey and
directly labelled, one legend outside the axes. The methods' points are spread by a few
percent around each recorded step (``median_band``'s dodge) so that coincident points, such as
the norm-matched first steps, stay visible.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from layerwise.experiments.plots import legend_outside, median_band, new_figure, theory_line

#: Horizontal spread of the methods' points around a recorded step (see median_band's dodge).
_DODGE = 0.02


def over_steps_figure(table: pd.DataFrame) -> Figure:
    """Spike alignment of W_t − W0 with β⋆ (the first panels, one per κ) and with Σβ⋆ (the
    last panels) against the step t, every method, with the chance level 1/√d of a random
    direction in d dimensions."""
    kappas = sorted(table["kappa"].unique())
    fig, axes = new_figure(2 * len(kappas), width=4.2)
    for index, kappa in enumerate(kappas):
        panel = table[table["kappa"] == kappa]
        chance = panel.groupby("step")["d"].first() ** -0.5
        for ax, column, target in (
            (axes[index], "spike_align_beta", "β⋆"),
            (axes[len(kappas) + index], "spike_align_sigma_beta", "Σβ⋆"),
        ):
            median_band(ax, panel, x="step", y=column, dodge=_DODGE)
            theory_line(ax, chance.index, chance.values, label="chance 1/√d", annotate="1/√d")
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("step t")
            ax.set_ylabel(f"cos(spike of W_t − W0, {target})")
            ax.set_title(f"κ = {kappa:g}, alignment with {target}")
    legend_outside(axes[-1], axes=axes)
    return fig
