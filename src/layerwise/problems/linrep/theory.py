"""Theory lines of linear representation learning (SPEC §2, facts 2 and 5–7).

With ``P⊥ = I − G⋆ᵀG⋆`` and noiseless (population or per-batch, n > d) statistics, the kfac
G step satisfies ``G⁺ P⊥ = (1 − ηG) G P⊥`` (fact 2) whatever κ(Σx) and κ(F⋆): near the target the
tangents of the principal angles contract by |1 − η| per step, so

    iterations_to_eps ≈ log(eps / dist0) / log|1 − η|.

For the gradient step on G at a fixed head F ≈ F⋆A (AMD, and SGD near the end), the error in
row(G) contracts at best by ``1 − η λmin(Σx) σmin(F)²`` with ``η ≤ 1 / (λmax(Σx) σmax(F)²)``;
with λmax = σmax = 1 (our normalization) the best rate is ``1 − 1/(κx κF²)`` and

    iterations_to_eps ≳ κx κF² log(dist0 / eps).

The statistical floor of kfac at stationarity (fact 7) scales like
``σε / (σmin(F⋆) √(λmin(Σx) (n − d)))``: slope −½ against n − d.
"""

from __future__ import annotations

import math


def kfac_contraction(lr: float) -> float:
    """Population contraction factor |1 − η| of the kfac G step's off-target component."""
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    return abs(1.0 - lr)


def kfac_iterations_to_eps(lr: float, eps: float, initial_distance: float = 1.0) -> float:
    """``ceil(log(eps/dist0) / log|1 − η|)``; 1 for η = 1 (a one-step solve), inf if η ≥ 2."""
    rate = kfac_contraction(lr)
    if initial_distance <= eps:
        return 0.0
    if rate == 0.0:
        return 1.0
    if rate >= 1.0:
        return math.inf
    return float(math.ceil(math.log(eps / initial_distance) / math.log(rate)))


def gradient_rate_bound(kappa_x: float, kappa_f: float, lr: float | None = None) -> float:
    """Per-step contraction of a gradient step on G at a fixed head F ≈ F⋆ (λmax = σmax = 1).

    Linearizing at the target, the error is multiplied by ``I − η (FᵀF) ⊗ Σx`` whose eigenvalues
    are ``1 − η σi(F)² λj(Σx)``, so the rate is ``max(|1 − η/(κx κF²)|, |1 − η|)`` (heuristic:
    it ignores the coupling of row(G⋆) and its complement through a rotated Σx). ``lr=None``
    gives the best step η = 1 and the rate ``1 − 1/(κx κF²)``.
    """
    if kappa_x < 1 or kappa_f < 1:
        raise ValueError(
            f"condition numbers must be >= 1, got kappa_x={kappa_x}, kappa_f={kappa_f}"
        )
    if lr is None:
        lr = 1.0
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    return max(abs(1.0 - lr / (kappa_x * kappa_f**2)), abs(1.0 - lr))


def gradient_iterations_to_eps(
    kappa_x: float, kappa_f: float, eps: float, initial_distance: float = 1.0
) -> float:
    """The scaling ``κx κF² log(dist0/eps)`` of a gradient method's iterations to eps.

    From :func:`gradient_rate_bound` with ``−log(1 − 1/κ) ≈ 1/κ`` (exact as κ → ∞; at κ = 1 the
    bound's one-step solve is replaced by the smooth scaling, which is what the figures draw).
    """
    gradient_rate_bound(kappa_x, kappa_f)  # validates the condition numbers
    if initial_distance <= eps:
        return 0.0
    return kappa_x * kappa_f**2 * math.log(initial_distance / eps)


def kfac_floor_scale(
    noise_std: float, sigma_min_head: float, lambda_min: float, n: int, d: int
) -> float:
    """``σε / (σmin(F⋆) √(λmin(Σx)(n − d)))``: the scale of kfac's stationary distance (fact 7)."""
    if n <= d:
        raise ValueError(f"n must exceed d for the OLS floor, got n={n}, d={d}")
    return noise_std / (sigma_min_head * math.sqrt(lambda_min * (n - d)))
