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
import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "CLUSTER_TOLERANCE",
    "NEWTON_SCHULZ_CUBIC",
    "NEWTON_SCHULZ_QUINTIC",
    "Damping",
    "DecompositionError",
    "all_finite",
    "closest_subspace_basis",
    "damped_inverse",
    "eigenvalue_clusters",
    "eigh_with_retry",
    "inverse_root",
    "newton_schulz_polar",
    "polar_svd",
    "positive_qr",
    "power_qr_basis",
    "stable_eigenbasis",
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


#: Consecutive eigenvalues of an ``(n, n)`` symmetric matrix closer than
#: ``CLUSTER_TOLERANCE · √n · eps · max|λ|`` are one cluster for :func:`stable_eigenbasis` (eps of
#: the working dtype; √n: the typical growth of a Householder eigensolver's backward error). The
#: eigenvalues that are zero in exact arithmetic (rank-deficient statistics) come out of
#: ``eigh`` within 1.6 ``eps · max|λ|`` of zero on EMAs of random low-rank products (float32 and
#: float64, n = 16 to 1024) and within 9.6 on SOAP's statistics of a tanh MLP (float64, n = 16),
#: while distinct eigenvalues were seen as close as 92 ``eps · max|λ|`` (EKFAC's factor of a
#: float32 MLP, n = 16): 8 · √16 = 32 sits between the two, ~3x from either. Within a cluster
#: the eigenvectors are mixed, so the basis diagonalizes ``A`` up to the cluster's width.
CLUSTER_TOLERANCE = 8.0


def eigenvalue_clusters(eigenvalues: Tensor, *, tolerance: float) -> list[tuple[int, int]]:
    r"""The runs ``[start, stop)`` of sorted (ascending or descending) ``eigenvalues`` whose
    consecutive gaps are all at most ``tolerance``: single-linkage clusters, in order, clusters
    of one included. One vectorized pass over the gaps.

    >>> eigenvalue_clusters(torch.tensor([3.0, 1.0, 1.0, 0.0]), tolerance=1e-12)
    [(0, 1), (1, 3), (3, 4)]
    """
    n = eigenvalues.shape[-1]
    if n == 0:
        return []
    gaps = (eigenvalues[1:] - eigenvalues[:-1]).abs()
    starts = [0, *(torch.nonzero(gaps > tolerance).flatten() + 1).tolist(), n]
    return list(itertools.pairwise(starts))


def _rank_floor(dtype: torch.dtype) -> float:
    """Overlaps (cosines) at most this are treated as zero: a Procrustes rotation on an overlap
    ``σ`` moves by ``δ/σ`` for a subspace perturbed by ``δ``, so below ``√eps`` it would amplify
    round-off to more than ``√eps``; exact structure (a zero overlap) lands far below it."""
    return torch.finfo(dtype).eps ** 0.5


def _gram_schmidt_in_order(columns: Tensor) -> Tensor:
    r"""An orthonormal basis (columns) of :math:`\mathbb{R}^d` from the ``(d, m)`` ``columns``
    taken in order by Gram–Schmidt, a column kept when its residual's squared norm exceeds
    :math:`1/(2m)`.

    The columns are the coordinates, in an orthonormal basis of a d-dimensional subspace T, of
    the projections onto T of m orthonormal vectors spanning a space that contains T, so their
    squared norms sum to d. Hence while a subspace T' of T of dimension d' >= 1 is left, some
    projection onto it has squared norm >= d'/m >= 1/m, and as residuals only shrink as the
    kept set grows, the first such column was kept when it came: one pass finds all d.

    The residual norms of all columns are kept up to date (one product per kept column), so
    the next kept column is found in one vectorized search: O(d² m), d searches.
    """
    d, m = columns.shape
    kept = columns.new_zeros(d, 0)
    threshold = 0.5 / m
    remaining = columns.square().sum(dim=0)  # squared residual norms, updated as columns join
    start = 0
    while kept.shape[-1] < d:
        above = torch.nonzero(remaining[start:] > threshold).flatten()
        if above.numel() == 0:
            raise DecompositionError(f"canonical basis: found {kept.shape[-1]} of {d} directions")
        index = start + int(above[0])
        residual = columns[:, index]
        for _ in range(2):  # "twice is enough" (Kahan–Parlett) for orthogonality to round-off
            residual = residual - kept @ (kept.mT @ residual)
        direction = residual / residual.norm()
        kept = torch.cat([kept, direction.unsqueeze(-1)], dim=-1)
        remaining = remaining - (direction @ columns).square()
        start = index + 1
    return kept


