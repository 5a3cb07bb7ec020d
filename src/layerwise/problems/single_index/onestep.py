r"""The two-layer network and its one large first-layer step (SPEC.md §3).

Network: ``f(x) = (1/√N) aᵀ σ(W x)``, W (N × d), a (N,) fixed during the step. One-step loss
on the batch (X, y) of n samples:

    L̂(W) = (1/2n) Σi (yi − f(xi))²
    ∇W L̂ = −(1/(n√N)) [(a 1ᵀ) ⊙ σ'(W Xᵀ)] diag(r) X,        r = y − f(X)       (N × d)

Steps (``ΔW = W1 − W0``; η = lr·√N, so ``η √N ∇W = lr·N·∇W``):

    sgd        ΔW = −η √N ∇W L̂(W0)
    kfac       ΔW = −η √N ∇W L̂(W0) (Σ̂x + λG I)⁻¹        (Σ̂x = XᵀX/n; right factor only)
    adam       ΔW = −s sign(∇W L̂(W0)),  s = ‖ΔW_sgd‖F / ‖sign(∇W L̂)‖F
    shampoo    ΔW = −s (GGᵀ + εI)^{-1/4} G (GᵀG + εI)^{-1/4},  G = ∇W L̂(W0), ε = damping·σ1(G)²
    muon       ΔW = −s polar(G) = −s U Vᵀ  (G = U S Vᵀ; exact SVD or Newton–Schulz)
    batchnorm  the sgd step of the network (1/√N) aᵀσ(BN(W x)), BN over the batch, no affine
    rf         ΔW = 0
    oracle     W1 = s β⋆ᵀ, s ~ N(0, I_N)

To leading order σ'(W0 x) ≈ μ1 = E σ'(·), so the sgd step is the rank-one spike
``lr·√N·μ1 a vᵀ`` with ``v = X1ᵀ(y1 − f0)/n`` and the kfac step replaces v by
``(Σ̂x + λG I)⁻¹ v``; :mod:`.theory` predicts the direction of v. The shampoo and muon steps
are matrix functions of G (not of v alone): with G = U S Vᵀ the shampoo step is
``U S (S² + ε)^{-1/2} Vᵀ``, which keeps G's singular vectors and flattens its spectrum, and
tends to muon's ``U Vᵀ`` as ε → 0 (:func:`shampoo_step`). Both are scaled to the Frobenius norm
of the sgd step with the same ``lr`` (as adam), so that only their direction differs.

All functions take tensors with a leading seed axis S: X (S, n, d), y (S, n), W (S, N, d),
a (S, N).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from layerwise.optim import matrix

from .settings import Activation, Polar


def activation_function(activation: Activation | str, z: Tensor) -> Tensor:
    """σ(z) of the student."""
    match Activation(activation):
        case Activation.TANH:
            return torch.tanh(z)
        case Activation.RELU:
            return torch.relu(z)
        case other:  # pragma: no cover
            raise ValueError(f"unknown activation {other!r}")


def activation_derivative(activation: Activation | str, z: Tensor) -> Tensor:
    """σ'(z) of the student (ReLU: the indicator z > 0)."""
    match Activation(activation):
        case Activation.TANH:
            return 1.0 - torch.tanh(z) ** 2
        case Activation.RELU:
            return (z > 0).to(z.dtype)
        case other:  # pragma: no cover
            raise ValueError(f"unknown activation {other!r}")


def network_output(w: Tensor, a: Tensor, x: Tensor, activation: Activation | str) -> Tensor:
    """f(X) = σ(X Wᵀ) a / √N, shape (S, n)."""
    width = w.shape[-2]
    features = activation_function(activation, x @ w.transpose(-1, -2))
    return (features @ a.unsqueeze(-1)).squeeze(-1) / math.sqrt(width)


def one_step_loss(
    w: Tensor, a: Tensor, x: Tensor, y: Tensor, activation: Activation | str
) -> Tensor:
    """L̂(W) = (1/2n) ‖y − f(X)‖² per seed, shape (S,)."""
    residual = y - network_output(w, a, x, activation)
    return 0.5 * (residual**2).mean(dim=-1)


def loss_gradient(
    w: Tensor, a: Tensor, x: Tensor, y: Tensor, activation: Activation | str
) -> Tensor:
    """∇W L̂(W) in closed form (module docstring), shape (S, N, d)."""
    n, width = x.shape[-2], w.shape[-2]
    pre = x @ w.transpose(-1, -2)  # (S, n, N)
    residual = y - (activation_function(activation, pre) @ a.unsqueeze(-1)).squeeze(-1) / (
        math.sqrt(width)
    )
    weights = activation_derivative(activation, pre) * residual.unsqueeze(-1) * a.unsqueeze(-2)
    return -(weights.transpose(-1, -2) @ x) / (n * math.sqrt(width))


