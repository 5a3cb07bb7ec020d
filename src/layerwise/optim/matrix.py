r"""Symmetric matrix functions shared by every optimizer of :mod:`layerwise.optim`.

Free functions on tensors: no optimizer state, no logging policy. Each works in float32 and
float64; the eigendecompositions retry in float64 when the working precision fails.

Damping convention (used everywhere in the package)
---------------------------------------------------
For a symmetric positive semi-definite factor :math:`A = Q \operatorname{diag}(\lambda) Q^\top`,
damping is added to the eigenvalues *before* the root:

.. math::
    (A + \epsilon I)^{-1/p}
    = Q \operatorname{diag}\big((\max(\lambda, 0) + \epsilon)^{-1/p}\big) Q^\top,

with :math:`\epsilon = \text{damping}` (``Damping.ABSOLUTE``) or
:math:`\epsilon = \text{damping}\cdot\lambda_{\max}` (``Damping.RELATIVE``, scale-free). Negative
eigenvalues, which only arise from round-off for a PSD factor, are clipped to zero first.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "NEWTON_SCHULZ_CUBIC",
    "NEWTON_SCHULZ_QUINTIC",
    "Damping",
    "DecompositionError",
    "all_finite",
    "damped_inverse",
    "eigh_with_retry",
    "inverse_root",
    "newton_schulz_polar",
    "polar_svd",
    "symmetric_eigenbasis",
]


class Damping(enum.StrEnum):
    """How the damping constant is added to the eigenvalues (see the module docstring)."""

    ABSOLUTE = "absolute"
    RELATIVE = "relative"


class DecompositionError(RuntimeError):
    """A decomposition failed in every precision it was tried in, or returned non-finite values."""


def all_finite(tensors: Sequence[Tensor]) -> bool:
    """Whether every entry of every tensor is finite, with one synchronization for the list.

    A tensor is finite iff its minimum and maximum are (NaN propagates through both, -inf is
    the minimum, +inf the maximum): one vectorized pass per tensor, about ten times faster on
    a CPU than ``isfinite().all()``.
    """
    extremes = [value for t in tensors if t.numel() for value in torch.aminmax(t)]
    return not extremes or bool(torch.stack(extremes).isfinite().all())


def eigh_with_retry(a: Tensor, *, retry_float64: bool = True) -> tuple[Tensor, Tensor]:
    r"""Eigendecomposition :math:`A = Q \operatorname{diag}(\lambda) Q^\top` of symmetric ``a``.

    Computed in ``a.dtype``; if that raises :class:`torch.linalg.LinAlgError` or returns
    non-finite values and ``retry_float64`` is set, it is recomputed in float64. The result is
    returned in ``a.dtype``, eigenvalues ascending. Raises :class:`DecompositionError` when no
    attempt succeeds (including a non-finite input, which no precision can repair).
    """
    if not all_finite([a]):
        raise DecompositionError("input matrix has non-finite entries")
    attempts = [a.dtype]
    if retry_float64 and a.dtype != torch.float64:
        attempts.append(torch.float64)
    last_error: Exception | None = None
    for dtype in attempts:
        try:
            eigenvalues, eigenvectors = torch.linalg.eigh(a.to(dtype))
        except torch.linalg.LinAlgError as error:
            last_error = error
            continue
        if all_finite([eigenvalues, eigenvectors]):
            return eigenvalues.to(a.dtype), eigenvectors.to(a.dtype)
        last_error = DecompositionError(f"eigh in {dtype} returned non-finite values")
    raise DecompositionError(f"eigh failed in {[str(d) for d in attempts]}") from last_error


def _damped_eigenvalues(eigenvalues: Tensor, damping: float, mode: Damping) -> Tensor:
    eigenvalues = eigenvalues.clamp(min=0)
    match Damping(mode):
        case Damping.ABSOLUTE:
            epsilon = damping
        case Damping.RELATIVE:
            epsilon = damping * float(eigenvalues.max()) if eigenvalues.numel() else 0.0
        case other:  # pragma: no cover - StrEnum already refuses unknown values
            raise ValueError(f"unknown damping mode {other!r}")
    return eigenvalues + epsilon


def inverse_root(
    a: Tensor,
    p: float,
    *,
    damping: float = 0.0,
    damping_mode: Damping | str = Damping.ABSOLUTE,
    retry_float64: bool = True,
) -> Tensor:
    r"""Return :math:`(A + \epsilon I)^{-1/p}` for a symmetric PSD ``a`` of shape ``(d, d)``.

    ``p`` is the root order (``p = 1``: the damped inverse, KFAC; ``p = 4``: Shampoo's
    two-sided root). Damping follows the module convention. A zero eigenvalue with zero damping
    gives ``inf`` entries, which are reported as :class:`DecompositionError` rather than returned.

    Ref: Gupta, Koren & Singer, "Shampoo", ICML 2018; Martens & Grosse, "KFAC", ICML 2015.

    >>> inverse_root(torch.diag(torch.tensor([16.0, 1.0])), 4)
    tensor([[0.5000, 0.0000],
            [0.0000, 1.0000]])
    """
    if p <= 0:
        raise ValueError(f"root order p must be positive, got {p}")
    eigenvalues, eigenvectors = eigh_with_retry(a, retry_float64=retry_float64)
    scaled = _damped_eigenvalues(eigenvalues, damping, Damping(damping_mode)).pow(-1.0 / p)
    if not all_finite([scaled]):
        raise DecompositionError(
            "inverse root of a singular matrix: add damping (smallest damped eigenvalue "
            f"{float(_damped_eigenvalues(eigenvalues, damping, Damping(damping_mode)).min()):.3g})"
        )
    return (eigenvectors * scaled) @ eigenvectors.mT


def damped_inverse(
    a: Tensor,
    *,
    damping: float = 0.0,
    damping_mode: Damping | str = Damping.ABSOLUTE,
) -> Tensor:
    r"""Return :math:`(A + \epsilon I)^{-1}` by Cholesky, falling back to :func:`inverse_root`.

    Cholesky is several times cheaper than ``eigh`` and is all an inverse needs (KFAC). When
    the damped factor is not numerically positive definite the eigendecomposition path (which
    clips negative round-off eigenvalues) takes over, with its float64 retry. The inverse is
    formed by two triangular solves against the identity: LAPACK's ``potri``
    (``torch.cholesky_inverse``) was measured 3 to 150 times slower with two threads on a CPU
    shared with other processes; the solves cost about twice ``potri``'s best time, steadily.
    """
    if not all_finite([a]):
        raise DecompositionError("input matrix has non-finite entries")
    mode = Damping(damping_mode)
    if mode is Damping.ABSOLUTE:
        epsilon = damping
    else:
        epsilon = damping * float(torch.linalg.matrix_norm(a, ord=2))
    damped = a.clone()
    damped.diagonal().add_(epsilon)
    factor, info = torch.linalg.cholesky_ex(damped)
    if int(info) == 0:
        identity = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        inverse = torch.cholesky_solve(identity, factor)
        if all_finite([inverse]):
            # LAPACK leaves it column-major; the transpose of a symmetric result is the same
            # matrix in row-major order, which later copies and products read ~5x faster.
            return inverse.mT if inverse.mT.is_contiguous() else inverse
    return inverse_root(a, 1.0, damping=damping, damping_mode=mode)


def symmetric_eigenbasis(a: Tensor, *, retry_float64: bool = True) -> Tensor:
    r"""Orthonormal eigenvectors ``Q`` of symmetric ``a`` (columns, eigenvalues descending).

    Descending order keeps the leading directions first, which is the order SOAP / EKFAC
    second-moment estimates are kept in between refreshes.
    """
    _, eigenvectors = eigh_with_retry(a, retry_float64=retry_float64)
    return eigenvectors.flip(-1)


def polar_svd(m: Tensor) -> Tensor:
    r"""The polar factor :math:`U_r V_r^\top` of ``m = U S V^\top`` by an exact (reduced) SVD,
    on the numerical range of ``m``: singular vectors whose singular value is below
    :math:`\max(m, n)\, \epsilon\, \sigma_{\max}` (the numerical rank's threshold, as
    ``torch.linalg.matrix_rank``) are dropped, so the null space maps to zero and a zero matrix
    to zero (a rank-1 gradient gives a rank-1 factor, not an arbitrary completion).

    Lower precisions are computed in float32 (no bf16 / fp16 SVD kernels). Raises
    :class:`DecompositionError` when the SVD fails.
    """
    work = m if m.dtype.itemsize >= 4 else m.float()
    try:
        u, s, vh = torch.linalg.svd(work, full_matrices=False)
    except torch.linalg.LinAlgError as error:
        raise DecompositionError(f"SVD failed: {error}") from error
    tolerance = max(m.shape[-2:]) * torch.finfo(work.dtype).eps * s.amax(dim=-1, keepdim=True)
    kept = (s > tolerance).to(work.dtype)
    return ((u * kept.unsqueeze(-2)) @ vh).to(m.dtype)


#: Quintic Newton–Schulz coefficients (a, b, c) of Jordan et al.'s Muon (2024): chosen to push
#: singular values in (0, 1] to roughly [0.7, 1.2] in 5 steps rather than to converge exactly.
NEWTON_SCHULZ_QUINTIC: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)

#: The classical cubic iteration X <- 1.5 X - 0.5 X Xᵀ X, written as quintic coefficients; it
#: converges to the exact polar factor (quadratically near it) for singular values in (0, √3).
NEWTON_SCHULZ_CUBIC: tuple[float, float, float] = (1.5, -0.5, 0.0)


def newton_schulz_polar(
    m: Tensor,
    *,
    coefficients: tuple[float, float, float] = NEWTON_SCHULZ_QUINTIC,
    steps: int = 5,
    epsilon: float = 1e-7,
    compute_dtype: torch.dtype | None = None,
    workspace: Workspace | None = None,
) -> Tensor:
    r"""Approximate the polar factor :math:`U V^\top` of ``m`` by a Newton–Schulz iteration.

    With :math:`X_0 = M / (\|M\|_F + \epsilon)` (all singular values in (0, 1]) and
    coefficients (a, b, c):

    .. math::  A = X X^\top, \qquad X \leftarrow a X + (b A + c A^2) X,

    run on the wide orientation (fewer rows than columns) so the Gram matrix is the small one.
    With :data:`NEWTON_SCHULZ_CUBIC` and enough steps this converges to the exact polar factor;
    with the default quintic coefficients it stops at singular values in roughly [0.7, 1.2]
    (good enough for Muon, cheaper). Works in ``m.dtype``, or with ``compute_dtype`` (e.g.
    ``torch.bfloat16``, as Jordan et al.'s and torch's Muon do) ``m`` is cast first and the
    normalization and iteration run in that precision (a bf16 norm is off by ~2^-8, which
    only rescales the singular values the iteration maps towards 1); the result is returned
    in ``m.dtype``. With a ``workspace`` the iteration's buffers are reused from call to call
    (the result is one of them: read it before the next call with the same workspace).
    """
    if steps < 1:
        raise ValueError(f"Newton–Schulz steps must be >= 1, got {steps}")
    scratch = workspace if workspace is not None else Workspace()
    a, b, c = coefficients
    transposed = m.shape[-2] > m.shape[-1]
    x = m.mT if transposed else m
    if compute_dtype is not None:
        x = x.to(compute_dtype)
    # Cast first, then normalize: one pass over the low-precision copy instead of two over m.
    # The result goes to a contiguous buffer (x may be a transposed view): products written
    # ``out=`` into a non-contiguous tensor take a slow path (measured 100x for baddbmm).
    norm = torch.linalg.matrix_norm(x, keepdim=True) + epsilon
    x = torch.div(x, norm, out=scratch.get("ns_x", x.shape, x))
    # Buffers allocated once and reused across the iterations: without ``out=`` every fused
    # product first copies its addend into a fresh tensor (measured ~15 % of Muon's step).
    gram = scratch.get("ns_gram", (*x.shape[:-1], x.shape[-2]), x)
    polynomial = scratch.get("ns_polynomial", gram.shape, x)
    following = scratch.get("ns_following", x.shape, x)
    for _ in range(steps):
        torch.matmul(x, x.mT, out=gram)
        # b A + c A², then a X + (b A + c A²) X: the scalings ride on the products (BLAS
        # alpha/beta) instead of costing four extra passes over the matrices.
        _multiply_add(gram, gram, gram, beta=b, alpha=c, out=polynomial)
        _multiply_add(x, polynomial, x, beta=a, out=following)
        x, following = following, x
    x = x.to(m.dtype)
    return x.mT if transposed else x


class Workspace:
    """Scratch tensors kept from one call to the next, by name, shape, dtype and device.

    Fresh large tensors cost page faults on first touch (glibc hands them out as new mappings):
    measured 15–18 % of Muon's step at width 1024 on a CPU, which reusing its Newton–Schulz
    buffers removes. A workspace belongs to one caller (an optimizer's param group); results
    that live in it must be consumed before its next use.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[object, ...], Tensor] = {}

    def get(self, name: str, shape: Sequence[int], like: Tensor) -> Tensor:
        """An uninitialized tensor of ``shape`` with ``like``'s dtype and device."""
        return self.empty(name, shape, dtype=like.dtype, device=like.device)

    def empty(
        self, name: str, shape: Sequence[int], *, dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """An uninitialized tensor of ``shape``, ``dtype`` and ``device``."""
        key = (name, tuple(shape), dtype, device)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = torch.empty(tuple(shape), dtype=dtype, device=device)
        return buffer


def _multiply_add(
    c: Tensor, a: Tensor, b: Tensor, *, beta: float, alpha: float = 1.0, out: Tensor
) -> Tensor:
    """``out = beta * c + alpha * (a @ b)`` in one BLAS call where torch has one (2-D, 3-D)."""
    if c.ndim == 2:
        return torch.addmm(c, a, b, beta=beta, alpha=alpha, out=out)
    if c.ndim == 3:
        return torch.baddbmm(c, a, b, beta=beta, alpha=alpha, out=out)
    return torch.add(c * beta, a @ b, alpha=alpha, out=out)
