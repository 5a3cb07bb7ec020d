"""The project's optimizers on the nn.Module version of the model (SPEC fact 4)."""

from __future__ import annotations

import pytest
import torch

from layerwise.problems.linrep.algorithms import Kfac
from layerwise.problems.linrep.data import BatchStream, make_instance
from layerwise.problems.linrep.driver import build_method, iterations_to_eps, simulate
from layerwise.problems.linrep.methods import METHOD_MODELS
from layerwise.problems.linrep.settings import KfacParams, LinrepSettings

optim = pytest.importorskip("layerwise.optim", reason="layerwise.optim is not available")
if not hasattr(optim, "KFAC"):
    pytest.skip("layerwise.optim.KFAC is not available yet", allow_module_level=True)

from layerwise.problems.linrep.library import make_optimizer, two_layer_model  # noqa: E402

DT = torch.float64


@pytest.mark.parametrize("lr", [1.0, 0.3])
def test_fact4_library_kfac_reproduces_the_stylized_g_step(lr):
    s = LinrepSettings(d=10, k=3, dy=4, n=40, kappa_x=100, kappa_f=5, noise_std=0.1)
    inst = make_instance(s, (0, 1))
    batch = BatchStream(s, inst).next()
    stylized = Kfac(
        inst.init_features,
        inst.init_head,
        torch.tensor([lr], dtype=DT).reshape(1, 1, 1, 1),
        KfacParams(orthonormalize=False),
    )
    stylized.step(batch)
    for i in range(2):
        model = two_layer_model(inst.init_features[i], inst.init_head[i])
        opt = make_optimizer("library_kfac", model, lr, {})
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(batch.x[i]), batch.y[i]).backward()
        opt.step()
        torch.testing.assert_close(
            model[0].weight.detach(), stylized.features[0, i], rtol=1e-8, atol=1e-10
        )


@pytest.mark.parametrize(
    ("algorithm", "lr", "options"),
    [
        ("library_kfac", 0.5, {}),
        ("shampoo", 0.03, {"exact": True}),
        ("soap", 0.03, {}),
        ("muon", 0.03, {}),
    ],
)
def test_library_rows_run_and_learn_on_the_isotropic_problem(algorithm, lr, options):
    # These optimizers normalize their steps, so at a fixed step size they stall at a floor:
    # ask for a clear improvement (from about 0.9 to 0.1), not for eps = 1e-3.
    s = LinrepSettings(d=8, k=2, dy=3, n=32, kappa_x=1, iterations=120, eps=0.1)
    inst = make_instance(s, (0, 1))
    params = METHOD_MODELS[algorithm](lr=lr, options=options)
    method = build_method(algorithm, params, inst, [lr])
    trace = simulate(s, inst, method)
    _, censored = iterations_to_eps(trace, s.iterations)
    assert not trace.diverged.any()
    assert not censored.any(), trace.distance[-1]
