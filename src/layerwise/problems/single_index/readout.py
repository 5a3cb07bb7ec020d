r"""Ridge readout on the learned features and its test error (SPEC.md §3).

Features ``Φ = σ(X W1ᵀ)/√N`` (n × N). For each penalty λ of a small grid

    â(λ) = argmin (1/n)‖y2 − Φ a‖² + λ‖a‖² = (ΦᵀΦ/n + λ I)⁻¹ Φᵀy2/n,

computed for the whole grid from one eigendecomposition of ΦᵀΦ/n. The penalty is chosen per
seed by the mean squared error on a fresh validation batch; the test batch then gives

    test MSE     = mean (y − Φ â)²            (noisy labels)
    excess risk  = mean (σ⋆(⟨β⋆, x⟩) − Φ â)²  (noiseless target; the Bayes risk is σε²).

For batch-normalized networks the features are σ(BN(X W1ᵀ))/√N with the normalization
statistics of the readout batch, used unchanged on validation and test data (as running
statistics would be).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .onestep import BATCHNORM_EPS, activation_function
from .settings import Activation


@dataclass(frozen=True)
class ReadoutResult:
    """Per-seed results, each of shape (S,)."""

    penalty: Tensor
    validation_mse: Tensor
    test_mse: Tensor
    excess_risk: Tensor


def feature_map(
    w1: Tensor, activation: Activation | str, *, batchnorm_on: Tensor | None = None
) -> Callable[[Tensor], Tensor]:
    """x (S, n, d) -> Φ (S, n, N). With ``batchnorm_on`` (S, m, d) the pre-activations are
    normalized by that batch's per-neuron mean and standard deviation."""
    width = w1.shape[-2]
    mean = std = None
    if batchnorm_on is not None:
        pre = batchnorm_on @ w1.transpose(-1, -2)
        mean = pre.mean(dim=-2, keepdim=True)
        std = (pre.var(dim=-2, unbiased=False, keepdim=True) + BATCHNORM_EPS).sqrt()

    def features(x: Tensor) -> Tensor:
        pre = x @ w1.transpose(-1, -2)
        if mean is not None:
            pre = (pre - mean) / std
        return activation_function(activation, pre) / math.sqrt(width)

    return features


def ridge_path(features: Tensor, y: Tensor, penalties: Sequence[float]) -> Tensor:
    """Ridge solutions â(λ) for every λ, shape (L, S, N)."""
    n = features.shape[-2]
    gram = features.transpose(-1, -2) @ features / n
    evals, evecs = torch.linalg.eigh(gram)
    rhs = (evecs.transpose(-1, -2) @ (features.transpose(-1, -2) @ y.unsqueeze(-1))).squeeze(-1)
    rhs = rhs / n
    lam = torch.tensor(penalties, dtype=features.dtype, device=features.device)
    coords = rhs.unsqueeze(0) / (evals.unsqueeze(0) + lam[:, None, None])  # (L, S, N)
    return torch.einsum("sij,lsj->lsi", evecs, coords)


def ridge_readout(
    features: Callable[[Tensor], Tensor],
    train: tuple[Tensor, Tensor],
    validation: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor, Tensor],
    penalties: Sequence[float],
) -> ReadoutResult:
    """Fit the readout on ``train = (x, y)``, choose λ on ``validation = (x, y)``, evaluate on
    ``test = (x, y, clean)``."""
    heads = ridge_path(features(train[0]), train[1], penalties)  # (L, S, N)
    val_pred = torch.einsum("snj,lsj->lsn", features(validation[0]), heads)
    val_mse = ((val_pred - validation[1].unsqueeze(0)) ** 2).mean(dim=-1)  # (L, S)
    best = val_mse.argmin(dim=0)  # (S,)
    seeds = torch.arange(best.shape[0], device=best.device)
    head = heads[best, seeds]  # (S, N)
    test_pred = (features(test[0]) @ head.unsqueeze(-1)).squeeze(-1)
    lam = torch.tensor(penalties, dtype=head.dtype, device=head.device)
    return ReadoutResult(
        penalty=lam[best],
        validation_mse=val_mse[best, seeds],
        test_mse=((test_pred - test[1]) ** 2).mean(dim=-1),
        excess_risk=((test_pred - test[2]) ** 2).mean(dim=-1),
    )
