"""The single-index method registry: every algorithm's first layer is W0 plus its
:mod:`onestep` update with the config's hyperparameters, and unknown names are refused."""

from __future__ import annotations

import pytest
import torch

from layerwise.problems.single_index import methods, onestep
from layerwise.problems.single_index.data import make_instance, sample
from layerwise.problems.single_index.settings import KfacParams, ShampooParams, SingleIndexSettings

SETTINGS = SingleIndexSettings(d=12, n_over_d=3.0, width_over_d=0.5, kappa=10.0, readout=False)


@pytest.fixture(scope="module")
def batch():
    instance = make_instance(SETTINGS, (0, 1))
    x1, y1, _ = sample(instance, "step", SETTINGS.n)
    return instance, x1, y1


def test_hyperparameters_reach_the_update(batch):
    instance, x1, y1 = batch
    w0, a, activation = instance.w0, instance.a, SETTINGS.activation
    cases = {
        "kfac": (KfacParams(lr=0.7, damping=0.3), dict(lr=0.7, damping=0.3), onestep.kfac_step),
        "shampoo": (
            ShampooParams(lr=0.4, damping=1e-3),
            dict(lr=0.4, damping=1e-3),
            onestep.shampoo_step,
        ),
    }
    for algorithm, (params, keywords, update) in cases.items():
        expected = w0 + update(w0, a, x1, y1, activation=activation, **keywords)
        got = methods.first_layer(algorithm, instance, x1, y1, params)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    other = methods.first_layer("kfac", instance, x1, y1, KfacParams(lr=0.7, damping=3.0))
    assert not torch.allclose(
        other, methods.first_layer("kfac", instance, x1, y1, cases["kfac"][0])
    )


def test_random_features_keep_w0_and_the_oracle_points_along_beta(batch):
    instance, x1, y1 = batch
    kept = methods.first_layer("rf", instance, x1, y1, methods.METHOD_MODELS["rf"]())
    assert torch.equal(kept, instance.w0) and kept is not instance.w0
    oracle = methods.first_layer("oracle", instance, x1, y1, methods.METHOD_MODELS["oracle"]())
    cosine = torch.nn.functional.cosine_similarity(oracle, instance.beta.unsqueeze(1), dim=-1)
    torch.testing.assert_close(cosine.abs(), torch.ones_like(cosine))


def test_unknown_method_is_refused_by_name(batch):
    instance, x1, y1 = batch
    with pytest.raises(ValueError, match=r"'lbfgs'.*known"):
        methods.first_layer("lbfgs", instance, x1, y1, KfacParams())
