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
