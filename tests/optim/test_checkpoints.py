"""Checkpoints written by earlier versions of the optimizers keep loading and continue bit for bit.

The fixtures in ``checkpoints/`` were written once, by the code before the optimizers became
composed parts (see ``checkpoints/make_checkpoints.py``); they are never regenerated.
"""

from __future__ import annotations

import pathlib
import sys

import pytest
import torch

FOLDER = pathlib.Path(__file__).parent / "checkpoints"
sys.path.insert(0, str(FOLDER))
import make_checkpoints as fixtures  # noqa: E402


@pytest.mark.parametrize("name", sorted(fixtures.CASES))
def test_fixture_checkpoint_loads_and_continues_bit_for_bit(name):
    dtype, loss, _, _ = fixtures.CASES[name]
    # The fixtures hold enum objects of the old param groups: not loadable with weights_only.
    checkpoint = torch.load(FOLDER / f"{name}.pt", weights_only=False)
    model = fixtures.make_model(dtype)
    model.load_state_dict(checkpoint["model"])
    optimizer = fixtures.make_optimizer(name, model)
    optimizer.load_state_dict(checkpoint["optimizer"])
    data = fixtures.batches(dtype, loss)
    fixtures.train(model, optimizer, data[fixtures.WARMUP :], loss)
    for key, expected in checkpoint["expected"].items():
        reached = model.state_dict()[key]
        assert torch.equal(reached, expected), (
            f"{key}: max |Δ| = {(reached - expected).abs().max():.3g}"
        )
