"""Checkpoints written by earlier versions of the optimizers keep loading and continue their run.

The fixtures in ``checkpoints/`` were written once, by the code before the optimizers became
composed parts (see ``checkpoints/make_checkpoints.py``); they are never regenerated.

On the CPU that wrote them the continuation is bit for bit. On another CPU, BLAS takes other
kernels (another vector width, another summation order) and the same code differs in the last
bits, which the steps then amplify (EKFAC's eigenbasis most: 2e-9 of the distance moved). So
the parameters reached are compared with the stored ones relative to the distance the
continued steps moved them: within ``RELATIVE[dtype]`` of it. An optimizer whose state did not
load (a fresh one continuing from the loaded model) misses by 0.5-1x that distance, four or
more orders of magnitude above the tolerance. (``kfac-exact`` has no state between steps: for
it only the loading itself is tested.)
"""

from __future__ import annotations

import pathlib
import sys

import pytest
import torch

FOLDER = pathlib.Path(__file__).parent / "checkpoints"
#: Largest |reached − stored| as a fraction of the largest |stored − start| (module docstring).
RELATIVE = {torch.float64: 1e-8, torch.float32: 1e-4}
sys.path.insert(0, str(FOLDER))
import make_checkpoints as fixtures  # noqa: E402


@pytest.mark.parametrize("name", sorted(fixtures.CASES))
def test_fixture_checkpoint_loads_and_continues_its_run(name):
    dtype, loss, _, _ = fixtures.CASES[name]
    # The fixtures hold enum objects of the old param groups: not loadable with weights_only.
    checkpoint = torch.load(FOLDER / f"{name}.pt", weights_only=False)
    model = fixtures.make_model(dtype)
    model.load_state_dict(checkpoint["model"])
    optimizer = fixtures.make_optimizer(name, model)
    optimizer.load_state_dict(checkpoint["optimizer"])
    data = fixtures.batches(dtype, loss)
    start = {key: value.clone() for key, value in model.state_dict().items()}
    fixtures.train(model, optimizer, data[fixtures.WARMUP :], loss)
    expected = checkpoint["expected"]
    moved = max((expected[key] - start[key]).abs().max().item() for key in expected)
    for key, stored in expected.items():
        gap = (model.state_dict()[key] - stored).abs().max().item()
        assert gap <= RELATIVE[dtype] * moved, (
            f"{key}: max |Δ| = {gap:.3g}, {gap / moved:.2g} of the distance moved ({moved:.3g})"
        )
