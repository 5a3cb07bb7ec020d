r"""The three transforms: how a block's statistics become its preconditioned direction.

- :class:`InverseRoot` (Shampoo, KFAC): :math:`X \mapsto (L/c + \epsilon_L I)^{-1/p}\, X\,
  (R/c + \epsilon_R I)^{-1/p}`;
- :class:`EigenbasisAdam` (SOAP, EKFAC): Adam in the eigenbasis of the statistics;
- :class:`Orthogonalize` (Muon): :math:`X \mapsto UV^\top`, no statistics.

Each implements :class:`~layerwise.optim.kronecker.Transform` (``init`` / ``refresh`` /
``apply``) and owns its sides, damping convention and precision; a new transform is one more
subclass (see ``docs/composition.md``).
"""

from __future__ import annotations

import enum
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from layerwise.optim import matrix
from layerwise.optim.kfac_damping import DampingSplit, split_damping
from layerwise.optim.kronecker import (
    AUTO,
    EIGENBASIS_EXP_AVG,
    EIGENBASIS_EXP_AVG_SQ,
    EIGENBASIS_READY,
    FAILED_REFRESHES,
    PRECONDITIONER_KEYS,
    STATISTIC_KEYS,
    Side,
    SideLayout,
    Transform,
    layout_of,
    precision,
    preconditioner_count,
    statistics_dtype,
    two_sided,
)
from layerwise.optim.matrix import Damping, DecompositionError, Workspace


def _stored_preconditioner(state: dict[str, Any], key: str, dtype: torch.dtype) -> Tensor | None:
    """A dense preconditioner in ``dtype``. ``torch.optim``'s ``load_state_dict`` casts every
    floating state tensor to the parameter's dtype, so a resumed state is cast back here, once."""
    value = state.get(key)
    if value is not None and value.ndim == 2 and value.dtype != dtype:
        value = state[key] = value.to(dtype)
    return value


