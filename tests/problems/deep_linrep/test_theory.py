"""The theory of layer-wise Gauss–Newton on deep linear nets against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layerwise.problems.deep_linrep import theory
from layerwise.problems.deep_linrep.methods import (
    deep_linear_model,
    gradients,
    kronecker_factors,
)
from layerwise.problems.deep_linrep.run import build_method
from layerwise.problems.deep_linrep.settings import DeepKfacParams, DeepLinrepSettings
from layerwise.problems.linrep.data import Batch, BatchStream, make_instance

from .test_methods import _jacobians, _random_point

DT = torch.float64


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_residual_map_spectrum_is_one_and_depth_plus_one(depth):
    # K = Σ_ℓ J_ℓ (J_ℓᵀJ_ℓ)⁻¹ J_ℓᵀ from jacrev Jacobians at a generic point with κ(Σ̂x) ≈ 1000.
    d, k, dy = 5, 2, 3
    layers, head, batch = _random_point(depth, d=d, k=k, dy=dy, n=12)
    jacobians = _jacobians(layers, head, batch)
    operator = sum(j @ torch.linalg.solve(j.T @ j, j.T) for j in jacobians)
    eigenvalues = torch.linalg.eigvalsh((operator + operator.T) / 2)
    expected = theory.residual_map_spectrum(depth, d, k, dy)
    for value, multiplicity in expected.items():
        assert int((eigenvalues - value).abs().lt(1e-8).sum()) == multiplicity, eigenvalues
    zeros = eigenvalues.numel() - sum(expected.values())
    assert int(eigenvalues.abs().lt(1e-8).sum()) == zeros, eigenvalues


def _noiseless(depth: int, **changes) -> tuple[DeepLinrepSettings, object]:
    s = DeepLinrepSettings(d=10, k=3, dy=4, n=24, kappa_x=1000, kappa_f=10, depth=depth, **changes)
    return s, make_instance(s, (0, 1, 2))


@pytest.mark.parametrize(("depth", "lr"), [(2, 0.3), (3, 0.125), (4, 0.25)])
def test_first_layer_off_target_part_contracts_by_one_minus_lr_exactly(depth, lr):
    s, instance = _noiseless(depth)
    method = build_method("kfac", DeepKfacParams(lr=lr), instance, [lr], depth=depth)
    stream = BatchStream(s, instance)
    complement = torch.eye(s.d, dtype=DT) - instance.features.mT @ instance.features
    for _ in range(4):  # from the start and from later (non-optimal) points alike
        layer = method.layers[0]
        batch = stream.next()
        (output_factor, input_factor), *_ = kronecker_factors(method.layers, method.head, batch)[0]
        method.step(batch)
        # Relative to the size of the step: a wrong step is off by O(step), rounding by about
        # the unit roundoff times the condition numbers of the two factors solved with.
        error = method.layers[0] @ complement - (1 - lr) * layer @ complement
        step = method.layers[0] - layer
        ratio = torch.linalg.matrix_norm(error) / torch.linalg.matrix_norm(step)
        conditioning = torch.linalg.cond(output_factor) * torch.linalg.cond(input_factor)
        assert (ratio < 1e-14 * conditioning).all(), (ratio, conditioning)
        assert float(ratio.min()) < 1e-9, ratio


def _residual_norm(method, batch: Batch) -> np.ndarray:
    residual = batch.x @ (method.head @ method.features).mT - batch.y
    return residual.square().sum((-1, -2)).sqrt()[0].numpy()


@pytest.mark.parametrize(("depth", "lr"), [(2, 0.3), (2, 0.6), (3, 0.45), (4, 0.1)])
def test_local_residual_contraction_is_the_predicted_rate(depth, lr):
    # Start next to an exact optimum (G_1 = G⋆, middle layers I, F = F⋆), one fixed noiseless
    # batch: the residual ratio per step tends to max(|1 − η|, |1 − (L + 1)η|).
    s, instance = _noiseless(depth, data="fixed")
    gen = torch.Generator().manual_seed(7)
    method = build_method("kfac", DeepKfacParams(lr=lr), instance, [lr], depth=depth)
    targets = [instance.features] + [torch.eye(s.k, dtype=DT).expand(3, s.k, s.k)] * (depth - 1)
    for i, target in enumerate([*targets, instance.train.head]):
        name = f"G{i + 1}" if i < depth else "F"
        noise = 1e-6 * torch.randn(target.shape, generator=gen, dtype=DT)
        method.state[name] = (target + noise).unsqueeze(0).clone()
    batch = BatchStream(s, instance).next()
    norms = [_residual_norm(method, batch)]
    for _ in range(40):
        method.step(batch)
        norms.append(_residual_norm(method, batch))
    measured = norms[-1] / norms[-2]
    np.testing.assert_allclose(measured, theory.local_rate(lr, depth), rtol=2e-3)


def test_best_step_minimizes_the_local_rate_over_a_fine_grid():
    grid = np.linspace(1e-3, 1.5, 30001)
    for depth in (1, 2, 3, 4):
        rates = [theory.local_rate(float(lr), depth) for lr in grid]
        assert grid[int(np.argmin(rates))] == pytest.approx(theory.best_step(depth), abs=1e-4)
        assert min(rates) == pytest.approx(depth / (depth + 2), abs=1e-4)
        stable = grid[np.array(rates) < 1]
        assert stable.max() == pytest.approx(theory.largest_stable_step(depth), abs=1e-4)


def test_theory_refuses_bad_input():
    with pytest.raises(ValueError, match="depth"):
        theory.largest_stable_step(0)
    with pytest.raises(ValueError, match="lr"):
        theory.local_rate(0.0, 2)
    with pytest.raises(ValueError, match="k <= d"):
        theory.residual_map_spectrum(2, d=2, k=3, dy=4)


def test_gradient_of_the_module_loss_scaling():
    # The library minimizes mse_loss (mean over n·dy entries): its gradient is 2/dy times ours,
    # the factor that cancels in the Gauss–Newton step.
    layers, head, batch = _random_point(2)
    model = deep_linear_model(layers, head)
    torch.nn.functional.mse_loss(model(batch.x), batch.y).backward()
    grads, _ = gradients(layers, head, batch)
    dy = head.shape[0]
    torch.testing.assert_close(model[0].weight.grad, 2 / dy * grads[0], rtol=1e-12, atol=1e-14)
