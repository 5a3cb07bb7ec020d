r"""Theory of layer-wise Gauss–Newton (kfac) on the deep linear student ``F G_L ⋯ G_1``.

Notation of :mod:`layerwise.problems.deep_linrep.methods`: P = G_L ⋯ G_1 (k, d) the
representation, M = F P the end-to-end map, B_ℓ = F G_L ⋯ G_{ℓ+1}, P_{ℓ−1} = G_{ℓ−1} ⋯ G_1
(P_0 = I), teacher M⋆ = F⋆ G⋆, P⊥ = I − G⋆ᵀG⋆. All layers full rank (G_2 … G_L invertible).

**1. The first layer contracts its off-target part exactly (the two-layer fact 2 at any
depth).** With noiseless samples (Σ̂yx = M⋆Σ̂x) and n > d, ``∇G_1 L̂ Σ̂x⁻¹ = B_1ᵀ(M − M⋆)``, so

    G_1⁺ = (1 − η) G_1 + η (B_1ᵀB_1)⁻¹B_1ᵀ M⋆,        G_1⁺ P⊥ = (1 − η) G_1 P⊥,

at every point, whatever κ(Σx) and κ(F⋆), and whatever the other layers do. While the middle
layers stay invertible row(P) = row(G_1), so the off-target part of the representation shrinks by
exactly |1 − η| per step; the subspace distance (the sine of the largest principal angle between
row(G_1) and row(G⋆), a function of (G_1G⋆ᵀ)⁻¹G_1P⊥) follows at the same rate once G_1G⋆ᵀ
settles, giving linrep's ``iterations ≈ log(ε/dist0) / log|1 − η|``
(:func:`layerwise.problems.linrep.theory.kfac_iterations_to_eps`). At η = 1 one step lands in
row(G⋆): a one-step solve, no evidence of a rate.

**2. The residual map has a κ-free spectrum {0, 1, L + 1}.** The model is linear in each layer,
so layer ℓ's Gauss–Newton step moves the residual vector r ∈ R^{n·dy} by ``−η Π_ℓ r`` to first
order, Π_ℓ the orthogonal projection onto the range T_ℓ of its Jacobian. The simultaneous step
gives ``r⁺ = (I − η K) r + O(η²‖r‖²)`` with ``K = Σ_ℓ Π_ℓ``. In the metric ⟨R, R'⟩ = tr(R Σ̂x R'ᵀ)
of end-to-end changes R (dy, d): T_F = {X P}, T_{G_1} = {B_1 Y} and, for the k × k layers,
T_{G_ℓ} = {B_ℓ W P_{ℓ−1}} = S = {F W P} (ℓ ≥ 2; col(B_ℓ) = col(F), row(P_{ℓ−1}) = row(P)). S lies
in T_F ∩ T_{G_1}, and the rests are orthogonal: ``(I − Π_F) X P`` against ``F Y`` with
``Y Σ̂x Pᵀ = 0`` has inner product tr(Fᵀ(I − Π_F) X P Σ̂x Yᵀ) = 0. Hence

    K = (L + 1) Π_S + Π_{T_F ⊖ S} + Π_{T_{G_1} ⊖ S}:

eigenvalue L + 1 with multiplicity k² (dim S), eigenvalue 1 with multiplicity
(dy·k − k²) + (k·d − k²), and 0 elsewhere — at every full-rank point, for every Σ̂x. Near a
noiseless optimum the residual therefore contracts per step by ``max(|1 − η|, |1 − (L + 1)η|)``,
independent of κ(Σx) and κ(F⋆): the shared mode S (all layers rescaling the same end-to-end
directions) is corrected L + 1 times over. Stable iff ``0 < η < 2/(L + 1)``; the best rate is
``L/(L + 2)`` at ``η = 2/(L + 2)``. For L = 1 (the two-layer net with a simultaneous
preconditioned head, like the library KFAC) this is η < 1 and rate 1/3 at η = 2/3.

The derivation is local: far from the optimum (distance near 1, where G_1G⋆ᵀ is nearly singular)
the second-order terms are not small and steps near the bound can diverge; our measurements
count those seeds as diverged. What the theory does not give is SGD's rate: for the gradient
step the same linearization has the κ-dependent spectrum of Σ_ℓ J_ℓJ_ℓᵀ, with eigenvalues down
to about λmin(Σx) times the layer scales, so its iterations are expected to grow about like
κ(Σx) (measured, not derived).
"""

from __future__ import annotations


def _check(depth: int) -> None:
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")


def residual_map_spectrum(depth: int, d: int, k: int, dy: int) -> dict[float, int]:
    """Non-zero eigenvalues of ``K = Σ_ℓ Π_ℓ`` and their multiplicities (statement 2).

    ``{depth + 1: k², 1: dy·k + k·d − 2k²}`` (the 1-eigenspace is empty when dy = d = k).
    """
    _check(depth)
    if not (1 <= k <= d and k <= dy):
        raise ValueError(f"need 1 <= k <= d and k <= dy, got d={d}, k={k}, dy={dy}")
    spectrum = {float(depth + 1): k * k}
    ones = dy * k + k * d - 2 * k * k
    if ones:
        spectrum[1.0] = ones
    return spectrum


def local_rate(lr: float, depth: int) -> float:
    """Per-step contraction of the residual near a noiseless optimum:
    ``max(|1 − η|, |1 − (L + 1)η|)`` (≥ 1: unstable)."""
    _check(depth)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    return max(abs(1.0 - lr), abs(1.0 - (depth + 1) * lr))


def largest_stable_step(depth: int) -> float:
    """``2/(L + 1)``: the local rate is below 1 exactly for 0 < η < this."""
    _check(depth)
    return 2.0 / (depth + 1)


def best_step(depth: int) -> float:
    """``2/(L + 2)``, where |1 − η| = |1 − (L + 1)η|: the fastest local rate."""
    _check(depth)
    return 2.0 / (depth + 2)


def best_local_rate(depth: int) -> float:
    """``L/(L + 2)``: the local rate at :func:`best_step`."""
    return local_rate(best_step(depth), depth)