@dataclass(frozen=True, kw_only=True)
class InverseRoot(Transform):
    r"""Apply :math:`(L/c + \epsilon_L I)^{-1/p}\, X\, (R/c + \epsilon_R I)^{-1/p}`.

    ``root``: the order p; ``None`` means Shampoo's rule p = 2 x (number of preconditioned
    sides), i.e. p = 4 for a matrix and p = 2 for a one-sided block. KFAC uses ``root=1``,
    computed by Cholesky (eigh only as a fallback); other roots by ``eigh`` (float64 retry).

    Damping (:mod:`layerwise.optim.matrix`): :math:`\epsilon` is added to the eigenvalues of
    :math:`S/c` before the root, absolute or relative to the largest (``damping_mode``), the
    same on each side or split by Martens & Grosse's π rule (``damping_split="pi"``, a total
    damping :math:`\lambda` with :math:`\epsilon_L \epsilon_R = \lambda`). :math:`c` is the
    statistics' bias correction (1 if none), applied as :math:`(S/c + \epsilon)^{-1/p} =
    c^{1/p}(S + c\epsilon)^{-1/p}` (no pass over S).

    Sides: a diagonal side gets the elementwise root of its diagonal statistic; a scalar side
    (size 1, KFAC's output factor of a one-output layer) is folded into the other side's
    preconditioner, so the step still divides by it; a non-positive scalar is a failed refresh.
    """

    keeps_scalars: ClassVar[bool] = True
    uses_workspace: ClassVar[bool] = True

    root: float | None = None
    damping: float = 1e-12
    damping_mode: Damping = Damping.ABSOLUTE
    damping_split: DampingSplit = DampingSplit.NONE
    retry_float64: bool = True
    compute_dtype: torch.dtype | str | None = AUTO

    def __post_init__(self) -> None:
        if self.root is not None and not self.root > 0:
            raise ValueError(f"Invalid root: {self.root!r} (must be positive)")
        if not self.damping >= 0:
            raise ValueError(f"Invalid damping: {self.damping!r}")
        object.__setattr__(self, "damping_mode", Damping(self.damping_mode))
        object.__setattr__(self, "damping_split", DampingSplit(self.damping_split))
        object.__setattr__(self, "compute_dtype", precision(self.compute_dtype))

    def init(self, layout: SideLayout, shape: tuple[int, int], like: Tensor) -> dict[str, Any]:
        stored = self.resolved_dtype(like.dtype) or like.dtype
        options = {"dtype": statistics_dtype(like.dtype), "device": like.device}
        state: dict[str, Any] = {}
        for key, size, side in zip(PRECONDITIONER_KEYS, shape, layout, strict=True):
            if side is Side.DENSE:
                state[key] = torch.eye(size, dtype=stored, device=like.device)
            elif side is Side.DIAGONAL:
                state[key] = torch.ones(size, **options)
        return state

    def _dampings(self, state: dict[str, Any], layout: SideLayout) -> tuple[float, float]:
        damping = self.damping
        if self.damping_split is DampingSplit.NONE or Side.NONE in layout or damping == 0:
            return damping, damping
        means = []
        for key in STATISTIC_KEYS:
            statistic = state[key]
            diagonal = statistic.diagonal() if statistic.ndim == 2 else statistic
            means.append(float(diagonal.mean()))
        return split_damping(damping, self.damping_split, means[0], means[1])

    def refresh(self, state: dict[str, Any], *, correction: float = 1.0) -> None:
        layout = layout_of(state)
        root = self.root or 2.0 * preconditioner_count(layout)
        dampings = self._dampings(state, layout)
        folded = 1.0
        for key, side, damping in zip(STATISTIC_KEYS, layout, dampings, strict=True):
            if side is Side.SCALAR:
                value = float(state[key]) + correction * damping
                if not (value > 0 and value < float("inf")):
                    raise DecompositionError(
                        f"scalar factor {value:.3g} is not positive: add damping"
                    )
                folded *= (correction / value) ** (1.0 / root)
        fresh: dict[str, Tensor] = {}
        for key, out, side, damping in zip(
            STATISTIC_KEYS, PRECONDITIONER_KEYS, layout, dampings, strict=True
        ):
            if side in (Side.DENSE, Side.DIAGONAL):
                fresh[out] = self._side_root(state[key], root, correction * damping)
        # (S/c + ε)^(-1/p) = c^(1/p) (S + cε)^(-1/p); a scalar side's inverse rides on the
        # first side that has a preconditioner.
        scales = {out: correction ** (1.0 / root) for out in fresh}
        if fresh:
            scales[next(iter(fresh))] *= folded
        for out, value in fresh.items():
            state[out].copy_(value.mul_(scales[out]) if scales[out] != 1.0 else value)

    def _side_root(self, statistic: Tensor, root: float, damping: float) -> Tensor:
        if statistic.ndim == 1:
            eigenvalues = matrix._damped_eigenvalues(statistic, damping, self.damping_mode)
            result = eigenvalues.pow(-1.0 / root)
            if not matrix.all_finite([result]):
                raise DecompositionError("diagonal inverse root is not finite")
            return result
        if root == 1.0:
            return matrix.damped_inverse(statistic, damping=damping, damping_mode=self.damping_mode)
        return matrix.inverse_root(
            statistic,
            root,
            damping=damping,
            damping_mode=self.damping_mode,
            retry_float64=self.retry_float64,
        )

    def apply(
        self,
        state: dict[str, Any],
        direction: Tensor,
        *,
        grad: Tensor,
        step: int,
        workspace: Workspace | None = None,
    ) -> Tensor:
        stored = self.resolved_dtype(direction.dtype) or direction.dtype
        left, right = (_stored_preconditioner(state, key, stored) for key in PRECONDITIONER_KEYS)
        return two_sided(left, direction, right, transpose=False, workspace=workspace)


class BasisRefresh(enum.StrEnum):
    r"""How :class:`EigenbasisAdam` recomputes its eigenbasis :math:`Q` of a statistic S.

    ``eigh``: the exact eigenvectors (:func:`~layerwise.optim.matrix.stable_eigenbasis`: inside a
    degenerate eigenspace, the basis closest to the previous one). ``power_qr``: one step of
    subspace (power) iteration from the previous basis, :math:`Q \leftarrow \operatorname{qr}(S
    Q)`, its columns first sorted by the estimated eigenvalues :math:`\operatorname{diag}(Q^\top
    S Q)` (and Adam's second moment permuted with them) — the refresh of Vyas et al.'s SOAP
    implementation: one product and a QR instead of an ``eigh``, tracking a slowly moving
    statistic; repeated on a fixed S it converges to the eigenbasis. Here R's diagonal is kept
    positive and the columns the power step leaves at round-off level stay closest to their
    previous selves (:func:`~layerwise.optim.matrix.power_qr_basis`). Either way the basis is a
    function of the statistics and the previous basis that round-off cannot decide. The first
    refresh of a state always uses ``eigh``.
    """

    EIGH = "eigh"
    POWER_QR = "power_qr"


