"""Issue 15: the training claims' target is one AdamW label's, not a pool of several."""

from __future__ import annotations

import pandas as pd
import pytest

from layerwise.problems.training import claims


def test_target_is_the_first_adamw_label_not_a_pool():
    rows = [
        dict(
            method=label,
            algorithm="adamw",
            available=True,
            phase="report",
            step=step,
            seed=seed,
            val_loss=loss if step else 9.0,
        )
        for label, loss in (("adamw", 0.2), ("adamw_slow", 0.6))
        for seed in range(3)
        for step in (0, 10)
    ]
    assert claims.target(pd.DataFrame(rows)) == pytest.approx(0.2)
