r"""Theory lines for the one-step alignments (SPEC.md §3): Hermite moments and predicted cosines.

Setting: x ~ N(0, Σ), Σ = Q diag(λ) Qᵀ, y = σ⋆(z) + ε with z = ⟨β⋆, x⟩ ~ N(0, 1)
(β⋆ᵀΣβ⋆ = 1), ε ~ N(0, σε²). Link moments (by Gauss–Hermite quadrature):

    c⋆ = E[z σ⋆(z)]  (first Hermite coefficient),   m2 = E[y²],   m4 = E[y² z²],
    σr² = E[(y − c⋆ z)²] = m2 − c⋆²   (what a linear fit in x cannot explain).

Stein's lemma gives E[y x] = c⋆ Σβ⋆. Write y = c⋆ z + r; then E[r x] = 0.

**What is predicted.** Every formula predicts the cosine between β⋆ and the *vector*

    sgd:   v = X1ᵀ y1 / n                       (n samples, f0 ≈ 0)
    kfac:  v = (Σ̂x + λG I)⁻¹ X1ᵀ y1 / n

which is the direction of the leading-order (rank-one) term ``lr·√N·μ1·a vᵀ`` of ΔW. The spike
of ΔW (its top singular vector) follows v only when it separates from the bulk of ΔW; the
experiments measure both. All predictions are ratios of expectations,
cos² ≈ E⟨v, β⋆⟩² / (‖β⋆‖² E‖v‖²), which is accurate when ⟨v, β⋆⟩ and ‖v‖ concentrate
(high dimension, proportional n/d).

Functions take the spectrum ``eigenvalues`` (S, d) and ``target_coordinates`` b = Qᵀβ⋆ (S, d)
(so βᵀ f(Σ) β = Σi bi² f(λi)) and return (S,) tensors of cosines (not squared).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .data import link_function
from .settings import Link

#: Gauss–Hermite nodes for smooth functions (exact for polynomials of degree < 2·nodes).
QUADRATURE_NODES = 120
#: Gauss–Legendre nodes per half-line, and the cut-off L (φ(L) ≈ 1e-32), for functions with a
#: kink at 0 (ReLU), where Gauss–Hermite converges only like 1/nodes.
HALF_LINE_NODES = 200
HALF_LINE_CUTOFF = 12.0

#: Links that are not smooth at 0.
KINKED_LINKS = frozenset({Link.RELU})


def gaussian_expectation(
    fn: Callable[[np.ndarray], np.ndarray], *, kink_at_zero: bool = False
) -> float:
    """E[fn(z)] for z ~ N(0, 1).

    Smooth fn: Gauss–Hermite quadrature with the probabilists' weight e^{−z²/2}. With
    ``kink_at_zero`` (fn smooth on each half-line): Gauss–Legendre on [−L, 0] and [0, L].
    """
    if not kink_at_zero:
        points, weights = np.polynomial.hermite_e.hermegauss(QUADRATURE_NODES)
        return float(np.sum(weights * fn(points)) / math.sqrt(2.0 * math.pi))
    unit, unit_weights = np.polynomial.legendre.leggauss(HALF_LINE_NODES)
    half = HALF_LINE_CUTOFF / 2
    points = np.concatenate([half * (unit - 1.0), half * (unit + 1.0)])
    weights = np.concatenate([unit_weights, unit_weights]) * half
    density = np.exp(-0.5 * points**2) / math.sqrt(2.0 * math.pi)
    return float(np.sum(weights * density * fn(points)))


def hermite_coefficients(
    fn: Callable[[np.ndarray], np.ndarray], degree: int, *, kink_at_zero: bool = False
) -> np.ndarray:
    """Normalized Hermite coefficients ck = E[fn(z) Hek(z)] / √(k!), k = 0..degree.

    With this normalization fn = Σk ck Hek/√(k!) and E[fn(z)²] = Σk ck² (Parseval).
    """
    coefficients = np.zeros(degree + 1)
    for k in range(degree + 1):
        basis = np.polynomial.hermite_e.HermiteE.basis(k)
        coefficients[k] = gaussian_expectation(
            lambda z, b=basis: fn(z) * b(z), kink_at_zero=kink_at_zero
        )
        coefficients[k] /= math.sqrt(math.factorial(k))
    return coefficients


def link_numpy(link: Link | str) -> Callable[[np.ndarray], np.ndarray]:
    """σ⋆ as a numpy function."""
    return lambda z: link_function(link, torch.from_numpy(z)).numpy()


@dataclass(frozen=True)
class LinkMoments:
    """Moments of y = σ⋆(z) + ε, z ~ N(0, 1) (module docstring)."""

    c_star: float  # E[z y]
    second: float  # E[y²]
    second_times_z2: float  # E[y² z²]

    @property
    def residual_variance(self) -> float:
        """σr² = E[y²] − c⋆²."""
        return self.second - self.c_star**2


def link_moments(link: Link | str, noise_std: float = 0.0) -> LinkMoments:
    """c⋆, E[y²] and E[y² z²] of the link with Gaussian label noise of std ``noise_std``."""
    fn = link_numpy(link)
    kink = Link(link) in KINKED_LINKS
    noise = noise_std**2
    return LinkMoments(
        c_star=gaussian_expectation(lambda z: z * fn(z), kink_at_zero=kink),
        second=gaussian_expectation(lambda z: fn(z) ** 2, kink_at_zero=kink) + noise,
        second_times_z2=gaussian_expectation(lambda z: (z * fn(z)) ** 2, kink_at_zero=kink) + noise,
    )


def _quadratic(b: Tensor, values: Tensor) -> Tensor:
    """βᵀ f(Σ) β = Σ bi² f(λi)."""
    return (b * b * values).sum(-1)


def sgd_alignment(moments: LinkMoments, eigenvalues: Tensor, b: Tensor, n: int) -> Tensor:
    r"""Predicted cos(v, β⋆) for the sgd vector v = X1ᵀy1/n (exact second moments for Gaussian x).

    With x = Σβ⋆ z + x⊥ (x⊥ independent of z, covariance Σ − Σβ⋆β⋆ᵀΣ):

        E⟨v, β⋆⟩² = c⋆² + (m4 − c⋆²)/n
        E‖v‖²     = c⋆²‖Σβ⋆‖² (1 − 1/n) + [m4 ‖Σβ⋆‖² + m2 (tr Σ − ‖Σβ⋆‖²)]/n

    To leading order this is SPEC's cos² = c⋆² / (‖β⋆‖² [c⋆²‖Σβ⋆‖² + m2 tr Σ/n]), which tends to
    the cap (β⋆ᵀΣβ⋆)² / (‖β⋆‖²‖Σβ⋆‖²) as n/d → ∞. At Σ = I it is Cui et al.'s
    γ² = c⋆² / (c⋆² + m2 d/n) up to O(1/n) terms.
    """
    c, m2, m4 = moments.c_star, moments.second, moments.second_times_z2
    norm_beta = _quadratic(b, torch.ones_like(eigenvalues))
    norm_sigma_beta = _quadratic(b, eigenvalues**2)
    trace = eigenvalues.sum(-1)
    inner = c**2 + (m4 - c**2) / n
    norm_v = (
        c**2 * norm_sigma_beta * (1 - 1 / n)
        + (m4 * norm_sigma_beta + m2 * (trace - norm_sigma_beta)) / n
    )
    return torch.sqrt(inner / (norm_beta * norm_v))


def sgd_alignment_sigma_beta(
    moments: LinkMoments, eigenvalues: Tensor, b: Tensor, n: int
) -> Tensor:
    r"""Predicted cos(v, Σβ⋆) for the sgd vector v = X1ᵀy1/n (same derivation as
    :func:`sgd_alignment`): with s = ‖Σβ⋆‖²,

        E⟨v, Σβ⋆⟩² = c⋆² s² + [m4 s² + m2 (β⋆ᵀΣ³β⋆ − s²) − c⋆² s²]/n,

    which tends to 1 as n/d → ∞ (v → c⋆Σβ⋆)."""
    c, m2, m4 = moments.c_star, moments.second, moments.second_times_z2
    s = _quadratic(b, eigenvalues**2)
    cubic = _quadratic(b, eigenvalues**3)
    trace = eigenvalues.sum(-1)
    inner = c**2 * s**2 + (m4 * s**2 + m2 * (cubic - s**2) - c**2 * s**2) / n
    norm_v = c**2 * s * (1 - 1 / n) + (m4 * s + m2 * (trace - s)) / n
    return torch.sqrt(inner / (s * norm_v))


def alignment_cap(eigenvalues: Tensor, b: Tensor) -> Tensor:
    """cos(Σβ⋆, β⋆) = β⋆ᵀΣβ⋆ / (‖β⋆‖ ‖Σβ⋆‖): the n → ∞ limit of the sgd alignment."""
    return _quadratic(b, eigenvalues) / torch.sqrt(
        _quadratic(b, torch.ones_like(eigenvalues)) * _quadratic(b, eigenvalues**2)
    )


def ridge_effective_penalty(
    eigenvalues: Tensor, n: int, damping: float, iterations: int = 200
) -> Tensor:
    r"""κλ solving κλ = λG + (κλ/n) tr Σ(Σ + κλ I)⁻¹ (λG > 0), by bisection, shape (S,).

    The right side minus κλ is concave in κλ and positive at 0, so the positive root is unique;
    it lies in [λG, λG + tr Σ / n]."""
    if not damping > 0:
        raise ValueError(f"damping must be > 0 for the deterministic equivalent, got {damping}")
    low = torch.full(eigenvalues.shape[:-1], damping, dtype=eigenvalues.dtype)
    high = low + eigenvalues.sum(-1) / n
    for _ in range(iterations):
        mid = 0.5 * (low + high)
        excess = mid - damping - mid / n * (eigenvalues / (eigenvalues + mid.unsqueeze(-1))).sum(-1)
        positive = excess > 0
        high = torch.where(positive, mid, high)
        low = torch.where(positive, low, mid)
    return 0.5 * (low + high)


def kfac_alignment(
    moments: LinkMoments, eigenvalues: Tensor, b: Tensor, n: int, damping: float
) -> Tensor:
    r"""Predicted cos(v, β⋆) for the kfac vector v = (Σ̂x + λG I)⁻¹ X1ᵀy1/n.

    Write y = c⋆z + r (E[r x] = 0) and treat r as noise of variance σr² independent of x (it
    only depends on the one direction z, a 1/d effect).

    Undamped (λG = 0, n > d + 1): v is the OLS estimate, unbiased for c⋆β⋆, and with
    E[(XᵀX)⁻¹] = Σ⁻¹/(n − d − 1) for Gaussian rows:

        E⟨v, β⋆⟩² = c⋆²‖β⋆‖⁴ + σr² β⋆ᵀΣ⁻¹β⋆/(n − d − 1)
        E‖v‖²     = c⋆²‖β⋆‖²  + σr² tr Σ⁻¹/(n − d − 1)

    Damped (λG > 0, any n): the deterministic equivalents of ridge regression with κλ from
    :func:`ridge_effective_penalty` and κ' = dκλ/dλG = 1/(1 − tr Σ²(Σ + κλ)⁻²/n):

        ⟨v, β⋆⟩ ≈ c⋆ β⋆ᵀΣ(Σ + κλ)⁻¹β⋆
        ‖v‖²    ≈ c⋆²[‖β⋆‖² − 2κλ β⋆ᵀ(Σ + κλ)⁻¹β⋆
                      + β⋆ᵀ((κλ − λGκ')(Σ + κλ)⁻¹ + λGκλκ'(Σ + κλ)⁻²)β⋆]
                  + σr² κ' tr Σ(Σ + κλ)⁻² / n

    (the bias term is ‖(I − λG(Σ̂x + λG)⁻¹)β⋆‖² with λG²(Σ̂x+λG)⁻² ≈ −λG² d/dλG[(κλ/λG)(Σ+κλ)⁻¹]).
    It reduces to the undamped formula (with n − d for n − d − 1) as λG → 0 at n > d.
    """
    c, sigma_r2 = moments.c_star, moments.residual_variance
    ones = torch.ones_like(eigenvalues)
    norm_beta = _quadratic(b, ones)
    if damping == 0:
        d = eigenvalues.shape[-1]
        if n <= d + 1:
            raise ValueError(f"undamped kfac needs n > d + 1, got n={n}, d={d}; set damping > 0")
        inverse = 1.0 / eigenvalues
        inner = c**2 * norm_beta**2 + sigma_r2 * _quadratic(b, inverse) / (n - d - 1)
        norm_v = c**2 * norm_beta + sigma_r2 * inverse.sum(-1) / (n - d - 1)
        return torch.sqrt(inner / (norm_beta * norm_v))
    kappa = ridge_effective_penalty(eigenvalues, n, damping).unsqueeze(-1)
    resolvent = 1.0 / (eigenvalues + kappa)
    derivative = 1.0 / (1.0 - (eigenvalues**2 * resolvent**2).sum(-1, keepdim=True) / n)
    inner = c * _quadratic(b, eigenvalues * resolvent)
    bias = (
        norm_beta
        - 2 * _quadratic(b, kappa * resolvent)
        + _quadratic(
            b,
            (kappa - damping * derivative) * resolvent
            + damping * kappa * derivative * resolvent**2,
        )
    )
    variance = sigma_r2 * derivative.squeeze(-1) * (eigenvalues * resolvent**2).sum(-1) / n
    return inner.abs() / torch.sqrt(norm_beta * (c**2 * bias + variance))


def isotropic_sgd_alignment(moments: LinkMoments, d: int, n: int) -> float:
    """Σ = I, leading order: γ = √(c⋆² / (c⋆² + E[y²] d/n)) (Cui et al. 2024)."""
    c = moments.c_star
    return math.sqrt(c**2 / (c**2 + moments.second * d / n))


def isotropic_kfac_alignment(moments: LinkMoments, d: int, n: int) -> float:
    """Σ = I, undamped, n > d + 1: √(c⋆² / (c⋆² + σr² d/(n − d − 1)))."""
    c = moments.c_star
    return math.sqrt(c**2 / (c**2 + moments.residual_variance * d / (n - d - 1)))


def projection_effective_penalty(eigenvalues: Tensor, n: int, iterations: int = 200) -> Tensor:
    r"""κ0 > 0 solving tr Σ(Σ + κ0 I)⁻¹ = n for n < d, by bisection, shape (S,).

    The ridgeless limit λG → 0 of :func:`ridge_effective_penalty` below the interpolation
    threshold: the projection P = X1ᵀ(X1X1ᵀ)⁻¹X1 on the span of n < d samples has the
    deterministic equivalent E P ≈ Σ(Σ + κ0 I)⁻¹. The left side decreases from d at κ0 = 0 and
    is at most tr Σ/κ0, so the root lies in (0, tr Σ / n]."""
    d = eigenvalues.shape[-1]
    if not 1 <= n < d:
        raise ValueError(f"the projection's penalty needs 1 <= n < d, got n={n}, d={d}")
    low = torch.zeros(eigenvalues.shape[:-1], dtype=eigenvalues.dtype)
    high = eigenvalues.sum(-1) / n
    for _ in range(iterations):
        mid = 0.5 * (low + high)
        above = (eigenvalues / (eigenvalues + mid.unsqueeze(-1))).sum(-1) > n
        low = torch.where(above, mid, low)
        high = torch.where(above, high, mid)
    return 0.5 * (low + high)


def polar_row_alignment(eigenvalues: Tensor, coordinates: Tensor, n: int, width: int) -> Tensor:
    r"""Predicted row alignment ‖ΔW b‖/(‖ΔW‖F ‖b‖) of the muon step ΔW ∝ polar(G) with a
    direction b of eigen-coordinates c = Qᵀb (S, d) (:func:`.metrics.row_alignment`).

    G = A X1 with A = −diag(a) σ'(W0 X1ᵀ) diag(r)/(n√N) (N × n), so the row space of G lies in
    the span of the n samples; generically rank G = min(N, n, d), and the polar factor
    U Vᵀ is a partial isometry whose squared row alignment is ‖P b‖²/(rank ‖b‖²), P the
    projection on G's row space. Two cases have a closed form, and neither involves y1:

    - n ≥ d and N ≥ d: G has full column rank, P = I, and the alignment is exactly 1/√d for
      every b (β⋆, Σβ⋆ or any other direction): the step has no preferred input direction;
    - n < d and N ≥ n: P = X1ᵀ(X1X1ᵀ)⁻¹X1 (label-free), and with its deterministic equivalent
      Σ(Σ + κ0)⁻¹ (:func:`projection_effective_penalty`)

          alignment² ≈ Σi ci² λi/(λi + κ0) / (n Σi ci²),

      which favours Σ's top directions (so Σβ⋆ over β⋆) only through the geometry of X1.

    N < min(n, d) has no such form and raises ``ValueError``.
    """
    d = eigenvalues.shape[-1]
    if n >= d and width >= d:
        return torch.full(eigenvalues.shape[:-1], 1.0 / math.sqrt(d), dtype=eigenvalues.dtype)
    if n < d and width >= n:
        kappa = projection_effective_penalty(eigenvalues, n).unsqueeze(-1)
        share = _quadratic(coordinates, eigenvalues / (eigenvalues + kappa))
        return torch.sqrt(share / (_quadratic(coordinates, torch.ones_like(eigenvalues)) * n))
    raise ValueError(
        f"no closed form for the polar step's alignment with N={width} < min(n={n}, d={d})"
    )