def sgd_step(
    w: Tensor, a: Tensor, x: Tensor, y: Tensor, *, lr: float, activation: Activation | str
) -> Tensor:
    """ΔW = −η √N ∇W L̂(W0) with η = lr·√N, shape (S, N, d)."""
    width = w.shape[-2]
    return -lr * width * loss_gradient(w, a, x, y, activation)


def empirical_covariance(x: Tensor) -> Tensor:
    """Σ̂x = XᵀX/n, shape (S, d, d)."""
    return x.transpose(-1, -2) @ x / x.shape[-2]


def kfac_step(
    w: Tensor,
    a: Tensor,
    x: Tensor,
    y: Tensor,
    *,
    lr: float,
    damping: float,
    activation: Activation | str,
    right_factor: Tensor | None = None,
) -> Tensor:
    """ΔW = −η √N ∇W L̂(W0) (R + λG I)⁻¹ with R = Σ̂x unless ``right_factor`` is given.

    R + λG I is symmetric positive definite (λG > 0 or n > d), so the solve uses a Cholesky
    factor; a singular R without damping raises ``torch.linalg.LinAlgError``.
    """
    d = x.shape[-1]
    factor = empirical_covariance(x) if right_factor is None else right_factor
    damped = factor + damping * torch.eye(d, dtype=x.dtype, device=x.device)
    chol = torch.linalg.cholesky(damped)
    step = sgd_step(w, a, x, y, lr=lr, activation=activation)
    # ΔW (R + λI)⁻¹ = ((R + λI)⁻¹ ΔWᵀ)ᵀ since R + λI is symmetric.
    return torch.cholesky_solve(step.transpose(-1, -2), chol).transpose(-1, -2)


def adam_step(
    w: Tensor, a: Tensor, x: Tensor, y: Tensor, *, lr: float, activation: Activation | str
) -> Tensor:
    """One Adam step from zero state, ΔW = −s·sign(∇W L̂), scaled to the sgd step's norm."""
    sgd = sgd_step(w, a, x, y, lr=lr, activation=activation)
    return _norm_matched(torch.sign(sgd), sgd)


def _norm_matched(direction: Tensor, sgd: Tensor) -> Tensor:
    """``direction`` rescaled per seed to the Frobenius norm of the sgd step ``sgd``."""
    scale = torch.linalg.matrix_norm(sgd) / torch.linalg.matrix_norm(direction).clamp_min(1e-300)
    return direction * scale[..., None, None]


def symmetric_inverse_fourth_root(matrix: Tensor, damping: Tensor) -> Tensor:
    """(A + εI)^{-1/4} for symmetric PSD A (S, m, m) by ``eigh`` in float64; ε (S,) > 0."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix.to(torch.float64))
    # Round-off can leave eigenvalues of a Gram matrix slightly negative; they are zero.
    root = (eigenvalues.clamp_min(0.0) + damping.unsqueeze(-1)) ** -0.25
    inverse_root = (eigenvectors * root.unsqueeze(-2)) @ eigenvectors.transpose(-1, -2)
    return inverse_root.to(matrix.dtype)


def shampoo_direction(gradient: Tensor, damping: float) -> Tensor:
    r"""One Shampoo direction from zero state, without accumulation, S (N, d) batched:

        D = (GGᵀ + εI)^{-1/4} G (GᵀG + εI)^{-1/4},     ε = damping · σ1(G)²,

    the inverse fourth roots from ``eigh`` of the two Gram matrices (float64). With the SVD
    G = U S Vᵀ both roots share G's singular vectors, so D = U S (S² + ε)^{-1/2} Vᵀ: the
    singular values s ↦ s/√(s² + ε) are flattened towards 1 (muon's polar factor U Vᵀ as
    ε → 0) and the order of the singular values is kept, so for every ε > 0 the top right
    singular vector of D is G's (the sgd spike). The damping is relative to σ1(G)² = λmax(GᵀG)
    because one step's gradient has no natural scale.
    """
    if not damping > 0:
        raise ValueError(f"shampoo damping must be > 0 (ε → 0 is muon), got {damping}")
    left = gradient @ gradient.transpose(-1, -2)
    right = gradient.transpose(-1, -2) @ gradient
    epsilon = damping * torch.linalg.matrix_norm(gradient, ord=2) ** 2
    return (
        symmetric_inverse_fourth_root(left, epsilon)
        @ gradient
        @ symmetric_inverse_fourth_root(right, epsilon)
    )


def shampoo_step(
    w: Tensor,
    a: Tensor,
    x: Tensor,
    y: Tensor,
    *,
    lr: float,
    damping: float,
    activation: Activation | str,
) -> Tensor:
    """ΔW = −s·D (:func:`shampoo_direction` of G = ∇W L̂(W0)), s matching the sgd step's norm."""
    gradient = loss_gradient(w, a, x, y, activation)
    sgd = -lr * w.shape[-2] * gradient
    return _norm_matched(-shampoo_direction(gradient, damping), sgd)