@dataclass(frozen=True, kw_only=True)
class EigenbasisAdam(Transform):
    r"""Adam run in the eigenbasis :math:`Q_L, Q_R` of the statistics (SOAP, EKFAC).

    With :math:`\tilde G = Q_L^\top G Q_R` and :math:`\tilde M = Q_L^\top M Q_R`:

    .. math::  V \leftarrow \beta_2 V + (1 - \beta_2)\tilde G^{\odot 2}, \qquad
               X \mapsto Q_L \frac{\tilde M}{\sqrt{V / (1 - \beta_2^t)} + \epsilon} Q_R^\top.

    ``V`` is kept across basis refreshes unchanged (Vyas et al., 2024, keep it as well; with
    eigenvectors sorted by eigenvalue the coordinates roughly correspond). Diagonal and
    size-1 sides keep the identity basis; the statistics' scale (and bias correction) does not
    change an eigenbasis.

    ``first_moment_decay`` (:math:`\beta_1`, optional) declares that the direction given to
    :meth:`apply` is the bias-corrected EMA :math:`M_t / (1 - \beta_1^t)`,
    :math:`M_t = \beta_1 M_{t-1} + (1 - \beta_1) G_t`, of the gradients given with it (SOAP's
    first moment). :math:`\tilde M` is then kept in the state between refreshes and updated
    from :math:`\tilde G` by linearity (two products per step fewer; equal up to round-off),
    and recomputed from the direction after each refresh.

    ``basis_refresh``: see :class:`BasisRefresh`.

    Precision: ``compute_dtype`` applies to the rotation *back* out of the eigenbasis only.
    The rotation into it stays in the statistics' dtype, as do the moments and the division:
    Adam's per-coordinate normalization turns the round-off of a weak coordinate into a
    full-size step of random sign, and bf16 round-off (~4e-3 of the largest coordinates) would
    do so in every coordinate below that level — measured on a small MLP: bf16 rotations into
    the basis moved SOAP's and EKFAC's first four updates by 9–150 % (relative to float32), the
    rotation back alone by 0.2–0.4 %.
    """

    uses_workspace: ClassVar[bool] = True

    beta2: float = 0.95
    epsilon: float = 1e-8
    first_moment_decay: float | None = None
    basis_refresh: BasisRefresh = BasisRefresh.EIGH
    retry_float64: bool = True
    compute_dtype: torch.dtype | str | None = AUTO

    def __post_init__(self) -> None:
        object.__setattr__(self, "compute_dtype", precision(self.compute_dtype))
        object.__setattr__(self, "basis_refresh", BasisRefresh(self.basis_refresh))
        if not 0.0 <= self.beta2 < 1.0:
            raise ValueError(f"Invalid beta2: {self.beta2!r} (must be in [0, 1))")
        if not self.epsilon >= 0:
            raise ValueError(f"Invalid eps: {self.epsilon!r}")
        if self.first_moment_decay is not None and not 0.0 <= self.first_moment_decay < 1.0:
            raise ValueError(
                f"Invalid first_moment_decay: {self.first_moment_decay!r} (in [0, 1) or None)"
            )

    def init(self, layout: SideLayout, shape: tuple[int, int], like: Tensor) -> dict[str, Any]:
        options = {"dtype": statistics_dtype(like.dtype), "device": like.device}
        state: dict[str, Any] = {
            key: torch.eye(size, **options)
            for key, size, side in zip(PRECONDITIONER_KEYS, shape, layout, strict=True)
            if side is Side.DENSE
        }
        state[EIGENBASIS_EXP_AVG_SQ] = torch.zeros(shape, **options)
        return state

    def refresh(self, state: dict[str, Any], *, correction: float = 1.0) -> None:
        power_step = self.basis_refresh is BasisRefresh.POWER_QR and state.get(
            EIGENBASIS_READY, False
        )
        fresh: dict[str, Tensor] = {}
        orders: dict[int, Tensor] = {}
        for side, (key, out) in enumerate(zip(STATISTIC_KEYS, PRECONDITIONER_KEYS, strict=True)):
            statistic = state.get(key)
            if statistic is None or statistic.ndim != 2:
                continue
            # The previous basis (the identity before the first refresh) decides the basis
            # inside degenerate eigenspaces, which round-off would decide otherwise.
            if power_step:
                fresh[out], orders[side] = matrix.power_qr_basis(statistic, state[out])
            else:
                fresh[out] = matrix.stable_eigenbasis(
                    statistic, state[out], retry_float64=self.retry_float64
                )
        for out, value in fresh.items():
            state[out].copy_(value)
        # The second moment follows its coordinates when a power step reorders them; a first
        # moment kept in the eigenbasis belongs to the old basis.
        for side, order in orders.items():
            exp_avg_sq: Tensor = state[EIGENBASIS_EXP_AVG_SQ]
            exp_avg_sq.copy_(exp_avg_sq.index_select(side, order))
        state.pop(EIGENBASIS_EXP_AVG, None)
        state[EIGENBASIS_READY] = True

    def refreshed_keys(self, state: dict[str, Any]) -> list[str]:
        # Only a power-QR refresh reorders the second moment; after an eigh refresh it is the
        # same on every rank as before, and a third of the split's broadcast is saved.
        keys = super().refreshed_keys(state)
        if self.basis_refresh is BasisRefresh.POWER_QR:
            keys.append(EIGENBASIS_EXP_AVG_SQ)
        return keys

    def adopt_refresh(self, state: dict[str, Any]) -> None:
        state.pop(EIGENBASIS_EXP_AVG, None)
        state[EIGENBASIS_READY] = True

    def apply(
        self,
        state: dict[str, Any],
        direction: Tensor,
        *,
        grad: Tensor,
        step: int,
        workspace: Workspace | None = None,
    ) -> Tensor:
        left, right = (state.get(key) for key in PRECONDITIONER_KEYS)
        exp_avg_sq: Tensor = state[EIGENBASIS_EXP_AVG_SQ]
        result_dtype = direction.dtype
        # Low-precision parameters rotate and normalize in the moments' precision.
        grad, direction = grad.to(exp_avg_sq.dtype), direction.to(exp_avg_sq.dtype)
        rotated_grad = two_sided(left, grad, right, transpose=True, workspace=workspace)
        exp_avg_sq.mul_(self.beta2).addcmul_(rotated_grad, rotated_grad, value=1.0 - self.beta2)
        bias_correction = 1.0 - self.beta2**step
        denominator = (exp_avg_sq / bias_correction).sqrt_().add_(self.epsilon)
        beta1 = self.first_moment_decay
        if beta1 is None or (left is None and right is None):
            rotated = two_sided(left, direction, right, transpose=True, workspace=workspace)
        else:
            rotated = self._rotated_first_moment(
                state, left, right, direction, rotated_grad, beta1, step
            )
        dtype = self.resolved_dtype(result_dtype)
        result = two_sided(
            _in_dtype(left, dtype),
            rotated / denominator,
            _in_dtype(right, dtype),
            transpose=False,
            workspace=workspace,
        )
        return result.to(result_dtype)

    @staticmethod
    def _rotated_first_moment(
        state: dict[str, Any],
        left: Tensor | None,
        right: Tensor | None,
        direction: Tensor,
        rotated_grad: Tensor,
        beta1: float,
        step: int,
    ) -> Tensor:
        r""":math:`Q_L^\top \hat M Q_R` from the first moment kept in the eigenbasis; after a
        refresh it is rotated from ``direction`` once."""
        if beta1 == 0.0:
            return rotated_grad
        correction = 1.0 - beta1**step
        kept = state.get(EIGENBASIS_EXP_AVG)
        if kept is None:
            kept = two_sided(left, direction, right, transpose=True).mul_(correction)
            state[EIGENBASIS_EXP_AVG] = kept
        else:
            kept.lerp_(rotated_grad, 1.0 - beta1)
        return kept / correction