def _canonical_signs(vectors: Tensor, candidates: Tensor) -> Tensor:
    """:func:`closest_subspace_basis` for single vectors orthogonal to their target, all at
    once: each vector's sign makes its overlap with the first of the ``candidates`` columns
    whose squared overlap exceeds 1/(2n) positive (:func:`_gram_schmidt_in_order` with d = 1)."""
    overlaps = vectors.mT @ candidates  # (s, n)
    first = (overlaps.square() > 0.5 / candidates.shape[-1]).to(torch.int8).argmax(dim=-1)
    chosen = overlaps.gather(-1, first.unsqueeze(-1)).squeeze(-1)
    return vectors * torch.where(chosen < 0, -1.0, 1.0).to(vectors.dtype)


def _closest_by_complement(complement: Tensor, target: Tensor) -> Tensor | None:
    r""":math:`\operatorname{polar}(P_S T)` for orthonormal T ``(n, k)`` from an orthonormal
    basis C ``(n, r)`` of :math:`S^\perp`: with :math:`B = C^\top T`, :math:`X = P_S T = T - C B`
    and :math:`X^\top X = I - B^\top B`, and :math:`B B^\top = U \Lambda U^\top` (r x r),

    .. math::  \operatorname{polar}(X) = X (I - B^\top B)^{-1/2}
               = X + X B^\top U f(\Lambda) U^\top B, \qquad
               f(\lambda) = \frac{(1 - \lambda)^{-1/2} - 1}{\lambda}

    (:math:`f(0) = 1/2`; a power series in :math:`B^\top B`, so it is smooth in B and needs no
    SVD): an r x r ``eigh`` and products of O(n k r). ``None`` (use the k x k SVD) when
    :math:`1 - \lambda_{\max}`, the overlap's smallest squared singular value, is within
    :math:`\sqrt{\epsilon}` of zero, where forming it loses the digits the rank decision needs."""
    if complement.shape[-1] == 0:  # S is the whole space: T is its own closest basis
        return target.clone()
    overlap = complement.mT @ target
    try:
        eigenvalues, eigenvectors = torch.linalg.eigh(overlap @ overlap.mT)
    except torch.linalg.LinAlgError:
        return None
    eigenvalues = eigenvalues.clamp(min=0.0)
    if float(1.0 - eigenvalues.max()) <= torch.finfo(target.dtype).eps ** 0.5:
        return None
    # f(λ) = expm1(-log1p(-λ) / 2) / λ, accurate for small λ; f(0) = 1/2.
    small = eigenvalues < torch.finfo(target.dtype).eps
    safe = torch.where(small, 1.0, eigenvalues)
    weights = torch.where(small, 0.5, torch.expm1(-0.5 * torch.log1p(-safe)) / safe)
    projected = target - complement @ overlap
    correction = ((projected @ overlap.mT) @ eigenvectors) * weights
    return projected + (correction @ eigenvectors.mT) @ overlap


def closest_subspace_basis(
    basis: Tensor,
    target: Tensor,
    *,
    candidates: Tensor | None = None,
    complement: Tensor | None = None,
) -> Tensor:
    r"""The orthonormal basis of :math:`S = \operatorname{range}(Q)` closest to ``target``.

    ``basis`` Q ``(n, k)`` has orthonormal columns, ``target`` T ``(n, k)`` is any matrix. Over
    the bases QW of S (W orthogonal, ``(k, k)``),

    .. math::
        \min_W \|QW - T\|_F^2 = \min_W \big(2k - 2\operatorname{tr}(W^\top Q^\top T)\big)
        \quad\text{is reached at}\quad W = U V^\top, \quad Q^\top T = U \Sigma V^\top

    (orthogonal Procrustes, Schönemann 1966). The result :math:`QUV^\top =
    \operatorname{polar}(P_S T)` depends on S and T only, not on which basis Q of S was given:
    a deterministic function of the subspace, smooth where :math:`Q^\top T` is nonsingular.

    Where singular values of :math:`Q^\top T` are at most :math:`\sqrt{\epsilon}` (a target
    direction orthogonal to S, as in exactly block-structured matrices), W is not determined on
    their singular subspaces :math:`U_0` (of S, in Q's coordinates) and :math:`V_0` (of the k
    column slots). They are paired canonically: Gram–Schmidt in order of the projections onto
    :math:`\operatorname{span}(QU_0)` of the columns of ``candidates`` (an orthonormal
    ``(n, n)``; default the identity) gives :math:`t_1, t_2, \dots`; that of the slots' unit
    vectors onto :math:`\operatorname{span}(V_0)` gives :math:`v_1, v_2, \dots`; and
    :math:`W = U_r V_r^\top + \sum_i (Q^\top t_i) v_i^\top` (see
    :func:`_gram_schmidt_in_order`).

    ``complement`` (optional, ``(n, r)``, orthonormal columns spanning :math:`S^\perp`; then
    ``target`` must have orthonormal columns too): for a large subspace (r < k, the zero
    eigenspace of a statistic of low rank r) the same polar factor costs O(n k r) instead of a
    k x k SVD (:func:`_closest_by_complement`).
    """
    n, k = basis.shape
    if complement is not None and complement.shape[-1] < k:
        closest = _closest_by_complement(complement, target)
        if closest is not None:
            return closest
    overlap = basis.mT @ target
    try:
        u, singular_values, vh = torch.linalg.svd(overlap)
    except torch.linalg.LinAlgError as error:
        raise DecompositionError(f"SVD of the basis overlap failed: {error}") from error
    rank = int((singular_values > _rank_floor(basis.dtype)).sum())
    rotation = u[:, :rank] @ vh[:rank]
    if rank < k:
        left, slots = u[:, rank:], vh[rank:].mT  # orthonormal bases of U_0 and V_0
        if candidates is None:
            candidates = torch.eye(n, dtype=basis.dtype, device=basis.device)
        in_subspace = left @ _gram_schmidt_in_order(left.mT @ (basis.mT @ candidates))
        in_slots = slots @ _gram_schmidt_in_order(slots.mT)
        rotation = rotation + in_subspace @ in_slots.mT
    return basis @ rotation


