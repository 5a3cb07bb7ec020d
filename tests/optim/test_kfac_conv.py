"""KFAC on ``nn.Conv2d`` (expand factorization), against explicit loops over positions."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import hessian, jacrev
from torch.nn import functional

from layerwise.optim import KFAC
from layerwise.optim import kronecker as kr

DTYPE = torch.float64
LOSSES = {"mse": functional.mse_loss, "cross_entropy": functional.cross_entropy}
STRIDE, PADDING, KERNEL = 2, 1, 3


def conv_net(seed: int, dtype=DTYPE, classes: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, KERNEL, stride=STRIDE, padding=PADDING, dtype=dtype),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, classes, dtype=dtype),
    )


def data(loss: str, n: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 5, 5, generator=g, dtype=DTYPE)
    if loss == "cross_entropy":
        return x, torch.randint(0, 3, (n,), generator=g)
    return x, torch.randn(n, 3, generator=g, dtype=DTYPE)


def loop_factors(model, x, y, loss, curvature):
    """(B, A) of the convolution by the definitions, one sample and one position at a time."""
    conv, head = model[0], model[1:]
    n = x.shape[0]
    padded = functional.pad(x, (PADDING,) * 4)
    out = conv(x).detach()
    positions = out.shape[-2:]
    width = 2 * KERNEL * KERNEL + 1
    a_sum = torch.zeros(width, width, dtype=DTYPE)
    b_sum = torch.zeros(3, 3, dtype=DTYPE)
    for i in range(n):
        s = out[i]
        target = y[i : i + 1]

        def output(s):
            return head(s[None])[0]

        def loss_at(f, target=target):
            return LOSSES[loss](f[None], target)

        jacobian = jacrev(output)(s)  # (classes, channels, H, W)
        f = output(s).detach()
        for p in range(positions[0]):
            for q in range(positions[1]):
                patch = padded[
                    i, :, p * STRIDE : p * STRIDE + KERNEL, q * STRIDE : q * STRIDE + KERNEL
                ]
                a_bar = torch.cat([patch.reshape(-1), torch.ones(1, dtype=DTYPE)])
                a_sum += torch.outer(a_bar, a_bar)
                j = jacobian[:, :, p, q]
                if curvature == "ggn":
                    b_sum += j.mT @ hessian(loss_at)(f) @ j
                else:
                    g = j.mT @ jacrev(loss_at)(f)
                    b_sum += torch.outer(g, g)
    rows = n * positions[0] * positions[1]
    return b_sum / n, a_sum / rows


@pytest.mark.parametrize(("curvature", "loss"), [("ggn", "cross_entropy"), ("empirical", "mse")])
def test_conv_factors_and_step_match_the_expand_definition(curvature, loss):
    model = conv_net(0)
    x, y = data(loss)
    b, a = loop_factors(copy.deepcopy(model), x, y, loss, curvature)
    damping, lr = 1e-2, 0.5
    conv = model[0]
    opt = KFAC(model, lr=lr, loss=loss, curvature=curvature, exact=True, damping=damping)
    weight, bias = conv.weight.detach().clone(), conv.bias.detach().clone()
    opt.zero_grad()
    LOSSES[loss](model(x), y).backward()
    gradient = torch.cat([conv.weight.grad.reshape(3, -1), conv.bias.grad[:, None]], dim=1)
    opt.step()
    state = opt.state[conv.weight]
    torch.testing.assert_close(state[kr.LEFT_STATISTIC], b, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(state[kr.RIGHT_STATISTIC], a, rtol=1e-10, atol=1e-14)
    expected = torch.linalg.solve(b + damping * torch.eye(3, dtype=DTYPE), gradient) @ (
        torch.linalg.inv(a + damping * torch.eye(len(a), dtype=DTYPE))
    )
    step = torch.cat(
        [(weight - conv.weight.detach()).reshape(3, -1), (bias - conv.bias)[:, None]], 1
    )
    torch.testing.assert_close(step, lr * expected, rtol=1e-9, atol=1e-14)


def test_grouped_convolution_takes_the_adam_path():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(36, 2))
    with pytest.warns(UserWarning, match="grouped convolution"):
        opt = KFAC(model, loss="mse")
    x = torch.randn(3, 2, 5, 5)
    opt.zero_grad()
    functional.mse_loss(model(x), torch.zeros(3, 2)).backward()
    opt.step()
    assert kr.LEFT_STATISTIC not in opt.state[model[0].weight]
    assert kr.LEFT_STATISTIC in opt.state[model[2].weight]


def test_trains_a_small_conv_classifier():
    model = conv_net(1, dtype=torch.float32)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(128, 2, 5, 5, generator=g)
    y = (x[:, 0, 1:4, 1:4].sum((1, 2)) > x[:, 1].mean((1, 2))).long() + (x[:, 0, 0, 0] > 1).long()
    opt = KFAC(model, loss="cross_entropy", curvature="mc_fisher")
    with torch.no_grad():
        start = functional.cross_entropy(model(x), y).item()
    for _ in range(60):
        index = torch.randint(0, 128, (32,), generator=g)
        opt.zero_grad()
        functional.cross_entropy(model(x[index]), y[index]).backward()
        opt.step()
    with torch.no_grad():
        end = functional.cross_entropy(model(x), y).item()
    assert end < 0.5 * start, (start, end)
