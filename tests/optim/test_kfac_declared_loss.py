"""KFAC checks the declared loss against the first backward pass of a ggn / mc_fisher capture:
the gradient of softmax cross-entropy sums to zero over the classes, and a mean-reduced one is
at most 2 in total size."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from layerwise.optim import KFAC

DTYPE = torch.float64


def train_once(loss_name: str, loss_fn, curvature: str = "ggn", warn: str | None = None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).to(DTYPE)
    optimizer = KFAC(model, loss=loss_name, curvature=curvature)
    x = torch.randn(16, 5, dtype=DTYPE)
    y = torch.randint(0, 3, (16,))
    optimizer.zero_grad()
    if warn is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loss_fn(model(x), y).backward()
    else:
        with pytest.warns(UserWarning, match=warn):
            loss_fn(model(x), y).backward()
    optimizer.step()


def mse_to_one_hot(f, y):
    return F.mse_loss(f, F.one_hot(y, 3).to(f.dtype))


@pytest.mark.parametrize("curvature", ["ggn", "mc_fisher"])
def test_a_declared_cross_entropy_used_with_another_loss_is_refused(curvature):
    with pytest.raises(ValueError, match="loss='cross_entropy' was declared"):
        train_once("cross_entropy", mse_to_one_hot, curvature)


def test_a_declared_mse_used_with_cross_entropy_or_a_summed_loss_warns():
    train_once("mse", F.cross_entropy, warn="loss='mse' was declared")
    summed = lambda f, y: F.cross_entropy(f, y, reduction="sum")  # noqa: E731
    train_once("cross_entropy", summed, warn="was the loss summed")
    # The right declarations, with weights and label smoothing, pass silently.
    weighted = lambda f, y: F.cross_entropy(  # noqa: E731
        f, y, weight=torch.tensor([1.0, 5.0, 0.2], dtype=DTYPE), label_smoothing=0.1
    )
    train_once("cross_entropy", weighted)
    train_once("mse", mse_to_one_hot)
    train_once("cross_entropy", mse_to_one_hot, curvature="empirical")  # the loss is not used