def stable_eigenbasis(
    a: Tensor,
    reference: Tensor | None = None,
    *,
    retry_float64: bool = True,
    cluster_tolerance: float = CLUSTER_TOLERANCE,
) -> Tensor:
    r"""Eigenvectors ``Q`` of symmetric ``a`` (columns, eigenvalues descending) that round-off
    cannot choose: inside a (near-)degenerate eigenspace, the basis closest to ``reference``.

    ``eigh`` determines an eigenvector only up to sign, and inside an eigenspace of dimension
    k > 1 (a zero eigenvalue of multiplicity k, as rank-deficient statistics have early in
    training) only the subspace: which basis of it comes back is decided by round-off, so a
    perturbation of ``a`` by one ulp can rotate it arbitrarily. Here:

    1. ``eigh`` (:func:`eigh_with_retry`), eigenvalues sorted descending;
    2. clusters (:func:`eigenvalue_clusters`): consecutive eigenvalues whose gap is at most
       ``cluster_tolerance · √n · eps · max|λ|`` (:data:`CLUSTER_TOLERANCE`);
    3. in a cluster ``c`` of size > 1 the columns become the orthonormal basis of the same
       subspace closest to the reference columns :math:`R_c` (:func:`closest_subspace_basis`,
       :math:`Q_c \operatorname{polar}(Q_c^\top R_c)`); a single eigenvector takes the sign of
       positive overlap :math:`q^\top r \ge 0` (the same rule for k = 1), or, when
       :math:`|q^\top r| \le \sqrt{\epsilon}`, the canonical completion of that function.

    ``reference`` (``(n, n)``, orthonormal columns) defaults to the identity; SOAP passes its
    previous basis, so a refresh moves the coordinates of its second moment as little as the
    new eigenspaces allow. The result is a function of the eigenspaces and the reference only:
    perturbing ``a`` by δ moves it by :math:`O(\delta / \text{gap})` (gaps between clusters)
    instead of O(1). Well-separated eigenvectors are left as ``eigh`` returns them, up to sign.
    After the ``eigh`` it costs one pass over the eigenvectors (the signs), and per cluster of
    size k an SVD of :math:`k \times k` and a product :math:`n \times k \times k`, or, for a
    cluster larger than the rest (the null space of a statistic of rank r = n - k), products
    of O(n k r) and an r x r ``eigh``.

    >>> q = stable_eigenbasis(torch.diag(torch.tensor([0.0, 2.0, 0.0], dtype=torch.float64)))
    >>> q
    tensor([[0., 1., 0.],
            [1., 0., 0.],
            [0., 0., 1.]], dtype=torch.float64)
    """
    eigenvalues, eigenvectors = eigh_with_retry(a, retry_float64=retry_float64)
    eigenvalues, eigenvectors = eigenvalues.flip(-1), eigenvectors.flip(-1)
    n = eigenvectors.shape[-1]
    if n == 0:
        return eigenvectors.contiguous()
    if reference is None:
        reference = torch.eye(n, dtype=eigenvectors.dtype, device=eigenvectors.device)
    reference = reference.to(eigenvectors.dtype)
    overlaps = (eigenvectors * reference).sum(dim=0)
    eigenvectors = eigenvectors * torch.where(overlaps < 0, -1.0, 1.0).to(eigenvectors.dtype)
    scale = float(eigenvalues.abs().max())
    tolerance = cluster_tolerance * n**0.5 * torch.finfo(eigenvalues.dtype).eps * scale
    orthogonal = overlaps.abs() <= _rank_floor(a.dtype)
    clusters = eigenvalue_clusters(eigenvalues, tolerance=tolerance)
    singletons = torch.tensor([start for start, stop in clusters if stop - start == 1])
    if singletons.numel():
        singletons = singletons.to(a.device)
        lone = singletons[orthogonal[singletons]]
        if lone.numel():
            eigenvectors[:, lone] = _canonical_signs(eigenvectors[:, lone], reference)
    for start, stop in clusters:
        size = stop - start
        if size == 1:
            continue
        complement = None
        if n - size < size:  # a large (null) cluster: the product with its complement is cheaper
            complement = torch.cat([eigenvectors[:, :start], eigenvectors[:, stop:]], dim=-1)
        eigenvectors[:, start:stop] = closest_subspace_basis(
            eigenvectors[:, start:stop],
            reference[:, start:stop],
            candidates=reference,
            complement=complement,
        )
    return eigenvectors