def muon_step(
    w: Tensor,
    a: Tensor,
    x: Tensor,
    y: Tensor,
    *,
    lr: float,
    polar: Polar | str,
    activation: Activation | str,
) -> Tensor:
    """ΔW = −s·polar(G), G = ∇W L̂(W0), s matching the sgd step's Frobenius norm.

    Muon's first step from zero momentum: its momentum (Nesterov or not) is a multiple of G,
    and the polar factor is scale-free. ``polar="svd"`` is the exact U Vᵀ on G's numerical range
    (:func:`layerwise.optim.matrix.polar_svd`); ``"newton_schulz"`` the library's quintic
    iteration (5 steps, float64), which maps the singular values to about [0.7, 1.2] instead
    of exactly 1.
    """
    gradient = loss_gradient(w, a, x, y, activation)
    sgd = -lr * w.shape[-2] * gradient
    match Polar(polar):
        case Polar.SVD:
            factor = matrix.polar_svd(gradient)
        case Polar.NEWTON_SCHULZ:
            factor = matrix.newton_schulz_polar(gradient)
        case other:  # pragma: no cover - StrEnum makes this unreachable
            raise ValueError(f"unknown polar method {other!r}")
    return _norm_matched(-factor, sgd)


BATCHNORM_EPS = 1e-12


def batchnorm(pre: Tensor, mean: Tensor | None = None, std: Tensor | None = None) -> Tensor:
    """Normalize pre-activations (S, n, N) per neuron with the batch statistics (or the given
    ``mean``, ``std`` of shape (S, 1, N)); no affine parameters."""
    if mean is None or std is None:
        mean = pre.mean(dim=-2, keepdim=True)
        std = (pre.var(dim=-2, unbiased=False, keepdim=True) + BATCHNORM_EPS).sqrt()
    return (pre - mean) / std


def batchnorm_step(
    w: Tensor, a: Tensor, x: Tensor, y: Tensor, *, lr: float, activation: Activation | str
) -> Tensor:
    """ΔW = −η √N ∇W L̂_BN(W0) for f(x) = (1/√N) aᵀσ(BN(W x)); the gradient through the batch
    statistics is taken by autograd."""
    width = w.shape[-2]
    w_var = w.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        features = activation_function(activation, batchnorm(x @ w_var.transpose(-1, -2)))
        output = (features @ a.unsqueeze(-1)).squeeze(-1) / math.sqrt(width)
        # Seeds are independent, so the gradient of the sum is the per-seed gradient.
        loss = (0.5 * ((y - output) ** 2).mean(dim=-1)).sum()
        (gradient,) = torch.autograd.grad(loss, w_var)
    return -lr * width * gradient


def oracle_weights(beta: Tensor, scales: Tensor) -> Tensor:
    """W1 = s β⋆ᵀ: rows along β⋆ with scales s (S, N), shape (S, N, d)."""
    return scales.unsqueeze(-1) * beta.unsqueeze(-2)


class TwoLayerNetwork(nn.Module):
    """The ``nn.Module`` form of one seed's network: ``f(x) = (1/√N) aᵀ σ(W x)``.

    ``first`` is an ``nn.Linear(d, N, bias=False)`` holding W (the only parameter); ``a`` is a
    buffer (fixed during the step), so optimizers see W only. ``forward`` maps (n, d) to
    (n, 1): a batch of one-dimensional outputs, the shape torch's losses and the project's
    ``KFAC`` expect.
    """

    def __init__(self, w0: Tensor, a: Tensor, activation: Activation | str) -> None:
        super().__init__()
        width, d = w0.shape
        self.first = nn.Linear(d, width, bias=False, dtype=w0.dtype, device=w0.device)
        with torch.no_grad():
            self.first.weight.copy_(w0)
        self.register_buffer("a", a.clone())
        self.activation = Activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        width = self.first.weight.shape[0]
        hidden = activation_function(self.activation, self.first(x))
        return (hidden @ self.a / math.sqrt(width)).unsqueeze(-1)
