"""Instances and data streams: ground-truth structure, covariances, seed pairing."""

from __future__ import annotations

import math

import pytest
import torch

from layerwise.problems.linrep.data import (
    BatchStream,
    draw_samples,
    make_instance,
    seeded_generator,
)
from layerwise.problems.linrep.settings import LinrepSettings

DT = torch.float64


@pytest.mark.parametrize("basis", ["rotated", "axis_aligned"])
def test_instance_structure(basis):
    s = LinrepSettings(d=12, k=3, dy=5, kappa_x=50, kappa_f=4, basis=basis)
    inst = make_instance(s, (0, 1))
    eye_k = torch.eye(3, dtype=DT)
    torch.testing.assert_close(inst.features @ inst.features.mT, eye_k.expand(2, 3, 3))
    torch.testing.assert_close(inst.init_features @ inst.init_features.mT, eye_k.expand(2, 3, 3))
    singular = torch.linalg.svdvals(inst.train.head)
    torch.testing.assert_close(singular[:, 0], torch.ones(2, dtype=DT))
    torch.testing.assert_close(singular[:, -1], torch.full((2,), 0.25, dtype=DT))
    eigen = torch.linalg.eigvalsh(inst.train.input_cov)
    torch.testing.assert_close(eigen[:, 0], torch.full((2,), 1 / 50, dtype=DT))
    torch.testing.assert_close(eigen[:, -1], torch.ones(2, dtype=DT))
    torch.testing.assert_close(
        inst.train.input_cov_sqrt @ inst.train.input_cov_sqrt, inst.train.input_cov
    )
    diagonal = torch.diag_embed(torch.diagonal(inst.train.input_cov, dim1=-2, dim2=-1))
    assert torch.allclose(inst.train.input_cov, diagonal) == (basis == "axis_aligned")
    # The transfer task has its own head (and its own rotation when rotated).
    assert not torch.allclose(inst.transfer.head, inst.train.head)


@pytest.mark.parametrize("inputs", ["rademacher", "gaussian"])
def test_empirical_covariance_approaches_sigma(inputs):
    s = LinrepSettings(d=6, k=2, dy=2, kappa_x=10, inputs=inputs)
    inst = make_instance(s, (3,))
    n = 200_000
    batch = draw_samples(s, inst, inst.train, n, [seeded_generator(3, "test")])
    error = torch.linalg.matrix_norm(batch.input_cov - inst.train.input_cov, ord=2).item()
    # Entry-wise standard errors are ≤ √(2/n) λmax; the spectral error concentrates at a few d/√n.
    assert error < 6 * math.sqrt(s.d / n)
    if inputs == "rademacher":
        u = batch.x @ torch.linalg.inv(inst.train.input_cov_sqrt)
        torch.testing.assert_close(u.abs(), torch.ones_like(u))


def test_labels_follow_the_model_without_noise():
    s = LinrepSettings(d=8, k=2, dy=3, n=20)
    inst = make_instance(s, (0,))
    batch = BatchStream(s, inst).next()
    torch.testing.assert_close(batch.y, batch.x @ (inst.train.head @ inst.features).mT)


def test_noise_level():
    s = LinrepSettings(d=4, k=2, dy=3, noise_std=0.3)
    inst = make_instance(s, (0,))
    batch = draw_samples(s, inst, inst.train, 50_000, [seeded_generator(0, "x")])
    residual = batch.y - batch.x @ (inst.train.head @ inst.features).mT
    assert residual.std().item() == pytest.approx(0.3, rel=0.02)


def test_seeds_are_paired_whatever_the_group():
    s = LinrepSettings(d=8, k=2, dy=3, n=10)
    alone = make_instance(s, (5,))
    grouped = make_instance(s, (2, 5, 7))
    torch.testing.assert_close(alone.features[0], grouped.features[1], rtol=0, atol=0)
    torch.testing.assert_close(alone.init_head[0], grouped.init_head[1], rtol=0, atol=0)
    a, b = BatchStream(s, alone), BatchStream(s, grouped)
    for _ in range(3):
        torch.testing.assert_close(a.next().x[0], b.next().x[1], rtol=0, atol=0)
    assert not torch.allclose(grouped.features[0], grouped.features[1])


def test_fixed_data_repeats_the_batch():
    s = LinrepSettings(d=8, k=2, dy=3, n=10, data="fixed")
    stream = BatchStream(s, make_instance(s, (0,)))
    assert stream.next() is stream.next()


def test_global_rng_is_untouched():
    state = torch.random.get_rng_state()
    s = LinrepSettings(d=8, k=2, dy=3, n=10)
    BatchStream(s, make_instance(s, (0, 1))).next()
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"k": 9, "d": 8}, "k"),
        ({"dy": 1, "k": 2}, "dy"),
        ({"kappa_x": 0.5}, "kappa_x"),
        ({"kappa_f": 0.0}, "kappa_f"),
        ({"eps": 1.5}, "eps"),
        ({"n_transfer": [1], "k": 2}, "n_transfer"),
        ({"lr_grid": [2, 1]}, "lr_grid"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_settings_refuse_impossible_values(fields, name):
    with pytest.raises(ValueError, match=name):
        LinrepSettings(**fields)
