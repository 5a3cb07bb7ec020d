r"""Damping and step control of KFAC, as free functions on numbers.

- Tikhonov damping on each factor, or Martens & Grosse's π-split of a total damping
  :math:`\lambda` (Martens & Grosse, 2015, §6.3): :math:`\lambda_A = \pi\sqrt\lambda`,
  :math:`\lambda_B = \sqrt\lambda / \pi`, with
  :math:`\pi = \sqrt{(\operatorname{tr} A / \dim A) / (\operatorname{tr} B / \dim B)}`, which
  balances the two factors so that :math:`(B + \lambda_B I) \otimes (A + \lambda_A I)` has the
  cross term :math:`\lambda_A \lambda_B = \lambda`.
- The bias correction of EMA factors, :math:`S / (1 - \beta^k)` after k updates, applied to
  the inverse as :math:`(S / c + \lambda)^{-1} = c\,(S + c\lambda)^{-1}`.
- KL clipping (Ba, Grosse & Martens, 2017): scale the step by
  :math:`\nu = \min(1, \sqrt{c / (\eta^2 \sum_{\text{layers}} \langle D, \nabla \rangle)})`,
  and an update-norm clip :math:`\eta \lVert D \rVert_F \le` ``max_update_norm``.
"""

from __future__ import annotations

import enum
import math


class DampingSplit(enum.StrEnum):
    """``none``: the same damping on each factor; ``pi``: the π-split of a total damping."""

    NONE = "none"
    PI = "pi"


def split_damping(
    damping: float, split: DampingSplit, output_mean: float, input_mean: float
) -> tuple[float, float]:
    """``(λ_B, λ_A)`` for the output and input factors, given their mean eigenvalues
    (trace / dimension). A non-positive or non-finite mean falls back to π = 1."""
    if DampingSplit(split) is DampingSplit.NONE or damping == 0:
        return damping, damping
    pi = 1.0
    if output_mean > 0 and input_mean > 0 and math.isfinite(output_mean * input_mean):
        pi = math.sqrt(input_mean / output_mean)
    root = math.sqrt(damping)
    return root / pi, root * pi


def ema_correction(decay: float, updates: int) -> float:
    """Adam-style bias correction :math:`1 - \\beta^k` of an EMA started at zero."""
    return 1.0 - decay**updates


def clip_scale(
    lr: float,
    *,
    kl_clip: float,
    max_update_norm: float | None,
    inner: float,
    squared_norm: float,
    kl_lr: float | None = None,
) -> float:
    """The factor ν ≤ 1 applied to a step ``-lr·D`` with ``inner`` = Σ⟨D, ∇⟩ and
    ``squared_norm`` = Σ‖D‖² over the clipped layers (``kl_clip=0``: no KL clipping);
    ``kl_lr``: the learning rate in the KL bound, if not ``lr`` (see ``policies.Clipping``)."""
    scale = 1.0
    quadratic = (lr if kl_lr is None else kl_lr) ** 2 * inner
    if kl_clip and quadratic > kl_clip:
        scale = math.sqrt(kl_clip / quadratic)
    norm = lr * math.sqrt(squared_norm)
    if max_update_norm is not None and norm > max_update_norm:
        scale = min(scale, max_update_norm / norm)
    return scale
