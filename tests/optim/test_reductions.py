"""Relationships between methods, as exact float64 tests (STYLE.md §2.8)."""

from __future__ import annotations

import copy

import pytest
import torch
from optim_cases import assert_same_parameters, make_mlp, regression_batches, train
from torch import nn

from layerwise.optim import SOAP, Muon, Shampoo
from layerwise.optim.matrix import NEWTON_SCHULZ_QUINTIC, newton_schulz_polar, polar_svd

STEPS = 8


def test_soap_with_identity_basis_equals_adamw():
    """Every side longer than max_preconditioner_dim has the identity eigenbasis: SOAP is AdamW."""
    model = make_mlp()
    reference = copy.deepcopy(model)
    batches = regression_batches(STEPS)
    hyper = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)
    train(model, SOAP(model.parameters(), max_preconditioner_dim=1, **hyper), batches)
    train(reference, torch.optim.AdamW(reference.parameters(), **hyper), batches)
    assert_same_parameters(model, reference, atol=1e-12, rtol=1e-10)


def test_soap_with_eigenbasis_differs_from_adamw():
    """The reduction above is not vacuous: with real eigenbases SOAP is not Adam."""
    model = make_mlp()
    reference = copy.deepcopy(model)
    batches = regression_batches(STEPS)
    train(model, SOAP(model.parameters(), lr=1e-2, weight_decay=0.0), batches)
    train(
        reference,
        torch.optim.AdamW(reference.parameters(), lr=1e-2, betas=(0.95, 0.95), weight_decay=0.0),
        batches,
    )
    difference = max(
        (p - q).abs().max() for p, q in zip(model.parameters(), reference.parameters(), strict=True)
    )
    assert difference > 1e-3


@pytest.mark.parametrize(
    ("grafting", "reference_factory"),
    [
        (
            "adam",
            lambda params: torch.optim.AdamW(
                params, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1
            ),
        ),
        ("sgd", lambda params: torch.optim.SGD(params, lr=1e-2, momentum=0.9, weight_decay=0.0)),
    ],
)
def test_shampoo_with_preconditioning_off_equals_grafted_method(grafting, reference_factory):
    model = make_mlp()
    reference = copy.deepcopy(model)
    batches = regression_batches(STEPS)
    if grafting == "adam":
        shampoo = Shampoo(
            model.parameters(),
            lr=1e-2,
            betas=(0.9, 0.99),
            eps=1e-8,
            weight_decay=0.1,
            grafting="adam",
            start_preconditioning_step=10**9,
        )
    else:
        # SGD with heavy-ball momentum: raw gradient (beta1 = 0) and momentum on the direction.
        # The 1-D biases take the Adam path, so compare a bias-free network.
        model = make_mlp(bias=False)
        reference = copy.deepcopy(model)
        shampoo = Shampoo(
            model.parameters(),
            lr=1e-2,
            betas=(0.0, 0.99),
            momentum=0.9,
            grafting="sgd",
            start_preconditioning_step=10**9,
        )
    train(model, shampoo, batches)
    train(reference, reference_factory(reference.parameters()), batches)
    assert_same_parameters(model, reference, atol=1e-12, rtol=1e-10)


