"""Matrix functions against closed forms (float64 unless the test is about float32)."""

import pytest
import torch

from layerwise.optim import matrix
from layerwise.optim.matrix import Damping, DecompositionError

TOL = 1e-10


def random_orthogonal(d: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


@pytest.mark.parametrize("p", [1, 2, 4])
def test_inverse_root_of_diagonal_matrix(p):
    eigenvalues = torch.tensor([16.0, 4.0, 1.0, 0.25], dtype=torch.float64)
    result = matrix.inverse_root(torch.diag(eigenvalues), p)
    torch.testing.assert_close(result, torch.diag(eigenvalues ** (-1.0 / p)), atol=TOL, rtol=0)


@pytest.mark.parametrize("p", [1, 2, 4])
def test_inverse_root_of_random_spd_with_known_spectrum(p):
    generator = torch.Generator().manual_seed(0)
    q = random_orthogonal(6, generator)
    eigenvalues = torch.logspace(-2, 2, 6, dtype=torch.float64)
    a = q @ torch.diag(eigenvalues) @ q.T
    expected = q @ torch.diag(eigenvalues ** (-1.0 / p)) @ q.T
    torch.testing.assert_close(matrix.inverse_root(a, p), expected, atol=1e-9, rtol=1e-9)
    # The root really is a root: (A^{-1/p})^{-p} = A.
    root = matrix.inverse_root(a, p)
    torch.testing.assert_close(torch.linalg.matrix_power(torch.linalg.inv(root), p), a)


def test_rank_deficient_input_with_absolute_and_relative_damping():
    generator = torch.Generator().manual_seed(1)
    v = torch.randn(5, 2, generator=generator, dtype=torch.float64)
    a = v @ v.T  # rank 2
    eigenvalues, q = torch.linalg.eigh(a)
    eigenvalues = eigenvalues.clamp(min=0)
    damping = 1e-3
    expected = q @ torch.diag((eigenvalues + damping) ** -0.25) @ q.T
    torch.testing.assert_close(matrix.inverse_root(a, 4, damping=damping), expected)
    relative = damping * eigenvalues.max()
    expected = q @ torch.diag((eigenvalues + relative) ** -0.25) @ q.T
    result = matrix.inverse_root(a, 4, damping=damping, damping_mode=Damping.RELATIVE)
    torch.testing.assert_close(result, expected)
    with pytest.raises(DecompositionError, match="singular"):
        matrix.inverse_root(torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64)), 4)


def test_damped_inverse_matches_explicit_inverse_and_survives_indefinite_roundoff():
    generator = torch.Generator().manual_seed(2)
    v = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    a = v @ v.T
    expected = torch.linalg.inv(a + 0.1 * torch.eye(6, dtype=torch.float64))
    torch.testing.assert_close(matrix.damped_inverse(a, damping=0.1), expected)
    # A negative eigenvalue below the damping makes Cholesky fail; the eigh path clips it to
    # zero before damping, as for every other factor.
    q = random_orthogonal(4, generator)
    eigenvalues = torch.tensor([-1e-6, 1.0, 2.0, 3.0], dtype=torch.float64)
    b = q @ torch.diag(eigenvalues) @ q.T
    expected = q @ torch.diag(1.0 / (eigenvalues.clamp(min=0) + 1e-9)) @ q.T
    torch.testing.assert_close(matrix.damped_inverse(b, damping=1e-9), expected, rtol=1e-6, atol=0)


def test_eigh_retries_in_float64_when_float32_fails(monkeypatch):
    calls = []
    real_eigh = torch.linalg.eigh

    def flaky_eigh(a):
        calls.append(a.dtype)
        if a.dtype == torch.float32:
            raise torch.linalg.LinAlgError("injected float32 failure")
        return real_eigh(a)

    monkeypatch.setattr(torch.linalg, "eigh", flaky_eigh)
    a = torch.diag(torch.tensor([4.0, 1.0]))
    root = matrix.inverse_root(a, 2)
    assert calls == [torch.float32, torch.float64]
    assert root.dtype == torch.float32
    torch.testing.assert_close(root, torch.diag(torch.tensor([0.5, 1.0])))
    with pytest.raises(DecompositionError):
        matrix.inverse_root(a, 2, retry_float64=False)


