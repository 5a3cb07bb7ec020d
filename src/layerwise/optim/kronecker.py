r"""One per-layer Kronecker preconditioner: statistics x accumulation x application.

For a matrix parameter :math:`W \in \mathbb{R}^{m \times n}` every layer-wise method of the
package keeps a *left* statistic :math:`L` (m x m) and a *right* statistic :math:`R` (n x n) and
preconditions a direction :math:`X` (the gradient, or its momentum) as

.. math::  X \mapsto \mathcal{P}_{L,R}(X).

The methods differ in three independent choices, each a small frozen object here:

=========  =================================  ======================  ==========================
method     statistics (increments)            accumulation            application
=========  =================================  ======================  ==========================
Shampoo    :math:`GG^\top`, :math:`G^\top G`  sum or EMA              :class:`InverseRoot` (p=4)
SOAP       :math:`GG^\top`, :math:`G^\top G`  EMA                     :class:`EigenbasisAdam`
Muon       none                               none                    :class:`Orthogonalize`
KFAC       :math:`E[gg^\top]`, :math:`E[aa^\top]`  EMA or latest batch  :class:`InverseRoot` (p=1)
EKFAC      as KFAC                            EMA or latest batch     :class:`EigenbasisAdam`
=========  =================================  ======================  ==========================

Where the increments come from is the caller's business (the optimizer shell): gradients for
Shampoo / SOAP (:func:`accumulate_gradient_statistics`, products fused with their
accumulation), layer inputs and output gradients captured by module hooks for KFAC (folded in
by :func:`accumulate_increment`, or fused the same way). This module only accumulates,
refreshes and applies.

The functions are pure in the optax sense except that they update the ``state`` mapping they
are given in place (it lives in ``torch.optim.Optimizer.state`` so that ``state_dict`` carries it).

Sides. A side of dimension 1 is not preconditioned (a 1 x n parameter gets a one-sided,
right-only preconditioner). A side longer than ``max_preconditioner_dim`` keeps only the diagonal
of its statistic (a diagonal, AdaGrad-like preconditioner on that axis); its eigenbasis is the
identity.
"""

from __future__ import annotations

import enum
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from layerwise.optim import matrix
from layerwise.optim.matrix import Damping, DecompositionError

# State keys (constants, so that optimizers, tests and checkpoints agree on them).
LEFT_STATISTIC = "left_statistic"
RIGHT_STATISTIC = "right_statistic"
LEFT_PRECONDITIONER = "left_preconditioner"
RIGHT_PRECONDITIONER = "right_preconditioner"
EIGENBASIS_EXP_AVG_SQ = "eigenbasis_exp_avg_sq"
EIGENBASIS_EXP_AVG = "eigenbasis_exp_avg"
EIGENBASIS_READY = "eigenbasis_ready"
FAILED_REFRESHES = "failed_refreshes"
CONSECUTIVE_FAILURES = "consecutive_failed_refreshes"

_STATISTIC_KEYS = (LEFT_STATISTIC, RIGHT_STATISTIC)
_PRECONDITIONER_KEYS = (LEFT_PRECONDITIONER, RIGHT_PRECONDITIONER)


class Accumulation(enum.StrEnum):
    """How statistic increments :math:`\\Delta` are accumulated into :math:`S`.

    ``sum``: :math:`S \\leftarrow S + \\Delta` (original Shampoo / AdaGrad);
    ``ema``: :math:`S \\leftarrow \\beta S + (1 - \\beta)\\Delta`;
    ``latest``: :math:`S \\leftarrow \\Delta` (exact per-batch factors, no memory).
    """

    SUM = "sum"
    EMA = "ema"
    LATEST = "latest"


class SideKind(enum.StrEnum):
    DENSE = "dense"
    DIAGONAL = "diagonal"
    NONE = "none"


