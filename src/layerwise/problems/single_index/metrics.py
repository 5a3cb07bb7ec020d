r"""Metrics of the first-layer update ΔW = W1 − W0 (SPEC.md §3).

- spike direction u: the top right singular vector of ΔW (unit, sign free);
- Euclidean alignment with β⋆: |⟨u, β⋆⟩| / ‖β⋆‖;
- alignment with Σβ⋆: |⟨u, Σβ⋆⟩| / ‖Σβ⋆‖;
- Σ-weighted alignment: |⟨u, Σβ⋆⟩| / (‖Σ^{1/2}u‖ · ‖Σ^{1/2}β⋆‖)
  (the correlation of the features ⟨u, x⟩ and ⟨β⋆, x⟩);
- spike separation σ1(ΔW)/σ2(ΔW);
- row alignment with a direction b: ‖ΔW b‖ / (‖ΔW‖F ‖b‖), the root of the share of ΔW's
  energy along b (:func:`row_alignment`). It needs no spike, so it is defined for the polar
  (muon) step, whose singular values are all equal and whose top singular vector is arbitrary.

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


#: Block size and stopping rule of the subspace iteration in :func:`spike`.
SPIKE_BLOCK = 8
SPIKE_MAX_ITERATIONS = 500
SPIKE_TOLERANCE = 1e-10


def spike(delta_w: Tensor) -> Spike:
    """Top right singular vector and σ1/σ2 of ΔW (S, N, d).

    A full SVD costs O(N d min(N, d)) per seed and dominated the experiments, so the top
    singular pair comes from block subspace iteration Q ← orth(ΔWᵀ ΔW Q) with
    :data:`SPIKE_BLOCK` columns and a Rayleigh–Ritz step, stopped when the two leading Ritz
    values change by less than :data:`SPIKE_TOLERANCE` (relative). Matrices with at most
    :data:`SPIKE_BLOCK` columns use the exact SVD. The starting block comes from a fixed
    generator, so the result is deterministic.
    """
    d = delta_w.shape[-1]
    if d <= SPIKE_BLOCK:
        _, values, vh = torch.linalg.svd(delta_w, full_matrices=False)
        return Spike(direction=vh[..., 0, :], separation=values[..., 0] / values[..., 1])
    start = torch.randn(
        d, SPIKE_BLOCK, generator=torch.Generator().manual_seed(0), dtype=delta_w.dtype
    )
    basis = torch.linalg.qr(start.to(delta_w.device).expand(*delta_w.shape[:-2], d, SPIKE_BLOCK))[0]
    previous = None
    for _ in range(SPIKE_MAX_ITERATIONS):
        image = delta_w @ basis  # (S, N, p)
        _, values, vh = torch.linalg.svd(image, full_matrices=False)
        leading = values[..., :2]
        if previous is not None and bool(
            ((leading - previous).abs() <= SPIKE_TOLERANCE * leading[..., :1]).all()
        ):
            break
        previous = leading
        basis = torch.linalg.qr(delta_w.transpose(-1, -2) @ image)[0]
    # Ritz vectors: the right singular vectors of ΔW Q mapped back by Q.
    direction = (basis @ vh.transpose(-1, -2))[..., 0]
    return Spike(direction=direction, separation=values[..., 0] / values[..., 1])


def spike_by_svd(delta_w: Tensor) -> Spike:
    """:func:`spike` by a full SVD: for updates whose leading singular values are close
    (shampoo, muon), where subspace iteration converges slowly."""
    _, values, vh = torch.linalg.svd(delta_w, full_matrices=False)
    return Spike(direction=vh[..., 0, :], separation=values[..., 0] / values[..., 1])


def alignments(direction: Tensor, beta: Tensor, covariance: Tensor) -> dict[str, Tensor]:
    """The three alignments of ``direction`` (S, d) with the target β⋆ (S, d)."""
    sigma_beta = (covariance @ beta.unsqueeze(-1)).squeeze(-1)
    return {
        "beta": cosine(direction, beta),
        "sigma_beta": cosine(direction, sigma_beta),
        "sigma_weighted": sigma_weighted_cosine(direction, beta, covariance),
    }


def row_alignment(delta_w: Tensor, direction: Tensor) -> Tensor:
    r"""‖ΔW b‖ / (‖ΔW‖F ‖b‖) for ΔW (S, N, d) and b (S, d), in [0, 1].

    Its square Σi ‖δi‖² cos²(δi, b) / Σi ‖δi‖² is the energy-weighted mean squared cosine of
    the rows δi of ΔW (the neurons' moves) with b; with ΔW = Σk sk uk vkᵀ it is
    Σk sk² ⟨vk, b⟩² / (Σk sk² ‖b‖²). For a rank-one ΔW = u vᵀ it is |cos(v, b)| (the spike
    alignment); for a partial isometry U Vᵀ of rank r (a polar factor) it is ‖P b‖/(√r ‖b‖),
    P the projection on its row space: 1/√d for every b when r = d (no preferred direction).
    """
    moved = (delta_w @ direction.unsqueeze(-1)).squeeze(-1)
    return torch.linalg.vector_norm(moved, dim=-1) / (
        torch.linalg.matrix_norm(delta_w) * torch.linalg.vector_norm(direction, dim=-1)
    )


def row_alignments(delta_w: Tensor, beta: Tensor, covariance: Tensor) -> dict[str, Tensor]:
    """:func:`row_alignment` of ΔW with β⋆ and with Σβ⋆."""
    sigma_beta = (covariance @ beta.unsqueeze(-1)).squeeze(-1)
    return {"beta": row_alignment(delta_w, beta), "sigma_beta": row_alignment(delta_w, sigma_beta)}
