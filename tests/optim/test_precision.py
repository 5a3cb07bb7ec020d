"""``precondition_dtype``: the application's products in a lower precision.

The statistics and decompositions stay in the parameters' dtype; only the per-step products
with the dense preconditioners change precision. Checked against the same optimizer in the
parameters' dtype: the directions agree to bf16 round-off (and differ, so bf16 was used).
"""

from __future__ import annotations

import pytest
import torch
from optim_cases import make_mlp, regression_batches
from torch import nn

from layerwise.optim import KFAC, SOAP, InverseRoot, Muon, Shampoo, kronecker

FACTORIES = {
    "shampoo": lambda model, **kw: Shampoo(model.parameters(), lr=1e-2, damping=1e-6, **kw),
    "soap": lambda model, **kw: SOAP(model.parameters(), lr=1e-2, **kw),
    # Damping 1: the bf16 error grows with the cancellation in the product (see
    # test_bf16_application_error_is_within_the_componentwise_rounding_bound).
    "kfac": lambda model, **kw: KFAC(model, lr=0.1, loss="mse", damping=1.0, **kw),
    "ekfac": lambda model, **kw: KFAC(model, lr=1e-2, loss="mse", ekfac=True, **kw),
}
CASES = pytest.mark.parametrize("name", FACTORIES)

#: bf16 keeps 8 significant bits: round-off of a product is ~2^-8 relative per entry.
BF16_RELATIVE = 2.0**-8


def _updates(name: str, dtype: str | None, steps: int = 4) -> list[torch.Tensor]:
    """The flattened parameter change of each step, from one initial model and batches."""
    model = make_mlp(dtype=torch.float32, widths=(6, 24, 16, 2))
    optimizer = FACTORIES[name](model, precondition_dtype=dtype)
    updates = []
    for x, y in regression_batches(steps, dtype=torch.float32):
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        updates.append(after - before)
    return updates


@CASES
def test_bf16_application_agrees_with_float32_to_bf16_round_off(name):
    full = _updates(name, None)
    low = _updates(name, "bfloat16")
    for step, (a, b) in enumerate(zip(full, low, strict=True)):
        relative = float((a - b).norm() / a.norm())
        # A few bf16 roundings per product chain: ~0.4 % measured. A rotation *into* an
        # eigenbasis in bf16 would be amplified by Adam's normalization (9–150 %).
        assert 1e-5 < relative < 4 * BF16_RELATIVE, (step, relative)


@CASES
def test_only_inverse_roots_are_stored_in_the_compute_dtype(name):
    """Inverse roots are only ever applied, so they are kept in bf16; an eigenbasis also
    rotates into the basis in full precision and stays in the parameters' dtype."""
    model = make_mlp(dtype=torch.float32, widths=(6, 24, 16, 2))
    optimizer = FACTORIES[name](model, precondition_dtype="bfloat16")
    x, y = regression_batches(1, dtype=torch.float32)[0]
    nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()
    state = optimizer.state[model[0].weight]
    stored = torch.bfloat16 if name in ("shampoo", "kfac") else torch.float32
    for key in (kronecker.LEFT_PRECONDITIONER, kronecker.RIGHT_PRECONDITIONER):
        assert state[key].dtype == stored
    for key in (kronecker.LEFT_STATISTIC, kronecker.RIGHT_STATISTIC):
        assert state[key].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: Shampoo(p, precondition_dtype="bf16"), "Invalid precondition_dtype: 'bf16'"),
        (lambda p: SOAP(p, precondition_dtype="int8"), "Invalid precondition_dtype: 'int8'"),
        (
            lambda p: Shampoo(p, exact=True, precondition_dtype="bfloat16"),
            "exact=True requires precondition_dtype=None",
        ),
        (
            lambda p: SOAP(p, exact=True, precondition_dtype="bfloat16"),
            "exact=True requires precondition_dtype=None",
        ),
        (lambda p: Muon(p, ns_dtype="half"), "Invalid ns_dtype: 'half'"),
        (
            lambda p: Shampoo([{"params": p, "precondition_dtype": "float8"}]),
            "Invalid precondition_dtype: 'float8'",
        ),
    ],
)
def test_bad_precisions_are_refused_by_name(make, message):
    with pytest.raises(ValueError, match=message):
        make(list(make_mlp().parameters()))


def test_kfac_exact_refuses_a_lower_precision():
    model = make_mlp()
    with pytest.raises(ValueError, match="exact=True requires precondition_dtype=None"):
        KFAC(model, loss="mse", exact=True, damping=1e-3, precondition_dtype="bfloat16")


def test_inverse_root_application_is_the_bf16_product_chain():
    """The application is ``P_L X P_R`` with P and X rounded to bf16 and the product chain in
    bf16: equal to that computation, and within bf16 round-off of the float64 product."""
    generator = torch.Generator().manual_seed(0)
    left, x, right = (torch.randn(n, k, generator=generator) for n, k in ((5, 5), (5, 7), (7, 7)))
    transform = InverseRoot(compute_dtype=torch.bfloat16)
    state = {kronecker.LEFT_PRECONDITIONER: left, kronecker.RIGHT_PRECONDITIONER: right}
    result = transform.apply(state, x, grad=x, step=1)
    assert result.dtype == torch.float32
    bf = torch.bfloat16
    chain = ((left.to(bf) @ x.to(bf)) @ right.to(bf).mT).float()
    assert torch.equal(result, chain)
    exact = left.double() @ x.double() @ right.double().mT
    assert float((result.double() - exact).norm() / exact.norm()) < 4 * BF16_RELATIVE
    # The float32 preconditioners given in the state were cast once and kept in bf16.
    assert state[kronecker.LEFT_PRECONDITIONER].dtype == bf


@pytest.mark.parametrize("conditioning", [1.0, 1e2, 1e4])
def test_bf16_application_error_is_within_the_componentwise_rounding_bound(conditioning):
    r"""Rounding P_L, X, P_R and the two products to bf16 (unit roundoff u = 2^-8) moves
    :math:`P_L X P_R` by at most ~5u |P_L||X||P_R| entry-wise, so the relative error is
    bounded by 5u times the amplification :math:`\||P_L||X||P_R|\| / \|P_L X P_R\|` — small
    for a well-conditioned product, large when the inverse cancels most of X."""
    generator = torch.Generator().manual_seed(1)

    def spd_inverse(n: int) -> torch.Tensor:
        basis, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
        eigenvalues = torch.logspace(0, -torch.log10(torch.tensor(conditioning)).item(), n)
        return ((basis * (1 / eigenvalues.double())) @ basis.mT).float()

    left, right = spd_inverse(48), spd_inverse(32)
    x = torch.randn(48, 32, generator=generator)
    transform = InverseRoot(compute_dtype=torch.bfloat16)
    state = {kronecker.LEFT_PRECONDITIONER: left, kronecker.RIGHT_PRECONDITIONER: right}
    result = transform.apply(state, x, grad=x, step=1).double()
    exact = left.double() @ x.double() @ right.double().mT
    amplification = float(
        (left.double().abs() @ x.double().abs() @ right.double().abs().mT).norm() / exact.norm()
    )
    error = float((result - exact).norm() / exact.norm())
    assert error < 5 * BF16_RELATIVE * amplification
    assert error > 0.05 * BF16_RELATIVE  # it was computed in bf16
