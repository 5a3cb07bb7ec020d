"""Gradients, Gauss–Newton matrix and Hessian against finite differences and autograd."""

from __future__ import annotations

import torch

from layerwise.problems.linrep.algorithms import gradients
from layerwise.problems.linrep.data import Batch
from layerwise.problems.linrep.second_order import curvature

DT = torch.float64


def _problem(gen, d=5, k=2, dy=3, n=17):
    x = torch.randn(n, d, generator=gen, dtype=DT)
    y = torch.randn(n, dy, generator=gen, dtype=DT)
    g = torch.randn(k, d, generator=gen, dtype=DT)
    f = torch.randn(dy, k, generator=gen, dtype=DT)
    return Batch(x, y), g, f


def _loss(f, g, batch):
    return 0.5 * (batch.x @ g.T @ f.T - batch.y).square().sum(-1).mean()


def test_gradients_match_central_differences(gen):
    batch, g, f = _problem(gen)
    grad_g, grad_f = gradients(g, f, batch)
    h = 1e-6
    for param, grad, which in ((g, grad_g, "g"), (f, grad_f, "f")):
        numeric = torch.zeros_like(param)
        for index in range(param.numel()):
            step = torch.zeros(param.numel(), dtype=DT)
            step[index] = h
            step = step.reshape(param.shape)
            if which == "g":
                plus, minus = _loss(f, g + step, batch), _loss(f, g - step, batch)
            else:
                plus, minus = _loss(f + step, g, batch), _loss(f - step, g, batch)
            numeric.view(-1)[index] = (plus - minus) / (2 * h)
        torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-8)


def test_gradients_equal_the_moment_formulas(gen):
    batch, g, f = _problem(gen)
    grad_g, grad_f = gradients(g, f, batch)
    residual = f @ g @ batch.input_cov - batch.cross_cov
    torch.testing.assert_close(grad_g, f.T @ residual)
    torch.testing.assert_close(grad_f, residual @ g.T)


def _theta_loss(batch, dy, k):
    def loss(theta):
        f = theta[: dy * k].reshape(dy, k)
        g = theta[dy * k :].reshape(k, -1)
        return _loss(f, g, batch)

    return loss


def test_hessian_matches_autograd(gen):
    batch, g, f = _problem(gen)
    dy, k = f.shape
    theta = torch.cat([f.flatten(), g.flatten()])
    expected = torch.autograd.functional.hessian(_theta_loss(batch, dy, k), theta)
    torch.testing.assert_close(curvature(g, f, batch, exact_hessian=True), expected)


def test_gauss_newton_matches_jacobian_product(gen):
    batch, g, f = _problem(gen)
    dy, k = f.shape
    theta = torch.cat([f.flatten(), g.flatten()])

    def outputs(theta):
        f_ = theta[: dy * k].reshape(dy, k)
        g_ = theta[dy * k :].reshape(k, -1)
        return (batch.x @ g_.T @ f_.T).flatten()

    jac = torch.autograd.functional.jacobian(outputs, theta)
    expected = jac.T @ jac / batch.n
    got = curvature(g, f, batch, exact_hessian=False)
    torch.testing.assert_close(got, expected)
    # The gauge (F A⁻¹, A G) leaves the outputs unchanged: k² null directions of the GGN.
    eigenvalues = torch.linalg.eigvalsh(got)
    assert (eigenvalues[: k * k].abs() < 1e-10).all()
    assert eigenvalues[k * k] > 1e-6


def test_curvature_broadcasts_over_replicas_and_seeds(gen):
    batch, g, f = _problem(gen)
    stacked = Batch(batch.x.expand(2, *batch.x.shape), batch.y.expand(2, *batch.y.shape))
    gs = torch.stack([g, 2 * g]).expand(3, 2, *g.shape)
    fs = torch.stack([f, -f]).expand(3, 2, *f.shape)
    many = curvature(gs, fs, stacked, exact_hessian=True)
    torch.testing.assert_close(many[1, 1], curvature(2 * g, -f, batch, exact_hessian=True))


def test_batchnorm_gradients_match_autograd(gen):
    from layerwise.problems.linrep.algorithms import Batchnorm
    from layerwise.problems.linrep.settings import BatchnormParams

    batch, g, f = _problem(gen, n=23)
    lr = torch.ones(1, 1, 1, 1, dtype=DT)
    method = Batchnorm(g.unsqueeze(0), f.unsqueeze(0), lr, BatchnormParams(lr=1.0))
    grad_g, grad_f, _, _ = method.gradients(Batch(batch.x.unsqueeze(0), batch.y.unsqueeze(0)))
    g_ = g.clone().requires_grad_(True)
    f_ = f.clone().requires_grad_(True)
    z = batch.x @ g_.T
    normalized = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)
    loss = 0.5 * (normalized @ f_.T - batch.y).square().sum(-1).mean()
    expected_g, expected_f = torch.autograd.grad(loss, (g_, f_))
    torch.testing.assert_close(grad_g[0, 0], expected_g)
    torch.testing.assert_close(grad_f[0, 0], expected_f)