@dataclass(frozen=True, kw_only=True)
class InverseRoot:
    r"""Apply :math:`(L + \epsilon_L I)^{-1/p} X (R + \epsilon_R I)^{-1/p}`.

    ``root``: the order p; ``None`` means Shampoo's rule p = 2 x (number of preconditioned
    sides), i.e. p = 4 for a matrix and p = 2 for a one-sided (vector-like) parameter. KFAC
    uses ``root=1``. ``damping``/``damping_mode`` follow :mod:`layerwise.optim.matrix`.
    With ``root=1`` the inverse is computed by Cholesky (eigh only as a fallback).
    ``compute_dtype``: precision of the application's products (see :class:`KroneckerConfig`).
    """

    root: float | None = None
    damping: float = 1e-12
    damping_mode: Damping = Damping.ABSOLUTE
    compute_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        if self.root is not None and self.root <= 0:
            raise ValueError(f"root must be positive, got {self.root}")
        if self.damping < 0:
            raise ValueError(f"damping must be >= 0, got {self.damping}")
        object.__setattr__(self, "damping_mode", Damping(self.damping_mode))
        _check_compute_dtype(self.compute_dtype)


class BasisRefresh(enum.StrEnum):
    r"""How :class:`EigenbasisAdam` recomputes its eigenbasis :math:`Q` of a statistic S.

    ``eigh``: the exact eigenvectors. ``power_qr``: one step of subspace (power) iteration from
    the previous basis, :math:`Q \leftarrow \operatorname{qr}(S Q)`, its columns first sorted
    by the estimated eigenvalues :math:`\operatorname{diag}(Q^\top S Q)` (and Adam's second
    moment permuted with them) — the refresh of Vyas et al.'s SOAP implementation: one product
    and a QR instead of an ``eigh``, tracking a slowly moving statistic; repeated on a fixed S
    it converges to the eigenbasis. The first refresh of a state always uses ``eigh``.
    """

    EIGH = "eigh"
    POWER_QR = "power_qr"


@dataclass(frozen=True, kw_only=True)
class EigenbasisAdam:
    r"""Adam run in the eigenbasis :math:`Q_L, Q_R` of the statistics (SOAP, EKFAC).

    With :math:`\tilde G = Q_L^\top G Q_R` and :math:`\tilde M = Q_L^\top M Q_R`:

    .. math::  V \leftarrow \beta_2 V + (1 - \beta_2)\tilde G^{\odot 2}, \qquad
               X \mapsto Q_L \frac{\tilde M}{\sqrt{V / (1 - \beta_2^t)} + \epsilon} Q_R^\top.

    ``V`` is kept across basis refreshes unchanged (Vyas et al., 2024, keep it as well; with
    eigenvectors sorted by eigenvalue the coordinates roughly correspond).

    ``first_moment_decay`` (:math:`\beta_1`, optional) declares that the direction given to
    :func:`apply` is the bias-corrected EMA :math:`M_t / (1 - \beta_1^t)`,
    :math:`M_t = \beta_1 M_{t-1} + (1 - \beta_1) G_t`, of the gradients given with it (SOAP's
    first moment). :math:`\tilde M` is then kept in the state between refreshes and updated
    from :math:`\tilde G` by linearity (two products per step fewer; equal up to round-off),
    and recomputed from the direction after each refresh.

    ``basis_refresh``: see :class:`BasisRefresh`.

    ``compute_dtype``: precision of the rotation *back* out of the eigenbasis (see
    :class:`KroneckerConfig`). The rotation into it stays in the direction's dtype, as do the
    moments and the division: Adam's per-coordinate normalization turns the round-off of a
    weak coordinate into a full-size step of random sign, and bf16 round-off (~4e-3 of the
    largest coordinates) would do so in every coordinate below that level — measured on a
    small MLP: bf16 rotations into the basis moved SOAP's and EKFAC's first four updates by
    9–150 % (relative to float32), the rotation back alone by 0.2–0.4 %.
    """

    beta2: float = 0.95
    epsilon: float = 1e-8
    first_moment_decay: float | None = None
    compute_dtype: torch.dtype | None = None
    basis_refresh: BasisRefresh = BasisRefresh.EIGH

    def __post_init__(self) -> None:
        _check_compute_dtype(self.compute_dtype)
        object.__setattr__(self, "basis_refresh", BasisRefresh(self.basis_refresh))
        if not 0.0 <= self.beta2 < 1.0:
            raise ValueError(f"beta2 must be in [0, 1), got {self.beta2}")
        if self.epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {self.epsilon}")
        if self.first_moment_decay is not None and not 0.0 <= self.first_moment_decay < 1.0:
            raise ValueError(
                f"first_moment_decay must be in [0, 1) or None, got {self.first_moment_decay}"
            )


