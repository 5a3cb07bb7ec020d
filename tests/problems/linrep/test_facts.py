"""SPEC §2 facts 1–4 as exact float64 tests, and the stylized updates against explicit formulas."""

from __future__ import annotations

import pytest
import torch

from layerwise.problems.linrep.algorithms import Amd, Dfw, Kfac, Sgd
from layerwise.problems.linrep.data import Batch, BatchStream, make_instance
from layerwise.problems.linrep.metrics import subspace_distance
from layerwise.problems.linrep.settings import (
    AmdParams,
    DfwParams,
    KfacParams,
    LinrepSettings,
    SgdParams,
)

DT = torch.float64


def _lr(value: float) -> torch.Tensor:
    return torch.tensor([value], dtype=DT).reshape(1, 1, 1, 1)


def _setup(kappa_x=100.0, kappa_f=5.0, noise=0.0, n=40, d=10, seeds=(0, 1)):
    s = LinrepSettings(d=d, k=3, dy=4, n=n, kappa_x=kappa_x, kappa_f=kappa_f, noise_std=noise)
    return s, make_instance(s, seeds)


def test_fact1_kfac_unit_step_is_the_ols_closed_form():
    s, inst = _setup(noise=0.1)
    batch = BatchStream(s, inst).next()
    method = Kfac(inst.init_features, inst.init_head, _lr(1.0), KfacParams(orthonormalize=False))
    f = inst.init_head
    method.step(batch)
    ols = batch.cross_cov @ torch.linalg.inv(batch.input_cov)
    expected = torch.linalg.pinv(f) @ ols  # (FᵀF)⁻¹Fᵀ Ŵ, independent of G
    torch.testing.assert_close(method.features[0], expected, rtol=1e-9, atol=1e-11)


def test_fact1_one_step_recovers_the_subspace_without_noise():
    s, inst = _setup(kappa_x=1000.0, kappa_f=10.0)
    batch = BatchStream(s, inst).next()
    method = Kfac(inst.init_features, inst.init_head, _lr(1.0), KfacParams())
    assert subspace_distance(method.features, inst.features).min() > 0.5
    method.step(batch)
    assert subspace_distance(method.features, inst.features).max() < 1e-10


def _population_batch(inst) -> Batch:
    """A batch with exactly the population moments: n = d rows x = √d Σ^{1/2} eᵢ, no noise."""
    d = inst.features.shape[-1]
    x = d**0.5 * inst.train.input_cov_sqrt  # rows √d Σ^{1/2} eᵢ; xᵀx/d = Σx
    y = x @ (inst.train.head @ inst.features).mT
    return Batch(x, y)


@pytest.mark.parametrize("kappa", [1.0, 10.0, 1000.0])
@pytest.mark.parametrize("lr", [0.125, 0.5, 0.9])
def test_fact2_population_contraction_is_one_minus_eta(kappa, lr):
    s, inst = _setup(kappa_x=kappa, kappa_f=kappa)
    batch = _population_batch(inst)
    torch.testing.assert_close(batch.input_cov, inst.train.input_cov)
    method = Kfac(inst.init_features, inst.init_head, _lr(lr), KfacParams(orthonormalize=False))
    perp = torch.eye(s.d, dtype=DT) - inst.features.mT @ inst.features
    before = method.features @ perp
    method.step(batch)
    torch.testing.assert_close(method.features @ perp, (1 - lr) * before, rtol=1e-9, atol=1e-11)


def _gauge(inst, scale=(0.3, 1.0, 4.0)):
    gen = torch.Generator().manual_seed(7)
    a = torch.randn(3, 3, generator=gen, dtype=DT) + torch.diag(torch.tensor(scale, dtype=DT))
    return a @ inst.init_features, inst.init_head @ torch.linalg.inv(a)