def test_shampoo_exact_mode_matches_brute_force_roots():
    """D_t = L_t^{-1/4} G_t R_t^{-1/4} with L_t, R_t the sums of past gradient products."""
    generator = torch.Generator().manual_seed(7)
    weight = nn.Parameter(torch.randn(4, 6, generator=generator, dtype=torch.float64))
    damping, lr = 1e-6, 0.1
    shampoo = Shampoo(
        [weight], lr=lr, betas=(0.0, 0.999), accumulation="sum", damping=damping, exact=True
    )
    left = torch.zeros(4, 4, dtype=torch.float64)
    right = torch.zeros(6, 6, dtype=torch.float64)

    def root(a):  # independent: scipy-free eigendecomposition of the damped matrix
        values, vectors = torch.linalg.eigh(a)
        return vectors @ torch.diag((values.clamp(min=0) + damping) ** -0.25) @ vectors.T

    for _ in range(5):
        grad = torch.randn(4, 6, generator=generator, dtype=torch.float64)
        left += grad @ grad.T
        right += grad.T @ grad
        expected = weight.detach() - lr * root(left) @ grad @ root(right)
        weight.grad = grad.clone()
        shampoo.step()
        torch.testing.assert_close(weight.detach(), expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("shape", [(1, 5), (5, 1)])
def test_shampoo_on_a_vector_shaped_matrix_is_full_matrix_adagrad(shape):
    """A dimension-1 side is skipped; the other side gets exponent -1/2 (documented rule)."""
    generator = torch.Generator().manual_seed(8)
    weight = nn.Parameter(torch.zeros(*shape, dtype=torch.float64))
    shampoo = Shampoo(
        [weight], lr=1.0, betas=(0.0, 0.999), accumulation="sum", damping=1e-8, exact=True
    )
    total = torch.zeros(5, 5, dtype=torch.float64)
    previous = weight.detach().clone()
    for _ in range(4):
        grad = torch.randn(*shape, generator=generator, dtype=torch.float64)
        vector = grad.reshape(-1)
        total += torch.outer(vector, vector)
        values, vectors = torch.linalg.eigh(total)
        root = vectors @ torch.diag((values.clamp(min=0) + 1e-8) ** -0.5) @ vectors.T
        weight.grad = grad.clone()
        shampoo.step()
        step = (previous - weight.detach()).reshape(-1)
        torch.testing.assert_close(step, root @ vector, atol=1e-9, rtol=1e-9)
        previous = weight.detach().clone()


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_exact_is_polar_of_momentum_times_scale(nesterov):
    generator = torch.Generator().manual_seed(9)
    weight = nn.Parameter(torch.randn(8, 3, generator=generator, dtype=torch.float64))
    lr, momentum = 0.05, 0.9
    muon = Muon([weight], lr=lr, momentum=momentum, nesterov=nesterov, exact=True)
    buffer = torch.zeros(8, 3, dtype=torch.float64)
    for _ in range(4):
        grad = torch.randn(8, 3, generator=generator, dtype=torch.float64)
        buffer = momentum * buffer + (1 - momentum) * grad
        fed = momentum * buffer + (1 - momentum) * grad if nesterov else buffer
        expected = weight.detach() - lr * (8 / 3) ** 0.5 * polar_svd(fed)
        weight.grad = grad.clone()
        muon.step()
        torch.testing.assert_close(weight.detach(), expected, atol=1e-12, rtol=1e-12)


def test_muon_exact_equals_shampoo_without_accumulation():
    """(MMᵀ)^{-1/4} M (MᵀM)^{-1/4} = UVᵀ: Shampoo on the latest gradient only is Muon."""
    generator = torch.Generator().manual_seed(10)
    start = torch.randn(5, 7, generator=generator, dtype=torch.float64)
    a = nn.Parameter(start.clone())
    b = nn.Parameter(start.clone())
    muon = Muon([a], lr=0.1, momentum=0.0, scale="none", exact=True)
    # The 7 x 7 right factor has rank 5; a tiny damping only touches directions the gradient
    # has no component in.
    shampoo = Shampoo(
        [b], lr=0.1, betas=(0.0, 0.999), accumulation="latest", damping=1e-14, exact=True
    )
    for _ in range(3):
        grad = torch.randn(5, 7, generator=generator, dtype=torch.float64)
        a.grad, b.grad = grad.clone(), grad.clone()
        muon.step()
        shampoo.step()
    torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_muon_bookkeeping_matches_torch_muon(monkeypatch):
    """Momentum, Nesterov, shape scale and weight decay as torch.optim.Muon, with both using
    our float64 Newton–Schulz (torch's runs in bfloat16, compared separately below)."""
    torch_muon = getattr(torch.optim, "Muon", None)
    if torch_muon is None:
        pytest.skip("torch.optim.Muon is not in this torch version")
    import torch.optim._muon as torch_muon_module

    monkeypatch.setattr(
        torch_muon_module,
        "_zeropower_via_newtonschulz",
        lambda grad, coefficients, steps, eps: newton_schulz_polar(
            grad, coefficients=coefficients, steps=steps, epsilon=eps
        ),
    )
    generator = torch.Generator().manual_seed(11)
    start = torch.randn(16, 12, generator=generator, dtype=torch.float64)
    a, b = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    ours = Muon([a], lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1, scale="shape")
    theirs = torch_muon(
        [b], lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1, adjust_lr_fn="original"
    )
    for _ in range(5):
        grad = torch.randn(16, 12, generator=generator, dtype=torch.float64)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()
    torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_newton_schulz_matches_torch_bfloat16_iteration_to_bfloat16_precision():
    torch_muon_module = pytest.importorskip("torch.optim._muon")
    generator = torch.Generator().manual_seed(12)
    m = torch.randn(24, 40, generator=generator)
    theirs = torch_muon_module._zeropower_via_newtonschulz(m, NEWTON_SCHULZ_QUINTIC, 5, 1e-7)
    ours = newton_schulz_polar(m)
    relative = (ours - theirs.float()).norm() / ours.norm()
    assert relative < 3e-2  # bfloat16 has 8 bits of mantissa
