"""Shared cases for the optimizer tests: small models and data from explicit generators."""

from __future__ import annotations

import itertools

import torch
from torch import nn


def make_mlp(seed: int = 0, dtype=torch.float64, widths=(6, 8, 5, 2), bias: bool = True):
    generator = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        layer = nn.Linear(fan_in, fan_out, bias=bias).to(dtype)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(fan_out, fan_in, generator=generator) / fan_in**0.5)
            if bias:
                layer.bias.copy_(0.1 * torch.randn(fan_out, generator=generator))
        layers.append(layer)
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def regression_batches(steps: int, seed: int = 0, dtype=torch.float64, dims=(6, 2), n: int = 32):
    generator = torch.Generator().manual_seed(seed + 1000)
    teacher = torch.randn(dims[1], dims[0], generator=generator, dtype=dtype)
    batches = []
    for _ in range(steps):
        x = torch.randn(n, dims[0], generator=generator, dtype=dtype)
        batches.append((x, torch.sin(x @ teacher.T)))
    return batches


def train(model: nn.Module, optimizer: torch.optim.Optimizer, batches) -> list[float]:
    losses = []
    for x, y in batches:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def assert_same_parameters(a: nn.Module, b: nn.Module, *, exact: bool = False, **tolerances):
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        if exact:
            assert torch.equal(p, q), f"{name} differs: max |Δ| = {(p - q).abs().max():.3g}"
        else:
            torch.testing.assert_close(p, q, msg=lambda m, name=name: f"{name}: {m}", **tolerances)
