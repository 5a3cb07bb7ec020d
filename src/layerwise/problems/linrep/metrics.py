"""Metrics of linear representation learning (SPEC §2), batched over leading axes.

- ``subspace_distance(G, G⋆) = ‖(I − U⋆U⋆ᵀ) U‖`` with U, U⋆ orthonormal bases of the row
  spaces (spectral norm: the sine of the largest principal angle, in [0, 1]; Frobenius: the
  root of the sum of squared sines). Invariant to G → A G for invertible A.
- ``squared_loss = ½ mean_i ‖y_i − F G x_i‖²``.
- ``transfer_excess_risk``: freeze Ĝ, least-squares head on transfer samples, then
  ``tr((F̂Ĝ − M⋆) Σx (F̂Ĝ − M⋆)ᵀ)`` with ``M⋆ = F⋆ G⋆`` of the transfer task.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from layerwise.problems.linrep.data import Batch


def row_basis(features: Tensor) -> Tensor:
    """An orthonormal basis (..., d, k) of the row space of ``features`` (..., k, d), via QR."""
    q, _ = torch.linalg.qr(features.mT)
    return q


def orthonormalize_rows(features: Tensor) -> Tensor:
    """``features`` (..., k, d) replaced by orthonormal rows spanning the same row space."""
    return row_basis(features).mT


def subspace_distance(
    features: Tensor, target: Tensor, norm: Literal["spectral", "fro"] = "spectral"
) -> Tensor:
    """``‖(I − U⋆U⋆ᵀ) U‖`` for row spaces of ``features`` (..., k, d) and ``target`` (..., k⋆, d).

    Computed from the projection residual directly (not as sqrt(1 − cos²)) so small distances
    keep full relative precision.
    """
    basis = row_basis(features)
    target_basis = row_basis(target)
    residual = basis - target_basis @ (target_basis.mT @ basis)
    if norm == "spectral":
        return torch.linalg.matrix_norm(residual, ord=2)
    if norm == "fro":
        return torch.linalg.matrix_norm(residual, ord="fro")
    raise ValueError(f"norm must be 'spectral' or 'fro', got {norm!r}")


def squared_loss(predictions: Tensor, targets: Tensor) -> Tensor:
    """½ mean over samples of ‖y − ŷ‖²; predictions/targets (..., n, dy) -> (...)."""
    return 0.5 * (targets - predictions).square().sum(-1).mean(-1)


def least_squares_head(features: Tensor, batch: Batch, *, ridge: float = 0.0) -> Tensor:
    """``F = Σ̂yx Gᵀ (G Σ̂x Gᵀ + ridge·I)⁻¹`` (..., dy, k): argmin_F ½ mean‖y − F G x‖².

    Computed from z = G x (n·d·k work) so Σ̂x (n·d² work) is not needed.
    """
    z = batch.x @ features.mT  # (..., n, k)
    gram = z.mT @ z / batch.n
    if ridge:
        gram = gram + ridge * torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    cross = batch.y.mT @ z / batch.n  # (..., dy, k)
    solution, _ = torch.linalg.solve_ex(gram, cross.mT)
    return solution.mT


def transfer_excess_risk(
    features: Tensor,
    transfer: Batch,
    head_star: Tensor,
    features_star: Tensor,
    input_cov: Tensor,
) -> Tensor:
    """Excess risk of the least-squares head on frozen ``features`` (..., k, d).

    ``head_star`` F⋆ (S, dy, k), ``features_star`` G⋆ (S, k, d), ``input_cov`` Σx (S, d, d) of
    the transfer task; ``transfer`` holds the head's training samples.
    """
    head = least_squares_head(features, transfer)
    error = head @ features - head_star @ features_star
    return (error @ input_cov * error).sum((-1, -2))