class PolarMethod(enum.StrEnum):
    SVD = "svd"
    NEWTON_SCHULZ = "newton_schulz"


@dataclass(frozen=True, kw_only=True)
class Orthogonalize:
    r"""Apply :math:`X \mapsto \operatorname{polar}(X) = U V^\top` (Muon).

    ``method``: exact SVD, or a Newton–Schulz iteration with the given coefficients and steps,
    in ``compute_dtype`` (``None``: the direction's dtype; see
    :func:`~layerwise.optim.matrix.newton_schulz_polar`).
    """

    method: PolarMethod = PolarMethod.NEWTON_SCHULZ
    coefficients: tuple[float, float, float] = matrix.NEWTON_SCHULZ_QUINTIC
    steps: int = 5
    compute_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", PolarMethod(self.method))
        if self.steps < 1:
            raise ValueError(f"Newton–Schulz steps must be >= 1, got {self.steps}")
        _check_compute_dtype(self.compute_dtype)


def _check_compute_dtype(dtype: torch.dtype | None) -> None:
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"compute_dtype must be a floating dtype or None, got {dtype}")


Transform = InverseRoot | EigenbasisAdam | Orthogonalize


@dataclass(frozen=True, kw_only=True)
class KroneckerConfig:
    """The three choices of one layer's preconditioner, plus its failure policy.

    Precision. Statistics, their accumulation and the refresh (eigh, Cholesky) run in the
    parameters' dtype (float64 retry on failure): the small eigenvalues of a statistic decide
    its inverse root and would not survive bf16 round-off. The *application* — the per-step
    products with the dense preconditioners (:math:`P_L X P_R`, SOAP's rotations, Muon's
    Newton–Schulz; for :class:`EigenbasisAdam` only the rotation back) — runs in the
    transform's ``compute_dtype`` when one is given (e.g. ``torch.bfloat16``: several times
    faster where bf16 matrix units exist; the preconditioned direction then carries bf16
    round-off, ~4e-3 relative). :class:`InverseRoot` then stores its dense preconditioners in
    that dtype; the result is returned in the direction's dtype.

    ``max_consecutive_failures``: a failed refresh keeps the previous preconditioner and is
    counted; after this many failures in a row the error is raised (``None``: never raise).
    """

    transform: Transform
    accumulation: Accumulation = Accumulation.EMA
    decay: float = 0.95
    max_preconditioner_dim: int = 8192
    retry_float64: bool = True
    max_consecutive_failures: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "accumulation", Accumulation(self.accumulation))
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")
        if self.max_preconditioner_dim < 1:
            raise ValueError(
                f"max_preconditioner_dim must be >= 1, got {self.max_preconditioner_dim}"
            )

    @property
    def uses_statistics(self) -> bool:
        return not isinstance(self.transform, Orthogonalize)

    def side_kinds(self, shape: tuple[int, int]) -> tuple[SideKind, SideKind]:
        """How each side of an ``(m, n)`` parameter is preconditioned (module docstring)."""
        if not self.uses_statistics:
            return SideKind.NONE, SideKind.NONE
        return tuple(  # type: ignore[return-value]
            SideKind.NONE
            if size == 1
            else SideKind.DIAGONAL
            if size > self.max_preconditioner_dim
            else SideKind.DENSE
            for size in shape
        )


