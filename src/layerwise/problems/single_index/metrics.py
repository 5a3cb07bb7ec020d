r"""Metrics of the first-layer update ΔW = W1 − W0 (SPEC.md §3).

- spike direction u: the top right singular vector of ΔW (unit, sign free);
- Euclidean alignment with β⋆: |⟨u, β⋆⟩| / ‖β⋆‖;
- alignment with Σβ⋆: |⟨u, Σβ⋆⟩| / ‖Σβ⋆‖;
- Σ-weighted alignment: |⟨u, Σβ⋆⟩| / (‖Σ^{1/2}u‖ · ‖Σ^{1/2}β⋆‖)
  (the correlation of the features ⟨u, x⟩ and ⟨β⋆, x⟩);
- spike separation σ1(ΔW)/σ2(ΔW).

Every function is batched over a leading seed axis S and returns (S,) tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def cosine(u: Tensor, v: Tensor) -> Tensor:
    """|⟨u, v⟩| / (‖u‖ ‖v‖) along the last axis."""
    return (u * v).sum(-1).abs() / (
        torch.linalg.vector_norm(u, dim=-1) * torch.linalg.vector_norm(v, dim=-1)
    )


def sigma_weighted_cosine(u: Tensor, v: Tensor, covariance: Tensor) -> Tensor:
    """|uᵀΣv| / √(uᵀΣu · vᵀΣv): the correlation of ⟨u, x⟩ and ⟨v, x⟩ for x ~ N(0, Σ)."""
    su = (covariance @ u.unsqueeze(-1)).squeeze(-1)
    sv = (covariance @ v.unsqueeze(-1)).squeeze(-1)
    return (su * v).sum(-1).abs() / torch.sqrt((su * u).sum(-1) * (sv * v).sum(-1))


@dataclass(frozen=True)
class Spike:
    """The top singular direction of ΔW and the separation σ1/σ2, per seed."""

    direction: Tensor  # (S, d)
    separation: Tensor  # (S,)


def spike(delta_w: Tensor) -> Spike:
    """Top right singular vector and σ1/σ2 of ΔW (S, N, d)."""
    _, singular_values, vh = torch.linalg.svd(delta_w, full_matrices=False)
    return Spike(
        direction=vh[..., 0, :], separation=singular_values[..., 0] / singular_values[..., 1]
    )


def alignments(direction: Tensor, beta: Tensor, covariance: Tensor) -> dict[str, Tensor]:
    """The three alignments of ``direction`` (S, d) with the target β⋆ (S, d)."""
    sigma_beta = (covariance @ beta.unsqueeze(-1)).squeeze(-1)
    return {
        "beta": cosine(direction, beta),
        "sigma_beta": cosine(direction, sigma_beta),
        "sigma_weighted": sigma_weighted_cosine(direction, beta, covariance),
    }
