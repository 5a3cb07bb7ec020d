"""Progress inside one run: a transient bar over the iterations of a long simulation.

``layerwise run`` shows a bar of finished runs; a run that takes minutes (a κ = 1000 sweep, a
tuning stage over the step-size grid) would sit on it without a sign of life. A run function
that loops gets ``task.progress`` (:class:`~layerwise.experiments.registry.RunTask`, off with
``--no-progress``) and wraps its loop in :func:`iteration_bar`. The bar appears only after two
seconds, so short runs print nothing, and disappears when its loop ends. With several worker
processes each prints its own bar to the command's standard error.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

#: Seconds before an inner bar appears (shorter loops print nothing).
DELAY_SECONDS = 2.0


def iteration_bar(description: str | None, total: int) -> tqdm:
    """A bar of ``total`` iterations labelled ``description``; ``None``: a disabled bar."""
    return tqdm(
        total=total,
        desc=description,
        unit="it",
        leave=False,
        delay=DELAY_SECONDS,
        mininterval=1.0,
        disable=description is None,
        file=sys.stderr,
    )