def init_state(config: KroneckerConfig, shape: tuple[int, int], like: Tensor) -> dict[str, Any]:
    """Fresh state for a parameter viewed as an ``(m, n)`` matrix (statistics zero,
    preconditioners identity, so a failed first refresh leaves an un-preconditioned step)."""
    state: dict[str, Any] = {FAILED_REFRESHES: 0, CONSECUTIVE_FAILURES: 0}
    options = {"dtype": like.dtype, "device": like.device}
    applied = {"dtype": _stored_dtype(config) or like.dtype, "device": like.device}
    for side, (size, kind) in enumerate(zip(shape, config.side_kinds(shape), strict=True)):
        match kind:
            case SideKind.DENSE:
                state[_STATISTIC_KEYS[side]] = torch.zeros(size, size, **options)
                state[_PRECONDITIONER_KEYS[side]] = torch.eye(size, **applied)
            case SideKind.DIAGONAL:
                state[_STATISTIC_KEYS[side]] = torch.zeros(size, **options)
                if isinstance(config.transform, InverseRoot):
                    state[_PRECONDITIONER_KEYS[side]] = torch.ones(size, **options)
            case SideKind.NONE:
                pass
    if isinstance(config.transform, EigenbasisAdam):
        state[EIGENBASIS_EXP_AVG_SQ] = torch.zeros(shape, **options)
    return state


def accumulate_gradient_statistics(
    config: KroneckerConfig, state: dict[str, Any], grad: Tensor
) -> None:
    r"""Fold Shampoo's increments :math:`G G^\top` and :math:`G^\top G` of a matrix gradient
    into the statistics (their diagonals for diagonal sides).

    A dense side is one fused product, :math:`S \leftarrow \beta S + (1 - \beta)\, G G^\top`
    as a single in-place ``addmm`` (BLAS's own :math:`\beta C + \alpha AB`): no increment is
    materialized and no extra pass is made over :math:`S`. Equal to
    :func:`accumulate_increment` of the explicit increments up to round-off.
    """
    beta, alpha = accumulation_weights(config)
    for side, kind in enumerate(config.side_kinds(tuple(grad.shape))):
        key = _STATISTIC_KEYS[side]
        match kind:
            case SideKind.DENSE:
                first, second = (grad, grad.mT) if side == 0 else (grad.mT, grad)
                state[key].addmm_(first, second, beta=beta, alpha=alpha)
            case SideKind.DIAGONAL:
                accumulate_increment(config, state[key], grad.square().sum(dim=1 - side))
            case SideKind.NONE:
                pass


def accumulation_weights(config: KroneckerConfig) -> tuple[float, float]:
    r"""``(β, α)`` with which ``config.accumulation`` is :math:`S \leftarrow \beta S + \alpha
    \Delta` (for fused products; β = 0 means the old value is ignored)."""
    return {
        Accumulation.SUM: (1.0, 1.0),
        Accumulation.EMA: (config.decay, 1.0 - config.decay),
        Accumulation.LATEST: (0.0, 1.0),
    }[config.accumulation]


def accumulate_increment(config: KroneckerConfig, statistic: Tensor, increment: Tensor) -> None:
    """Fold one increment into one statistic in place (``config.accumulation``)."""
    match config.accumulation:
        case Accumulation.SUM:
            statistic.add_(increment)
        case Accumulation.EMA:
            statistic.lerp_(increment.to(statistic.dtype), 1.0 - config.decay)
        case Accumulation.LATEST:
            statistic.copy_(increment)