def test_fact3_kfac_row_spaces_ignore_orthonormalization_and_gauge():
    s, inst = _setup(noise=0.05, kappa_x=30)
    g_a, f_a = _gauge(inst)
    runs = [
        Kfac(inst.init_features, inst.init_head, _lr(0.3), KfacParams(orthonormalize=True)),
        Kfac(inst.init_features, inst.init_head, _lr(0.3), KfacParams(orthonormalize=False)),
        Kfac(
            g_a, f_a, _lr(0.3), KfacParams(orthonormalize=False, head="preconditioned", lr_head=0.7)
        ),
        Kfac(
            inst.init_features,
            inst.init_head,
            _lr(0.3),
            KfacParams(orthonormalize=True, head="preconditioned", lr_head=0.7),
        ),
    ]
    stream = BatchStream(s, inst)
    for _ in range(5):
        batch = stream.next()
        for run in runs:
            run.step(batch)
        reference = [subspace_distance(run.features, runs[0].features) for run in runs[:2]]
        assert max(r.max().item() for r in reference) < 1e-9
        pair = subspace_distance(runs[2].features, runs[3].features)
        assert pair.max().item() < 1e-9
    # Sanity: the runs did move away from the start.
    assert subspace_distance(runs[0].features, inst.init_features).min() > 0.1


def test_fact3_sgd_row_spaces_depend_on_the_gauge():
    s, inst = _setup(kappa_x=30)
    g_a, f_a = _gauge(inst)
    plain = Sgd(inst.init_features, inst.init_head, _lr(0.05), SgdParams(lr=0.05))
    gauged = Sgd(g_a, f_a, _lr(0.05), SgdParams(lr=0.05))
    torch.testing.assert_close(
        subspace_distance(plain.features, gauged.features),
        torch.zeros(1, 2, dtype=DT),
        atol=1e-12,
        rtol=0,
    )
    stream = BatchStream(s, inst)
    for _ in range(5):
        batch = stream.next()
        plain.step(batch)
        gauged.step(batch)
    assert subspace_distance(plain.features, gauged.features).min() > 1e-3


@pytest.mark.parametrize(("damping_g", "damping_f"), [(0.0, 0.0), (0.2, 0.05)])
def test_kfac_step_equals_the_explicit_kronecker_preconditioner(damping_g, damping_f):
    s, inst = _setup(noise=0.1)
    batch = BatchStream(s, inst).next()
    lr = 0.4
    params = KfacParams(orthonormalize=False, damping_g=damping_g, damping_f=damping_f)
    method = Kfac(inst.init_features, inst.init_head, _lr(lr), params)
    method.step(batch)
    for i in range(2):
        g, f = inst.init_features[i], inst.init_head[i]
        cov, cross = batch.input_cov[i], batch.cross_cov[i]
        grad = f.T @ (f @ g @ cov - cross)
        left = f.T @ f + damping_f * torch.eye(3, dtype=DT)
        right = cov + damping_g * torch.eye(s.d, dtype=DT)
        # Row-major vec: vec(L⁻¹ ∇ R⁻¹) = (L⁻¹ ⊗ R⁻¹) vec(∇) for symmetric R.
        precond = torch.kron(torch.linalg.inv(left), torch.linalg.inv(right))
        expected = g.flatten() - lr * precond @ grad.flatten()
        torch.testing.assert_close(method.features[0, i].flatten(), expected, rtol=1e-9, atol=1e-11)


def test_dfw_uses_the_whitened_gradient_of_the_second_half():
    s, inst = _setup(noise=0.1, n=48)
    batch = BatchStream(s, inst).next()
    method = Dfw(inst.init_features, inst.init_head, _lr(0.5), DfwParams(lr=0.5))
    method.step(batch)
    first, second = batch.halves()
    for i in range(2):
        g = inst.init_features[i]
        f = torch.linalg.lstsq(first.x[i] @ g.T, first.y[i]).solution.T
        direction = (
            f.T
            @ (f @ g @ second.input_cov[i] - second.cross_cov[i])
            @ torch.linalg.inv(second.input_cov[i])
        )
        expected = g - 0.5 * direction
        assert subspace_distance(method.features[0, i], expected).item() < 1e-10
        torch.testing.assert_close(method.head[0, i], f)


def test_amd_fits_the_head_then_descends():
    s, inst = _setup(noise=0.1)
    batch = BatchStream(s, inst).next()
    method = Amd(inst.init_features, inst.init_head, _lr(0.5), AmdParams(lr=0.5))
    method.step(batch)
    for i in range(2):
        g = inst.init_features[i]
        f = torch.linalg.lstsq(batch.x[i] @ g.T, batch.y[i]).solution.T
        expected = g - 0.5 * f.T @ (f @ g @ batch.input_cov[i] - batch.cross_cov[i])
        torch.testing.assert_close(method.head[0, i], f)
        torch.testing.assert_close(
            method.features[0, i] @ method.features[0, i].T, torch.eye(3, dtype=DT)
        )
        assert subspace_distance(method.features[0, i], expected).item() < 1e-10
