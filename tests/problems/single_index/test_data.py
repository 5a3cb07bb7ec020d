"""Data generation, paired seeds and settings validation."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from layerwise.experiments.registry import MethodSpec
from layerwise.problems.single_index.data import covariance_spectrum, make_instance, sample
from layerwise.problems.single_index.settings import (
    KfacParams,
    SgdParams,
    SingleIndexSettings,
    check_methods,
)

DTYPE = torch.float64


@pytest.mark.parametrize("family", ["log_spaced", "spiked", "power_law"])
def test_spectrum_has_the_requested_condition_number(family):
    spectrum = covariance_spectrum(family, 37, 50.0)
    assert spectrum.shape == (37,)
    assert (spectrum.max() / spectrum.min()).item() == pytest.approx(50.0, rel=1e-12)
    assert torch.all(spectrum[:-1] >= spectrum[1:])


@pytest.mark.parametrize("target", ["random", "aligned", "orthogonal"])
def test_target_normalization_and_direction(target):
    settings = SingleIndexSettings(d=20, kappa=10.0, target=target)
    instance = make_instance(settings, (0, 1))
    sigma = instance.covariance
    quadratic = torch.einsum("si,sij,sj->s", instance.beta, sigma, instance.beta)
    torch.testing.assert_close(quadratic, torch.ones(2, dtype=DTYPE))
    coordinates = (instance.eigenvectors.transpose(-1, -2) @ instance.beta.unsqueeze(-1)).squeeze(
        -1
    )
    if target == "aligned":
        # Only the top eigen-coordinate is non-zero.
        assert torch.all(coordinates[:, 1:].abs() < 1e-12)
    if target == "orthogonal":
        assert torch.all(coordinates[:, :2].abs() < 1e-12)  # ⌈20/10⌉ = 2 top directions
        assert torch.all(coordinates[:, 2:].abs().sum(-1) > 0.1)


def test_instances_are_paired_and_do_not_touch_the_global_rng():
    settings = SingleIndexSettings(d=16, kappa=10.0)
    state = torch.random.get_rng_state()
    first = make_instance(settings, (3, 4))
    again = make_instance(settings.model_copy(update={"n_over_d": 4.0}), (4,))
    assert torch.equal(torch.random.get_rng_state(), state)
    # The instance of seed 4 does not depend on the batch size or on the other seeds.
    assert torch.equal(first.beta[1], again.beta[0])
    assert torch.equal(first.w0[1], again.w0[0])
    assert not torch.equal(first.beta[0], first.beta[1])
    x1, y1, _ = sample(first, "step", 8)
    x2, y2, _ = sample(first, "step", 8)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, sample(first, "readout", 8)[0])


def test_samples_have_the_instance_covariance_and_link():
    settings = SingleIndexSettings(d=6, kappa=20.0, link="relu", noise_std=0.0)
    instance = make_instance(settings, (0,))
    x, y, clean = sample(instance, "test", 100_000)
    empirical = x[0].T @ x[0] / x.shape[1]
    # Entry-wise standard error of a second moment is at most √2·λmax/√n ≈ 0.0045.
    torch.testing.assert_close(empirical, instance.covariance[0], rtol=0, atol=0.02)
    torch.testing.assert_close(y, torch.relu(x @ instance.beta[0]).reshape(1, -1))
    torch.testing.assert_close(y, clean)


def test_label_noise_has_the_requested_variance():
    settings = SingleIndexSettings(d=4, noise_std=0.5)
    instance = make_instance(settings, (0,))
    _, y, clean = sample(instance, "test", 50_000)
    assert (y - clean).var().item() == pytest.approx(0.25, rel=0.05)


def test_second_layer_scales():
    gaussian = make_instance(SingleIndexSettings(d=400), (0,))
    assert (gaussian.a**2).sum().item() == pytest.approx(1.0, rel=0.2)
    signs = make_instance(SingleIndexSettings(d=10, second_layer="sign"), (0,))
    torch.testing.assert_close(signs.a.abs(), torch.full((1, 10), 1 / math.sqrt(10), dtype=DTYPE))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("d", 0),
        ("n_over_d", 0.0),
        ("n_over_d", -1.0),
        ("kappa", 0.5),
        ("link", "sine"),
        ("noise_std", -0.1),
        ("width_over_d", 0.0),
        ("ridge_grid", []),
    ],
)
def test_settings_refuse_impossible_values_naming_the_field(field, value):
    with pytest.raises(ValidationError, match=field):
        SingleIndexSettings(**{field: value})


def test_settings_refuse_unknown_fields():
    with pytest.raises(ValidationError, match="kapa"):
        SingleIndexSettings(kapa=3.0)


def test_undamped_kfac_is_refused_when_n_le_d():
    settings = SingleIndexSettings(d=20, n_over_d=1.0)
    methods = {"kfac_plain": MethodSpec(name="kfac", params=KfacParams())}
    with pytest.raises(ValueError, match=r"kfac_plain.*damping"):
        check_methods(settings, methods)
    check_methods(settings, {"kfac": MethodSpec(name="kfac", params=KfacParams(damping=0.1))})
    check_methods(settings.model_copy(update={"n_over_d": 2.0}), methods)
    with pytest.raises(ValidationError, match="lr"):
        SgdParams(lr=0.0)
    with pytest.raises(ValidationError, match="damping"):
        KfacParams(damping=-1.0)
