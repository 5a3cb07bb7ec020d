"""The one-step updates against independent computations (finite differences, explicit solves)."""

from __future__ import annotations

import math

import pytest
import torch

from layerwise.problems.single_index import onestep

DTYPE = torch.float64
SEEDS, WIDTH, D, N = 2, 5, 4, 9


def _problem(activation: str = "tanh", seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(SEEDS, WIDTH, D, generator=gen, dtype=DTYPE) / math.sqrt(D)
    a = torch.randn(SEEDS, WIDTH, generator=gen, dtype=DTYPE)
    x = torch.randn(SEEDS, N, D, generator=gen, dtype=DTYPE)
    y = torch.tanh(x[..., 0]) + 0.1 * torch.randn(SEEDS, N, generator=gen, dtype=DTYPE)
    return w, a, x, y


def _finite_difference(loss, w, step=1e-6):
    """Central differences of a per-seed loss (S,) with respect to every entry of w."""
    grad = torch.zeros_like(w)
    for index in range(w[0].numel()):
        i, j = divmod(index, w.shape[-1])
        shift = torch.zeros_like(w)
        shift[:, i, j] = step
        grad[:, i, j] = (loss(w + shift) - loss(w - shift)) / (2 * step)
    return grad


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_loss_gradient_matches_finite_differences(activation):
    w, a, x, y = _problem(activation)
    expected = _finite_difference(lambda v: onestep.one_step_loss(v, a, x, y, activation), w)
    got = onestep.loss_gradient(w, a, x, y, activation)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)


def test_sgd_step_is_minus_lr_times_width_times_gradient():
    w, a, x, y = _problem()
    step = onestep.sgd_step(w, a, x, y, lr=0.7, activation="tanh")
    # η = lr·√N and the update is −η√N∇: −0.7·N·∇.
    torch.testing.assert_close(step, -0.7 * WIDTH * onestep.loss_gradient(w, a, x, y, "tanh"))


def test_kfac_step_with_identity_factor_is_the_sgd_step():
    w, a, x, y = _problem()
    identity = torch.eye(D, dtype=DTYPE).expand(SEEDS, D, D)
    kfac = onestep.kfac_step(
        w, a, x, y, lr=0.3, damping=0.0, activation="tanh", right_factor=identity
    )
    torch.testing.assert_close(
        kfac, onestep.sgd_step(w, a, x, y, lr=0.3, activation="tanh"), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_kfac_step_preconditions_on_the_right_with_damped_covariance(damping):
    w, a, x, y = _problem()
    kfac = onestep.kfac_step(w, a, x, y, lr=0.3, damping=damping, activation="tanh")
    sgd = onestep.sgd_step(w, a, x, y, lr=0.3, activation="tanh")
    covariance = torch.einsum("sni,snj->sij", x, x) / N + damping * torch.eye(D, dtype=DTYPE)
    # ΔW_kfac (Σ̂x + λI) must give back the sgd step.
    torch.testing.assert_close(kfac @ covariance, sgd, rtol=1e-10, atol=1e-12)


def test_kfac_step_refuses_a_singular_factor_without_damping():
    w, a, x, y = _problem()
    with pytest.raises(torch.linalg.LinAlgError):
        onestep.kfac_step(w, a, x[:, :2], y[:, :2], lr=1.0, damping=0.0, activation="tanh")


def test_adam_step_is_the_sign_scaled_to_the_sgd_norm():
    w, a, x, y = _problem()
    sgd = onestep.sgd_step(w, a, x, y, lr=1.3, activation="tanh")
    adam = onestep.adam_step(w, a, x, y, lr=1.3, activation="tanh")
    assert torch.equal(torch.sign(adam), torch.sign(sgd))
    # All entries of one seed share one magnitude.
    magnitudes = adam.abs().flatten(1)
    torch.testing.assert_close(magnitudes.max(1).values, magnitudes.min(1).values)
    torch.testing.assert_close(torch.linalg.matrix_norm(adam), torch.linalg.matrix_norm(sgd))


def _batchnorm_loss(w, a, x, y):
    """The BN network's loss written out independently: per-neuron z-scores over the batch."""
    pre = x @ w.transpose(-1, -2)
    centred = pre - pre.mean(dim=1, keepdim=True)
    scaled = centred / torch.sqrt((centred**2).mean(dim=1, keepdim=True) + onestep.BATCHNORM_EPS)
    output = torch.tanh(scaled) @ a.unsqueeze(-1) / math.sqrt(w.shape[-2])
    return 0.5 * ((y - output.squeeze(-1)) ** 2).mean(-1)


def test_batchnorm_step_matches_finite_differences():
    w, a, x, y = _problem()
    expected = -0.5 * WIDTH * _finite_difference(lambda v: _batchnorm_loss(v, a, x, y), w)
    got = onestep.batchnorm_step(w, a, x, y, lr=0.5, activation="tanh")
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)


def test_oracle_rows_are_multiples_of_beta():
    beta = torch.tensor([[1.0, 2.0, 0.0, -1.0]], dtype=DTYPE)
    scales = torch.tensor([[0.5, -2.0, 3.0]], dtype=DTYPE)
    w1 = onestep.oracle_weights(beta, scales)
    torch.testing.assert_close(w1[0], torch.outer(scales[0], beta[0]))


def test_module_form_matches_the_closed_form_network_and_gradient():
    w, a, x, y = _problem()
    net = onestep.TwoLayerNetwork(w[0], a[0], "tanh")
    output = net(x[0])
    assert output.shape == (N, 1)
    torch.testing.assert_close(output[:, 0], onestep.network_output(w, a, x, "tanh")[0])
    loss = 0.5 * ((y[0] - output[:, 0]) ** 2).mean()
    loss.backward()
    torch.testing.assert_close(net.first.weight.grad, onestep.loss_gradient(w, a, x, y, "tanh")[0])


@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_library_kfac_one_step_agrees_with_the_kfac_step(damping):
    """One step of the project's KFAC (input factor only, exact per-batch factors) on the
    nn.Module form equals the single-index kfac step ΔW = −lr·N·∇L̂ (Σ̂x + λG I)⁻¹.

    The library's loss is torch's mean MSE, L = (1/n)Σ(f − y)² = 2 L̂, and its step is
    −η ∇L (A + λI)⁻¹ with A = Σ̂x (the input second moment of the bias-free first layer), so
    η = lr·N/2 gives the same update."""
    kfac_module = pytest.importorskip("layerwise.optim.kfac")
    w, a, x, y = _problem()
    lr = 0.8
    expected = onestep.kfac_step(w, a, x, y, lr=lr, damping=damping, activation="tanh")
    for seed in range(SEEDS):
        net = onestep.TwoLayerNetwork(w[seed], a[seed], "tanh")
        optimizer = kfac_module.KFAC(
            net,
            lr=lr * WIDTH / 2,
            loss="mse",
            curvature="ggn",
            exact=True,
            damping=damping,
            sides="input",
        )
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(net(x[seed]), y[seed].unsqueeze(-1)).backward()
        optimizer.step()
        torch.testing.assert_close(
            net.first.weight.detach() - w[seed], expected[seed], rtol=1e-9, atol=1e-12
        )
