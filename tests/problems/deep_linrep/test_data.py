"""Initial layers: linrep's (G_1, F), orthogonal middle layers paired by seed across depths."""

from __future__ import annotations

import pytest
import torch

from layerwise.problems.deep_linrep.data import initial_layers
from layerwise.problems.deep_linrep.settings import DeepLinrepSettings
from layerwise.problems.linrep.data import make_instance


def test_middle_layers_are_orthogonal_and_deeper_students_extend_shallower_ones():
    s = DeepLinrepSettings(d=6, k=3, dy=4, n=10)
    instance = make_instance(s, (0, 5))
    shallow, deep = initial_layers(instance, 2), initial_layers(instance, 4)
    assert torch.equal(shallow[0], instance.init_features)
    for a, b in zip(shallow, deep, strict=False):
        assert torch.equal(a, b)
    eye = torch.eye(3, dtype=torch.float64)
    for layer in deep[1:]:
        torch.testing.assert_close(layer @ layer.mT, eye.expand_as(layer), rtol=0, atol=1e-12)
    assert not torch.allclose(deep[1], deep[2])  # one stream per layer
    assert not torch.allclose(deep[1][0], deep[1][1])  # and per seed
    # A seed's draws do not depend on which seeds share the instance.
    alone = initial_layers(make_instance(s, (5,)), 4)
    assert torch.equal(alone[3][0], deep[3][1])


def test_depth_is_validated():
    with pytest.raises(ValueError, match="depth"):
        initial_layers(make_instance(DeepLinrepSettings(d=6, k=3, dy=4, n=10), (0,)), 0)
    with pytest.raises(ValueError, match="depth"):
        DeepLinrepSettings(depth=0)