def test_eigh_retry_on_non_finite_output(monkeypatch):
    real_eigh = torch.linalg.eigh

    def nan_in_float32(a):
        values, vectors = real_eigh(a)
        if a.dtype == torch.float32:
            values = values * float("nan")
        return values, vectors

    monkeypatch.setattr(torch.linalg, "eigh", nan_in_float32)
    values, _ = matrix.eigh_with_retry(torch.eye(3))
    assert torch.isfinite(values).all()


def test_non_finite_input_is_refused():
    a = torch.eye(3, dtype=torch.float64)
    a[0, 0] = float("nan")
    with pytest.raises(DecompositionError, match="non-finite"):
        matrix.inverse_root(a, 4)


def test_symmetric_eigenbasis_is_orthonormal_and_sorted_descending():
    generator = torch.Generator().manual_seed(3)
    v = torch.randn(5, 5, generator=generator, dtype=torch.float64)
    a = v @ v.T
    q = matrix.symmetric_eigenbasis(a)
    torch.testing.assert_close(q.T @ q, torch.eye(5, dtype=torch.float64))
    diagonal = torch.diagonal(q.T @ a @ q)
    assert torch.all(diagonal[:-1] >= diagonal[1:])
    off_diagonal = q.T @ a @ q - torch.diag(diagonal)
    assert off_diagonal.abs().max() < 1e-10


@pytest.mark.parametrize("shape", [(4, 7), (7, 4), (5, 5)])
def test_polar_svd_is_orthogonal_and_a_polar_factor(shape):
    generator = torch.Generator().manual_seed(4)
    m = torch.randn(*shape, generator=generator, dtype=torch.float64)
    polar = matrix.polar_svd(m)
    small = min(shape)
    gram = polar @ polar.T if shape[0] <= shape[1] else polar.T @ polar
    torch.testing.assert_close(gram, torch.eye(small, dtype=torch.float64))
    # M = polar · (MᵀM)^{1/2}: the positive part is symmetric PSD.
    positive = polar.T @ m
    torch.testing.assert_close(positive, positive.T)
    assert torch.linalg.eigvalsh(positive).min() > -1e-10


@pytest.mark.parametrize("shape", [(6, 10), (10, 6)])
def test_newton_schulz_cubic_converges_to_exact_polar(shape):
    generator = torch.Generator().manual_seed(5)
    m = torch.randn(*shape, generator=generator, dtype=torch.float64)
    approx = matrix.newton_schulz_polar(m, coefficients=matrix.NEWTON_SCHULZ_CUBIC, steps=60)
    torch.testing.assert_close(approx, matrix.polar_svd(m), atol=1e-9, rtol=0)


def test_newton_schulz_quintic_singular_values_near_one():
    generator = torch.Generator().manual_seed(6)
    m = torch.randn(32, 64, generator=generator, dtype=torch.float64)
    approx = matrix.newton_schulz_polar(m)
    singular_values = torch.linalg.svdvals(approx)
    assert singular_values.min() > 0.6 and singular_values.max() < 1.25
    # Same singular vectors as the exact polar factor: the cosine between them is high.
    exact = matrix.polar_svd(m)
    cosine = (approx * exact).sum() / (approx.norm() * exact.norm())
    assert cosine > 0.97