def positive_qr(m: Tensor) -> tuple[Tensor, Tensor]:
    r"""``m = QR`` with the diagonal of R non-negative: for m of full column rank the unique QR
    factorization, a smooth function of m (LAPACK's Householder QR leaves the signs to
    round-off)."""
    try:
        q, r = torch.linalg.qr(m)
    except torch.linalg.LinAlgError as error:
        raise DecompositionError(f"QR failed: {error}") from error
    signs = torch.where(r.diagonal(dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(r.dtype)
    return q * signs.unsqueeze(-2), r * signs.unsqueeze(-1)


def _tolerant_descending_order(values: Tensor, *, tolerance: float) -> Tensor:
    """The permutation sorting ``values`` descending, with the values of one cluster (runs of
    gaps at most ``tolerance`` among the sorted values) left in their given order."""
    rough = torch.argsort(values, descending=True)
    gaps = values[rough[:-1]] - values[rough[1:]]
    cluster_of_sorted = torch.cat(
        [gaps.new_zeros(1, dtype=torch.long), (gaps > tolerance).cumsum(0)]
    )
    cluster = torch.empty_like(cluster_of_sorted)
    cluster[rough] = cluster_of_sorted
    n = values.shape[-1]
    return torch.argsort(cluster * n + torch.arange(n, device=values.device))


def power_qr_basis(
    statistic: Tensor, previous: Tensor, *, cluster_tolerance: float = CLUSTER_TOLERANCE
) -> tuple[Tensor, Tensor]:
    r"""One step of subspace (power) iteration from the orthonormal ``previous`` basis of a
    symmetric PSD ``statistic`` S, made a function of its inputs that round-off cannot decide.
    Returns the new basis and the order in which the previous columns were taken.

    1. :math:`P = S Q_{prev}`; the columns are sorted by the estimated eigenvalues
       :math:`\operatorname{diag}(Q_{prev}^\top P)`, descending, where estimates closer than
       ``cluster_tolerance · √n · eps · max|estimate|`` (:func:`eigenvalue_clusters` of the
       sorted estimates: round-off of a repeated or zero eigenvalue) keep their previous
       order, so that round-off does not permute them (:func:`_tolerant_descending_order`);
    2. :math:`P = QR` with R's diagonal positive (:func:`positive_qr`);
    3. from the first column whose :math:`R_{jj}` is at most that tolerance times
       :math:`\max_j R_{jj}` on (the power step left it at round-off level: a previous column
       in S's null space), the columns span the orthogonal complement of those before, a
       well-determined subspace; their basis is the one closest to the sorted previous
       columns (:func:`closest_subspace_basis`), i.e. they stay put as far as they can.
    """
    power = statistic @ previous
    estimated = (previous * power).sum(dim=0)  # diag(Qᵀ S Q)
    n = statistic.shape[-1]
    unit = cluster_tolerance * n**0.5 * torch.finfo(statistic.dtype).eps
    if n == 0:
        return previous.clone(), torch.arange(0, device=previous.device)
    scale = float(estimated.abs().max())
    order = _tolerant_descending_order(estimated, tolerance=unit * scale)
    sorted_previous = previous[:, order]
    fresh, triangular = positive_qr(power[:, order])
    diagonal = triangular.diagonal()
    undetermined = torch.nonzero(diagonal <= unit * float(diagonal.max())).flatten()
    if undetermined.numel():
        first = int(undetermined[0])
        fresh[:, first:] = closest_subspace_basis(
            fresh[:, first:],
            sorted_previous[:, first:],
            candidates=sorted_previous,
            complement=fresh[:, :first],
        )
    if not all_finite([fresh]):
        raise DecompositionError("power iteration produced non-finite values")
    return fresh, order


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
