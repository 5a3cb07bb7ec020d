"""The deep linear student's gradients, exact Kronecker factors and kfac steps against brute
force (torch.func Jacobians, dense block Gauss–Newton solves, the library KFAC on the module)."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, jacrev

from layerwise.problems.deep_linrep.methods import (
    deep_linear_model,
    end_to_end,
    gradients,
    kfac_directions,
    kronecker_factors,
)
from layerwise.problems.deep_linrep.run import build_method
from layerwise.problems.deep_linrep.settings import (
    DeepKfacParams,
    DeepLibraryKfacParams,
    DeepLinrepSettings,
)
from layerwise.problems.linrep.data import Batch, BatchStream, make_instance

DT = torch.float64
#: Exact identities in float64 (the factors and steps are the same sums in another order).
EXACT = 1e-10


def _random_point(depth: int, d: int = 5, k: int = 2, dy: int = 3, n: int = 12, seed: int = 0):
    """Generic full-rank layers (not orthogonal) and a batch with anisotropic inputs."""
    gen = torch.Generator().manual_seed(seed)
    layers = [torch.randn(k, d, generator=gen, dtype=DT)]
    layers += [torch.randn(k, k, generator=gen, dtype=DT) + 2 * torch.eye(k, dtype=DT)]
    layers = layers[: 1 + (depth > 1)] + [
        torch.randn(k, k, generator=gen, dtype=DT) + 2 * torch.eye(k, dtype=DT)
        for _ in range(depth - 2)
    ]
    head = torch.randn(dy, k, generator=gen, dtype=DT)
    scales = torch.logspace(0, -1.5, d, dtype=DT)  # κ(Σ̂x) about 1000
    x = torch.randn(n, d, generator=gen, dtype=DT) * scales
    y = torch.randn(n, dy, generator=gen, dtype=DT)
    return layers, head, Batch(x, y)


def _jacobians(layers, head, batch):
    """Per-layer Jacobians (n·dy, size of the layer) of the stacked outputs, by jacrev."""
    model = deep_linear_model(layers, head)
    params = {name: p.detach() for name, p in model.named_parameters()}

    def outputs(p):
        return functional_call(model, p, (batch.x,)).reshape(-1)

    jac = jacrev(outputs)(params)
    return [jac[name].reshape(jac[name].shape[0], -1) for name in params]


@pytest.mark.parametrize("depth", [2, 3])
def test_kronecker_factors_are_the_exact_ggn_blocks(depth):
    layers, head, batch = _random_point(depth)
    jacobians = _jacobians(layers, head, batch)
    factors, head_input = kronecker_factors(layers, head, batch)
    dy = head.shape[0]
    expected = [torch.kron(c, a) for c, a in factors] + [
        torch.kron(torch.eye(dy, dtype=DT), head_input)
    ]
    for jac, block in zip(jacobians, expected, strict=True):
        brute = jac.T @ jac / batch.n  # GGN of ½ mean_i ‖f_i − y_i‖²: output Hessian I / n
        torch.testing.assert_close(block, brute, rtol=EXACT, atol=EXACT)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_gradients_match_autograd(depth):
    layers, head, batch = _random_point(depth)
    model = deep_linear_model(layers, head)
    loss = 0.5 * (model(batch.x) - batch.y).square().sum(-1).mean()
    loss.backward()
    grads, grad_head = gradients(layers, head, batch)
    for ours, module in zip([*grads, grad_head], model, strict=True):
        torch.testing.assert_close(ours, module.weight.grad, rtol=EXACT, atol=EXACT)


@pytest.mark.parametrize("depth", [2, 3])
def test_kfac_direction_is_the_dense_block_gauss_newton_solve(depth):
    layers, head, batch = _random_point(depth)
    jacobians = _jacobians(layers, head, batch)
    grads, grad_head = gradients(layers, head, batch)
    directions, head_direction, failed = kfac_directions(layers, head, batch)
    assert not failed.any()
    for jac, grad, ours in zip(
        jacobians, [*grads, grad_head], [*directions, head_direction], strict=True
    ):
        dense = torch.linalg.solve(jac.T @ jac / batch.n, grad.reshape(-1))  # row-major vec
        torch.testing.assert_close(ours.reshape(-1), dense, rtol=1e-9, atol=EXACT)


@pytest.mark.parametrize(("depth", "lr"), [(2, 1.0), (3, 0.5), (4, 0.3)])
def test_library_kfac_on_the_module_takes_our_kfac_step_on_every_layer(depth, lr):
    s = DeepLinrepSettings(d=8, k=3, dy=4, n=30, kappa_x=100, kappa_f=5, noise_std=0.1, depth=depth)
    instance = make_instance(s, (0, 1))
    ours = build_method("kfac", DeepKfacParams(lr=lr), instance, [lr], depth=depth)
    library = build_method(
        "library_kfac", DeepLibraryKfacParams(lr=lr), instance, [lr], depth=depth
    )
    stream = BatchStream(s, instance)
    # The first step is one identity; on the second, the first step's rounding (1e-16) is
    # amplified by the ill-conditioned factor solves (κ(Σx) = 100), hence a looser tolerance.
    for tolerance in (EXACT, 1e-8):
        batch = stream.next()
        ours.step(batch)
        library.step(batch)
        assert not ours.failed.any() and not library.failed.any()
        for name, value in ours.state.items():
            torch.testing.assert_close(library.state[name], value, rtol=tolerance, atol=tolerance)


def test_end_to_end_product_order():
    a, b, c = (torch.randn(3, 3, dtype=DT) for _ in range(3))
    torch.testing.assert_close(end_to_end([a, b, c]), c @ b @ a)