@pytest.mark.parametrize("shape", [(3, 12, 5), (3, 5, 12)])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_newton_schulz_batch_equals_each_matrix(shape, dtype):
    """A stacked batch (tall ones run transposed, into reused buffers) gives each matrix's own
    result; the cubic iteration on the batch converges to each exact polar factor."""
    generator = torch.Generator().manual_seed(7)
    m = torch.randn(*shape, generator=generator, dtype=torch.float64)
    batch = matrix.newton_schulz_polar(m, compute_dtype=dtype)
    assert batch.dtype == torch.float64 and batch.shape == m.shape
    for index in range(shape[0]):
        single = matrix.newton_schulz_polar(m[index], compute_dtype=dtype)
        torch.testing.assert_close(
            batch[index], single, atol=1e-12 if dtype is None else 2e-2, rtol=0
        )
    cubic = matrix.newton_schulz_polar(m, coefficients=matrix.NEWTON_SCHULZ_CUBIC, steps=60)
    for index in range(shape[0]):
        torch.testing.assert_close(cubic[index], matrix.polar_svd(m[index]), atol=1e-9, rtol=0)


# --- Eigenbases that round-off cannot decide (issue 12) -----------------------------------------

#: A relative perturbation of a few ulps: what summing a batch in another order does.
ULP_PERTURBATION = 2.0**-50