def _in_dtype(factor: Tensor | None, dtype: torch.dtype | None) -> Tensor | None:
    if factor is None or factor.ndim < 2 or dtype is None:
        return factor
    return factor.to(dtype)


class PolarMethod(enum.StrEnum):
    SVD = "svd"
    NEWTON_SCHULZ = "newton_schulz"


@dataclass(frozen=True, kw_only=True)
class Orthogonalize(Transform):
    r"""Apply :math:`X \mapsto \operatorname{polar}(X) = U V^\top` (Muon); no statistics.

    ``method``: exact SVD, or a Newton–Schulz iteration with the given coefficients and steps
    (:func:`~layerwise.optim.matrix.newton_schulz_polar`), in ``compute_dtype``. Newton–Schulz
    directions of one param group are orthogonalized together: same-shape matrices are stacked
    so that each product is one batched matmul (several times faster in bf16 on CPUs).
    """

    uses_statistics: ClassVar[bool] = False
    batches: ClassVar[bool] = True

    method: PolarMethod = PolarMethod.NEWTON_SCHULZ
    coefficients: tuple[float, float, float] = matrix.NEWTON_SCHULZ_QUINTIC
    steps: int = 5
    compute_dtype: torch.dtype | str | None = AUTO

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", PolarMethod(self.method))
        object.__setattr__(self, "coefficients", tuple(self.coefficients))
        if len(self.coefficients) != 3:
            raise ValueError(f"Invalid ns_coefficients: {self.coefficients!r} (three numbers)")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"Invalid ns_steps: {self.steps!r} (an integer >= 1)")
        object.__setattr__(self, "compute_dtype", precision(self.compute_dtype, knob="ns_dtype"))

    def init(self, layout: SideLayout, shape: tuple[int, int], like: Tensor) -> dict[str, Any]:
        return {}

    def apply(self, state: dict[str, Any], direction: Tensor, *, grad: Tensor, step: int) -> Tensor:
        if self.method is PolarMethod.SVD:
            try:
                return matrix.polar_svd(direction)
            except DecompositionError as error:
                # Counted like a failed refresh; the cubic Newton–Schulz iteration converges
                # to the same polar factor.
                state[FAILED_REFRESHES] = state.get(FAILED_REFRESHES, 0) + 1
                warnings.warn(
                    f"{error}; the polar factor comes from Newton–Schulz this step",
                    RuntimeWarning,
                    stacklevel=4,
                )
                return matrix.newton_schulz_polar(
                    direction, coefficients=matrix.NEWTON_SCHULZ_CUBIC, steps=30
                )
        return matrix.newton_schulz_polar(
            direction,
            coefficients=self.coefficients,
            steps=self.steps,
            compute_dtype=self.resolved_dtype(direction.dtype),
        )

    def apply_batched(
        self,
        states: list[dict[str, Any]],
        directions: list[Tensor],
        grads: list[Tensor],
        steps: list[int],
        workspace: Workspace | None = None,
    ) -> list[Tensor]:
        """Matrices of one shape, dtype and device are stacked and orthogonalized as one batch.
        Equal to per-block :meth:`apply` up to round-off, but the results stay in the compute
        dtype: the caller adds them to parameters of their own dtype (no extra cast pass)."""
        if self.method is PolarMethod.SVD:
            return super().apply_batched(states, directions, grads, steps, workspace)
        scratch = workspace if workspace is not None else Workspace()
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, direction in enumerate(directions):
            key = (tuple(direction.shape), direction.dtype, direction.device)
            groups.setdefault(key, []).append(index)
        results: list[Tensor | None] = [None] * len(directions)
        for indices in groups.values():
            first = directions[indices[0]]
            compute_dtype = self.resolved_dtype(first.dtype)
            if len(indices) == 1:
                batch = first.to(compute_dtype) if compute_dtype is not None else first
            else:
                # Stacked straight into the compute dtype: one pass per matrix.
                batch = scratch.empty(
                    "stack",
                    (len(indices), *first.shape),
                    dtype=compute_dtype or first.dtype,
                    device=first.device,
                )
                for position, i in enumerate(indices):
                    batch[position].copy_(directions[i])
            polar = matrix.newton_schulz_polar(
                batch, coefficients=self.coefficients, steps=self.steps, workspace=scratch
            )
            for position, i in enumerate(indices):
                results[i] = polar[position] if len(indices) > 1 else polar
        return results  # type: ignore[return-value]