def _side_preconditioner(
    transform: Transform, statistic: Tensor, root: float, damping: float, retry: bool
) -> Tensor | None:
    """The preconditioner of one side from its statistic (``None``: keep identity basis)."""
    match transform:
        case InverseRoot():
            if statistic.ndim == 1:
                eigenvalues = matrix._damped_eigenvalues(statistic, damping, transform.damping_mode)
                result = eigenvalues.pow(-1.0 / root)
                if not matrix.all_finite([result]):
                    raise DecompositionError("diagonal inverse root is not finite")
                return result
            if root == 1.0:
                return matrix.damped_inverse(
                    statistic, damping=damping, damping_mode=transform.damping_mode
                )
            return matrix.inverse_root(
                statistic,
                root,
                damping=damping,
                damping_mode=transform.damping_mode,
                retry_float64=retry,
            )
        case EigenbasisAdam():
            if statistic.ndim == 1:
                return None
            return matrix.symmetric_eigenbasis(statistic, retry_float64=retry)
        case _:
            raise TypeError(f"no statistics to refresh for transform {transform!r}")


def _power_qr_step(statistic: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
    """One :data:`BasisRefresh.POWER_QR` step: the new basis and the order (descending
    estimated eigenvalue) in which the previous basis' columns were taken."""
    power = statistic @ basis
    estimated = (basis * power).sum(dim=0)  # diag(Qᵀ S Q)
    order = torch.argsort(estimated, descending=True)
    try:
        fresh, _ = torch.linalg.qr(power[:, order])
    except torch.linalg.LinAlgError as error:
        raise DecompositionError(f"QR of the power step failed: {error}") from error
    if not matrix.all_finite([fresh]):
        raise DecompositionError("power iteration produced non-finite values")
    return fresh, order


def refresh(
    config: KroneckerConfig,
    state: dict[str, Any],
    *,
    damping: tuple[float, float] | None = None,
    scales: tuple[float, float] = (1.0, 1.0),
) -> bool:
    """Recompute the preconditioners from the current statistics.

    ``damping`` overrides ``InverseRoot.damping`` per side (KFAC's π-split); ``scales``
    multiply the fresh preconditioners of each side (KFAC's EMA bias correction), before they
    are stored in the application's precision. On a
    :class:`~layerwise.optim.matrix.DecompositionError` the previous preconditioners are kept,
    the failure is counted in the state and warned about, and ``False`` is returned; after
    ``config.max_consecutive_failures`` failures in a row the error is raised.
    """
    if not config.uses_statistics:
        return True
    transform = config.transform
    sides = [key for key in _STATISTIC_KEYS if key in state]
    root = (transform.root or 2.0 * len(sides)) if isinstance(transform, InverseRoot) else 1.0
    base_damping = transform.damping if isinstance(transform, InverseRoot) else 0.0
    dampings = damping if damping is not None else (base_damping, base_damping)
    power_step = (
        isinstance(transform, EigenbasisAdam)
        and transform.basis_refresh is BasisRefresh.POWER_QR
        and state.get(EIGENBASIS_READY, False)
    )
    orders: dict[int, Tensor] = {}
    try:
        fresh = {}
        for side, key in enumerate(_STATISTIC_KEYS):
            if key not in state:
                continue
            if power_step and state[key].ndim == 2:
                basis, orders[side] = _power_qr_step(state[key], state[_PRECONDITIONER_KEYS[side]])
                fresh[_PRECONDITIONER_KEYS[side]] = basis
            else:
                fresh[_PRECONDITIONER_KEYS[side]] = _side_preconditioner(
                    transform, state[key], root, dampings[side], config.retry_float64
                )
    except DecompositionError as error:
        state[FAILED_REFRESHES] += 1
        state[CONSECUTIVE_FAILURES] += 1
        limit = config.max_consecutive_failures
        if limit is not None and state[CONSECUTIVE_FAILURES] > limit:
            raise DecompositionError(
                f"{state[CONSECUTIVE_FAILURES]} consecutive preconditioner refreshes failed"
            ) from error
        warnings.warn(
            f"preconditioner refresh failed ({error}); keeping the previous one "
            f"({state[FAILED_REFRESHES]} failures so far)",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    for side, key in enumerate(_PRECONDITIONER_KEYS):
        value = fresh.get(key)
        if value is not None:
            state[key].copy_(value.mul_(scales[side]) if scales[side] != 1.0 else value)
    # The second moment follows its coordinates when a power step reorders them; a first
    # moment kept in the eigenbasis belongs to the old basis.
    for side, order in orders.items():
        exp_avg_sq: Tensor = state[EIGENBASIS_EXP_AVG_SQ]
        exp_avg_sq.copy_(exp_avg_sq.index_select(side, order))
    state.pop(EIGENBASIS_EXP_AVG, None)
    if isinstance(transform, EigenbasisAdam):
        state[EIGENBASIS_READY] = True
    state[CONSECUTIVE_FAILURES] = 0
    return True


def _two_sided(left: Tensor | None, x: Tensor, right: Tensor | None, *, transpose: bool) -> Tensor:
    """``Lᵀ X R`` (or ``L X Rᵀ`` if not ``transpose``) with ``None`` as identity and a 1-D
    factor as a diagonal; computed in the dense factors' dtype, returned in ``x``'s."""
    result_dtype = x.dtype
    dense = [f for f in (left, right) if f is not None and f.ndim == 2]
    if dense:
        x = x.to(dense[0].dtype)
    if left is not None:
        if left.ndim == 1:
            x = left.to(x.dtype)[:, None] * x
        else:
            x = (left.mT if transpose else left) @ x
    if right is not None:
        if right.ndim == 1:
            x = x * right.to(x.dtype)[None, :]
        else:
            x = x @ (right if transpose else right.mT)
    return x.to(result_dtype)


def _stored_dtype(config: KroneckerConfig) -> torch.dtype | None:
    """The dtype dense preconditioners are kept in (``None``: the parameter's)."""
    match config.transform:
        case InverseRoot(compute_dtype=dtype):
            return dtype
        case _:  # an eigenbasis also rotates into the basis, in full precision
            return None


def _in_dtype(factor: Tensor | None, dtype: torch.dtype | None) -> Tensor | None:
    if factor is None or factor.ndim < 2 or dtype is None:
        return factor
    return factor.to(dtype)


def _preconditioners(config: KroneckerConfig, state: dict[str, Any]) -> list[Tensor | None]:
    """The two preconditioners, dense ones in their stored dtype. ``torch.optim``'s
    ``load_state_dict`` casts every floating state tensor to the parameter's dtype, so a
    resumed state is cast back here, once."""
    dtype = _stored_dtype(config)
    preconditioners = []
    for key in _PRECONDITIONER_KEYS:
        value = state.get(key)
        if value is not None and value.ndim == 2 and dtype is not None and value.dtype != dtype:
            value = state[key] = value.to(dtype)
        preconditioners.append(value)
    return preconditioners


def _rotated_first_moment(
    state: dict[str, Any],
    left: Tensor | None,
    right: Tensor | None,
    direction: Tensor,
    rotated_grad: Tensor,
    beta1: float,
    step: int,
) -> Tensor:
    r""":math:`Q_L^\top \hat M Q_R` from the first moment kept in the eigenbasis (see
    :class:`EigenbasisAdam`); after a refresh it is rotated from ``direction`` once."""
    if beta1 == 0.0:
        return rotated_grad
    correction = 1.0 - beta1**step
    kept = state.get(EIGENBASIS_EXP_AVG)
    if kept is None:
        kept = _two_sided(left, direction, right, transpose=True).mul_(correction)
        state[EIGENBASIS_EXP_AVG] = kept
    else:
        kept.lerp_(rotated_grad, 1.0 - beta1)
    return kept / correction


def applies_batched(config: KroneckerConfig) -> bool:
    """Whether :func:`apply_batched` may replace per-layer :func:`apply` calls: the transform
    is a stateless function of the direction that batches (Newton–Schulz)."""
    match config.transform:
        case Orthogonalize(method=PolarMethod.NEWTON_SCHULZ):
            return True
        case _:
            return False


def apply_batched(config: KroneckerConfig, directions: list[Tensor]) -> list[Tensor]:
    """:func:`apply` for several layers at once (see :func:`applies_batched`): matrices of
    one shape, dtype and device are stacked and orthogonalized as one batch, so each
    Newton–Schulz product is one batched matmul (several times faster for bf16 on CPUs).
    Equal to per-layer :func:`apply` up to round-off, but the results stay in the compute
    dtype: the caller adds them to parameters of their own dtype (no extra cast pass)."""
    match config.transform:
        case Orthogonalize(
            method=PolarMethod.NEWTON_SCHULZ,
            coefficients=coefficients,
            steps=steps,
            compute_dtype=compute_dtype,
        ):
            pass
        case other:
            raise TypeError(f"transform {other!r} is not applied in batches")
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, direction in enumerate(directions):
        key = (tuple(direction.shape), direction.dtype, direction.device)
        groups.setdefault(key, []).append(index)
    results: list[Tensor | None] = [None] * len(directions)
    for indices in groups.values():
        first = directions[indices[0]]
        if len(indices) == 1:
            batch = first.to(compute_dtype) if compute_dtype is not None else first
        else:
            # Stacked straight into the compute dtype: one pass per matrix.
            batch = first.new_empty((len(indices), *first.shape), dtype=compute_dtype)
            for position, i in enumerate(indices):
                batch[position].copy_(directions[i])
        polar = matrix.newton_schulz_polar(batch, coefficients=coefficients, steps=steps)
        for position, i in enumerate(indices):
            results[i] = polar[position] if len(indices) > 1 else polar
    return results  # type: ignore[return-value]


def apply(
    config: KroneckerConfig,
    state: dict[str, Any],
    direction: Tensor,
    *,
    grad: Tensor | None = None,
    step: int = 1,
) -> Tensor:
    """Precondition ``direction`` (an ``(m, n)`` matrix: the gradient or its momentum).

    ``grad`` (the raw gradient) feeds the second moment of :class:`EigenbasisAdam`; ``step`` is
    its bias-correction count. Returns a new tensor; updates ``state`` only for
    :class:`EigenbasisAdam` (its second moment).
    """
    left, right = _preconditioners(config, state)
    match config.transform:
        case InverseRoot():
            return _two_sided(left, direction, right, transpose=False)
        case EigenbasisAdam(
            beta2=beta2, epsilon=epsilon, first_moment_decay=beta1, compute_dtype=dtype
        ):
            if grad is None:
                raise ValueError("EigenbasisAdam needs the raw gradient")
            exp_avg_sq: Tensor = state[EIGENBASIS_EXP_AVG_SQ]
            rotated_grad = _two_sided(left, grad, right, transpose=True)
            exp_avg_sq.mul_(beta2).addcmul_(rotated_grad, rotated_grad, value=1.0 - beta2)
            bias_correction = 1.0 - beta2**step
            denominator = (exp_avg_sq / bias_correction).sqrt_().add_(epsilon)
            if beta1 is None or (left is None and right is None):
                rotated = _two_sided(left, direction, right, transpose=True)
            else:
                rotated = _rotated_first_moment(
                    state, left, right, direction, rotated_grad, beta1, step
                )
            return _two_sided(
                _in_dtype(left, dtype),
                rotated / denominator,
                _in_dtype(right, dtype),
                transpose=False,
            )
        case Orthogonalize(method=PolarMethod.SVD):
            return matrix.polar_svd(direction)
        case Orthogonalize(coefficients=coefficients, steps=steps, compute_dtype=compute_dtype):
            return matrix.newton_schulz_polar(
                direction, coefficients=coefficients, steps=steps, compute_dtype=compute_dtype
            )
        case other:
            raise TypeError(f"unknown transform {other!r}")
