"""Full second-order baselines on θ = (vec F, vec G) jointly (row-major vec), SPEC §2.

For ``L̂ = ½ mean‖y − F G x‖²`` with residual moment ``R = F G Σ̂x − Σ̂yx`` (dy, d):

    GGN  H_FF = I_dy ⊗ (G Σ̂x Gᵀ),   H_GG = (FᵀF) ⊗ Σ̂x,
         H_FG[(a,b),(c,j)] = F_ac (G Σ̂x)_bj
    Hessian = GGN + residual term, which only touches the FG block:
         ΔH_FG[(a,b),(c,j)] = δ_bc R_aj

(the model is bilinear, so the FF and GG blocks have no residual term). The GGN is singular (the
gauge (F A⁻¹, A G) is a k²-dimensional null space) and the Hessian is indefinite away from the
optimum, hence the damping μ:

    θ ← θ − η (H + μ I)⁻¹ ∇θ L̂.

Cost per step: forming H is O(k²d² + dy²k²) and the solve O((dy·k + k·d)³), against O(d³ + k³)
for the layer-wise kfac step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from layerwise.problems.linrep.algorithms import Method, gradients
from layerwise.problems.linrep.data import Batch
from layerwise.problems.linrep.settings import SecondOrderParams


def _kron(a: Tensor, b: Tensor) -> Tensor:
    """Batched Kronecker product of (..., p, q) and (..., r, s) -> (..., p·r, q·s)."""
    *batch, p, q = a.shape
    r, s = b.shape[-2:]
    return (a[..., :, None, :, None] * b[..., None, :, None, :]).reshape(*batch, p * r, q * s)


def curvature(features: Tensor, head: Tensor, batch: Batch, *, exact_hessian: bool) -> Tensor:
    """The GGN (``exact_hessian=False``) or the Hessian of L̂ at (F, G), shape (..., p, p)
    with p = dy·k + k·d and θ = (vec F, vec G), row-major vec."""
    cov = batch.input_cov
    dy, k = head.shape[-2:]
    d = features.shape[-1]
    gcov = features @ cov  # (..., k, d)
    eye_dy = torch.eye(dy, dtype=head.dtype, device=head.device)
    eye_k = torch.eye(k, dtype=head.dtype, device=head.device)
    gram = gcov @ features.mT
    batch_shape = torch.broadcast_shapes(gram.shape[:-2], head.shape[:-2])
    h_ff = _kron(eye_dy.expand(*batch_shape, dy, dy), gram.expand(*batch_shape, k, k))
    h_gg = _kron((head.mT @ head).expand(*batch_shape, k, k), cov.expand(*batch_shape, d, d))
    h_fg = head[..., :, None, :, None] * gcov[..., None, :, None, :]  # (..., a, b, c, j)
    if exact_hessian:
        residual = head @ gcov - batch.cross_cov  # (..., dy, d)
        h_fg = h_fg + eye_k[None, :, :, None] * residual[..., :, None, None, :]
    h_fg = h_fg.expand(*batch_shape, dy, k, k, d).reshape(*batch_shape, dy * k, k * d)
    top = torch.cat([h_ff, h_fg], dim=-1)
    bottom = torch.cat([h_fg.mT, h_gg], dim=-1)
    return torch.cat([top, bottom], dim=-2)


class SecondOrder(Method):
    """Damped Gauss–Newton (``exact_hessian = False``) or damped Newton (``True``) on (F, G),
    at the one damping value of ``params.damping`` (the run function splits a damping grid
    into one run per value)."""

    exact_hessian: bool = False

    def __init__(self, init_features, init_head, lr, params: SecondOrderParams):
        super().__init__(init_features, init_head, lr)
        if len(params.damping) != 1:
            raise ValueError(
                f"one damping value per run, got damping={params.damping!r} "
                "(the run function gives each value its own run)"
            )
        self.damping = params.damping[0]
        self._remember_initial()

    def step(self, batch: Batch) -> None:
        g, f = self.features, self.head
        grad_g, grad_f = gradients(g, f, batch)
        gradient = torch.cat([grad_f.flatten(-2), grad_g.flatten(-2)], dim=-1)
        matrix = curvature(g, f, batch, exact_hessian=self.exact_hessian)
        matrix = matrix + self.damping * torch.eye(
            matrix.shape[-1], dtype=matrix.dtype, device=matrix.device
        )
        direction, info = torch.linalg.solve_ex(matrix, gradient.unsqueeze(-1))
        direction = direction.squeeze(-1) * self.lr.squeeze(-1)
        size_f = f.shape[-1] * f.shape[-2]
        self.state["F"] = f - direction[..., :size_f].reshape(f.shape)
        self.state["G"] = g - direction[..., size_f:].reshape(g.shape)
        self.failed = info != 0


class GaussNewton(SecondOrder):
    """Damped Gauss–Newton: the GGN blocks only."""

    exact_hessian = False


class Newton(SecondOrder):
    """Damped Newton: the GGN plus the residual term of the FG block."""

    exact_hessian = True
