"""Training a ``torch.compile``-d model: every optimizer agrees with eager training.

With the ``aot_eager`` backend (dynamo's graph capture and AOTAutograd, no code generation, so
it compiles in seconds on a CPU) compiled gradients are bitwise those of eager mode, and so is
training. Inductor changes gradients by ~1e-7 relative; how much each optimizer amplifies that
is measured and explained in docs/composition.md ("torch.compile"), not asserted here.
"""

from __future__ import annotations

import copy

import pytest
import torch
from optim_cases import assert_same_parameters, make_mlp, regression_batches, train

from layerwise.optim import KFAC, SOAP, Muon, Shampoo

FACTORIES = {
    "shampoo": lambda m, model: Shampoo(m.parameters(), lr=1e-2, precondition_dtype=None),
    "soap": lambda m, model: SOAP(m.parameters(), lr=1e-2, precondition_dtype=None),
    "muon": lambda m, model: Muon(m.parameters(), lr=2e-2, ns_dtype=None),
    "kfac": lambda m, model: KFAC(model, loss="mse", curvature="empirical"),
}


@pytest.mark.parametrize("name", FACTORIES)
def test_compiled_model_trains_as_the_eager_one(name):
    # A compiled graph is reused across module instances of the same code, and dynamo does not
    # guard on hooks (KFAC's would be ignored): each case compiles afresh.
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = make_mlp(widths=(6, 32, 32, 2), dtype=torch.float32)
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin, backend="aot_eager")
    batches = regression_batches(5, n=64, dtype=torch.float32)
    train(eager, FACTORIES[name](eager, eager), batches)
    train(compiled, FACTORIES[name](twin, compiled), batches)
    assert_same_parameters(eager, twin, exact=True)


@pytest.mark.parametrize("curvature", ["ggn", "mc_fisher"])
def test_kfac_refuses_curvature_passes_through_a_compiled_model(curvature):
    compiled = torch.compile(make_mlp(), backend="aot_eager")
    with pytest.raises(ValueError, match="use curvature='empirical' with a compiled model"):
        KFAC(compiled, loss="mse", curvature=curvature)
