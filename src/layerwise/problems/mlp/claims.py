"""Claim MLP1, decided from the stored table of ``mlp-optimizers``.

The threshold (:data:`HELD_OUT_RATIO`) is ours, fixed before looking at results: the project's
end-to-end check that every optimizer trains in an ordinary loop, not a claim of the paper.
"""

from __future__ import annotations

import pandas as pd

from layerwise.experiments.registry import Claim, Verdict

#: The claim's threshold: final held-out loss over initial held-out loss (median over seeds).
HELD_OUT_RATIO = 0.5


def decide_held_out(table: pd.DataFrame) -> Verdict:
    """Holds if, for every method, the median over seeds of final / initial held-out loss is
    below :data:`HELD_OUT_RATIO`."""
    ratios = {}
    for method, rows in table.groupby("method", sort=True):
        first = rows[rows["step"] == rows["step"].min()].set_index("seed")["test_loss"]
        last = rows[rows["step"] == rows["step"].max()].set_index("seed")["test_loss"]
        ratios[str(method)] = float((last / first).median())
    if not ratios:
        raise ValueError("no rows to decide on")
    worst = max(ratios, key=lambda method: ratios[method])
    holds = all(ratio < HELD_OUT_RATIO for ratio in ratios.values())
    listed = ", ".join(f"{method} {ratio:.3g}" for method, ratio in ratios.items())
    return Verdict(
        holds=bool(holds),
        evidence={"threshold": HELD_OUT_RATIO, "final_over_initial_test_loss": ratios},
        summary=f"median final/initial held-out loss: {listed}; worst {worst} "
        f"({ratios[worst]:.3g} vs threshold {HELD_OUT_RATIO})",
    )


MLP1 = Claim(
    id="MLP1",
    statement=(
        f"every optimizer reduces the median held-out loss to below {HELD_OUT_RATIO:.0%} of its "
        "initial value"
    ),
    decide=decide_held_out,
    rule=f"Holds when, for every method, the median over seeds of the held-out loss at the last "
    f"step divided by that at the first recorded step is below {HELD_OUT_RATIO}.",
    figure="losses",
)