def _degenerate_matrix(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``Q diag(λ) Qᵀ`` with a 3-fold and a 4-fold (zero) eigenvalue, and its eigenvalues."""
    eigenvalues = torch.tensor([5.0, 3.0, 3.0, 3.0, 1.5, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    q = random_orthogonal(eigenvalues.numel(), generator)
    return (q * eigenvalues) @ q.T, eigenvalues


def _perturbed(a: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(a.shape, generator=generator, dtype=a.dtype)
    return a * (1 + ULP_PERTURBATION * (noise + noise.T) / 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stable_eigenbasis_ignores_ulp_perturbations_where_eigh_does_not(seed):
    generator = torch.Generator().manual_seed(seed)
    a, _ = _degenerate_matrix(generator)
    for reference in (None, random_orthogonal(a.shape[0], generator)):
        basis = matrix.stable_eigenbasis(a, reference)
        for _ in range(3):
            other = _perturbed(a, generator)
            assert float((matrix.stable_eigenbasis(other, reference) - basis).abs().max()) < 1e-12
    # The plain eigenvectors inside the degenerate eigenspaces move by O(1).
    plain = [matrix.symmetric_eigenbasis(m) for m in (a, _perturbed(a, generator))]
    moved = (plain[0][:, 1:4] - plain[1][:, 1:4]).abs().max()
    moved_null = (plain[0][:, 5:] - plain[1][:, 5:]).abs().max()
    assert float(moved) > 1e-3 and float(moved_null) > 1e-3


@pytest.mark.parametrize("seed", [3, 4])
def test_stable_eigenbasis_is_an_orthonormal_eigenbasis(seed):
    generator = torch.Generator().manual_seed(seed)
    a, eigenvalues = _degenerate_matrix(generator)
    q = matrix.stable_eigenbasis(_perturbed(a, generator), random_orthogonal(9, generator))
    torch.testing.assert_close(q.T @ q, torch.eye(9, dtype=torch.float64), atol=1e-13, rtol=0)
    rotated = q.T @ a @ q
    torch.testing.assert_close(rotated, torch.diag(eigenvalues), atol=1e-13, rtol=0)


def test_stable_eigenbasis_keeps_distinct_eigenvectors_up_to_sign():
    generator = torch.Generator().manual_seed(5)
    q = random_orthogonal(6, generator)
    a = (q * torch.logspace(1, -3, 6, dtype=torch.float64)) @ q.T
    reference = random_orthogonal(6, generator)
    stable = matrix.stable_eigenbasis(a, reference)
    plain = matrix.symmetric_eigenbasis(a)
    torch.testing.assert_close(stable, plain * torch.sign((plain * stable).sum(0)), atol=0, rtol=0)
    assert bool(((stable * reference).sum(0) > 0).all())  # the sign of positive overlap


@pytest.mark.parametrize("seed", [6, 7])
def test_cluster_basis_is_the_closest_to_the_reference(seed):
    """Against brute force: no other basis of each degenerate eigenspace (random rotations
    of it) is closer to the reference columns in the Frobenius norm."""
    generator = torch.Generator().manual_seed(seed)
    a, _ = _degenerate_matrix(generator)
    reference = random_orthogonal(9, generator)
    q = matrix.stable_eigenbasis(a, reference)
    for start, stop in [(1, 4), (5, 9)]:
        chosen, target = q[:, start:stop], reference[:, start:stop]
        best = float(torch.linalg.matrix_norm(chosen - target))
        for _ in range(300):
            rotation = random_orthogonal(stop - start, generator)
            if bool(torch.rand(1, generator=generator) < 0.5):
                rotation[:, 0] *= -1  # reflections too: any orthonormal basis of the space
            other = float(torch.linalg.matrix_norm(chosen @ rotation - target))
            assert other >= best - 1e-12
        # First-order optimality of Procrustes: Qᵀ T is symmetric positive semi-definite.
        overlap = chosen.T @ target
        torch.testing.assert_close(overlap, overlap.T, atol=1e-12, rtol=0)
        assert float(torch.linalg.eigvalsh(overlap).min()) > -1e-12


def test_closest_subspace_basis_depends_on_the_subspace_only():
    generator = torch.Generator().manual_seed(8)
    basis = random_orthogonal(7, generator)[:, :3]
    target = torch.randn(7, 3, generator=generator, dtype=torch.float64)
    chosen = matrix.closest_subspace_basis(basis, target)
    for _ in range(3):
        spun = basis @ random_orthogonal(3, generator)
        torch.testing.assert_close(
            matrix.closest_subspace_basis(spun, target), chosen, atol=1e-13, rtol=0
        )


def test_large_subspaces_through_their_complement_equal_the_direct_procrustes():
    """The O(n k r) form for a k-dimensional subspace with an r < k dimensional complement
    (the null space of a rank-r statistic) against the k x k SVD."""
    generator = torch.Generator().manual_seed(12)
    q = random_orthogonal(10, generator)
    target = random_orthogonal(10, generator)[:, 3:]
    direct = matrix.closest_subspace_basis(q[:, 3:], target)
    through = matrix.closest_subspace_basis(q[:, 3:], target, complement=q[:, :3])
    torch.testing.assert_close(through, direct, atol=1e-13, rtol=0)
    # And inside stable_eigenbasis: a rank-2 matrix's 8-dimensional null space.
    a = (q[:, :2] * torch.tensor([3.0, 1.0], dtype=torch.float64)) @ q[:, :2].T
    reference = random_orthogonal(10, generator)
    basis = matrix.stable_eigenbasis(a, reference)
    expected = matrix.closest_subspace_basis(basis[:, 2:], reference[:, 2:])
    torch.testing.assert_close(basis[:, 2:], expected, atol=1e-13, rtol=0)


@pytest.mark.parametrize("scale", [0.0, 2.0])
def test_a_multiple_of_the_identity_keeps_the_reference(scale):
    """One cluster spanning the whole space (a zero statistic, as a zero-gradient step makes)."""
    reference = random_orthogonal(5, torch.Generator().manual_seed(13))
    a = scale * torch.eye(5, dtype=torch.float64)
    torch.testing.assert_close(matrix.stable_eigenbasis(a, reference), reference)
    torch.testing.assert_close(matrix.power_qr_basis(a, reference)[0], reference)


def test_rank_deficient_overlap_is_completed_canonically():
    """diag(0, 2, 2, 0, 1): the 2-fold eigenspace span(e1, e2) sits in slots 0 and 1, whose
    identity columns e0, e1 overlap it in one direction only; the other is completed by the
    canonical rule, and no basis handed in changes the answer."""
    eye = torch.eye(5, dtype=torch.float64)
    q = matrix.stable_eigenbasis(torch.diag(torch.tensor([0.0, 2.0, 2.0, 0.0, 1.0]).double()))
    # Slot 1's reference e1 lies in the space: kept; slot 0 takes the rest, e2. The eigenvalue
    # 1 (slot 2, reference e2 orthogonal to it) is +e4; the null space span(e0, e3) in slots
    # 3, 4 (references e3, e4): e3 kept in slot 3, e0 completes slot 4.
    torch.testing.assert_close(q, eye[:, [2, 1, 4, 3, 0]], atol=0, rtol=0)
    generator = torch.Generator().manual_seed(9)
    for _ in range(3):
        spun = eye[:, [1, 2]] @ random_orthogonal(2, generator)
        chosen = matrix.closest_subspace_basis(spun, eye[:, :2])
        torch.testing.assert_close(chosen, q[:, :2], atol=1e-15, rtol=0)


def test_diagonal_statistic_with_zeros_gives_the_permutation_in_order():
    """A diagonal statistic whose zeros come first (dead inputs of a KFAC factor): every
    overlap with the identity's slot is zero; the distinct entries become +e_j, and the null
    space's slots take e_0, e_1, ... in order (the canonical completion, several at once)."""
    values = torch.cat([torch.zeros(5), torch.linspace(2.0, 1.0, 7)]).double()
    q = matrix.stable_eigenbasis(torch.diag(values))
    expected = torch.eye(12, dtype=torch.float64)[:, [*range(5, 12), *range(5)]]
    torch.testing.assert_close(q, expected, atol=0, rtol=0)


def test_eigenvalue_clusters_are_runs_of_small_gaps():
    values = torch.tensor(
        [4.0, 2.0, 2.0 - 1e-15, 2.0 - 2e-15, 1.0, 0.0, 1e-16], dtype=torch.float64
    )
    assert matrix.eigenvalue_clusters(values, tolerance=1e-13) == [(0, 1), (1, 4), (4, 5), (5, 7)]
    assert matrix.eigenvalue_clusters(values[:0], tolerance=1.0) == []


def test_positive_qr_is_the_unique_qr():
    generator = torch.Generator().manual_seed(10)
    m = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    q, r = matrix.positive_qr(m)
    assert bool((r.diagonal() > 0).all())
    torch.testing.assert_close(q @ r, m)
    # The unique QR with a positive diagonal is Cholesky's: MᵀM = RᵀR.
    torch.testing.assert_close(r, torch.linalg.cholesky(m.T @ m).T)


@pytest.mark.parametrize("previous_from", ["nearby", "itself"])
def test_power_qr_basis_on_rank_deficient_statistics_ignores_ulp_perturbations(previous_from):
    """From a nearby matrix's eigenbasis, or from the statistic's own (whose null columns the
    power step maps to round-off, and whose estimated eigenvalues there are round-off too)."""
    generator = torch.Generator().manual_seed(11)
    a, _ = _degenerate_matrix(generator)
    nearby = a + 0.05 * torch.diag(torch.rand(9, generator=generator, dtype=torch.float64))
    previous = matrix.stable_eigenbasis(nearby if previous_from == "nearby" else a)
    fresh, order = matrix.power_qr_basis(a, previous)
    torch.testing.assert_close(fresh.T @ fresh, torch.eye(9, dtype=torch.float64))
    for _ in range(3):
        other, other_order = matrix.power_qr_basis(_perturbed(a, generator), previous)
        assert torch.equal(order, other_order)
        assert float((other - fresh).abs().max()) < 1e-12
    # The null space (the power step maps it to round-off) stays closest to where it was.
    null = slice(5, 9)
    sorted_previous = previous[:, order]
    expected = matrix.closest_subspace_basis(fresh[:, null], sorted_previous[:, null])
    torch.testing.assert_close(fresh[:, null], expected, atol=1e-13, rtol=0)
    # A plain QR of the power step decides those columns by round-off.
    plain = [torch.linalg.qr((m @ previous)[:, order])[0] for m in (a, _perturbed(a, generator))]
    assert float((plain[0][:, null].abs() - plain[1][:, null].abs()).abs().max()) > 1e-3
