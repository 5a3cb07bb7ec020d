"""SOAP's steps as a function of the gradients, not of round-off (issue 12).

A tanh MLP 10 -> 16 -> 16 -> 3 trained 12 steps (float64, batch 32) on gradients perturbed by
2^-50 relative (a few ulps, what summing a batch in another order does) against the same run
unperturbed. With eigenbases from plain ``eigh`` the parameters move by ~3e-1 of the distance
they travel (round-off picks the basis inside the null space of the rank-deficient early
statistics); with :func:`~layerwise.optim.matrix.stable_eigenbasis` by ~1e-11 at ``eps=1e-4``.
At the default ``eps=1e-8`` the floor is ~1e-8, set by Adam itself: coordinates whose rotated
gradient is zero in exact arithmetic (the off-diagonal of ``Q_Lᵀ G Q_R`` at a refresh) carry
round-off ~1e-17, which the normalization ``m / (√v + eps)`` turns into steps ~1e-17 / eps;
it scales as 1 / eps (measured 1.3e-8, 1.4e-10, 8.5e-12 at eps 1e-8, 1e-6, 1e-4). EKFAC
shares the refresh: with rank-deficient factors (batch 8) its round-off bases moved 3.6e-1.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from layerwise.optim import KFAC, SOAP, matrix

STEPS, BATCH = 12, 32
PERTURBATION = 2.0**-50

#: Adam's normalization floor at the default eps = 1e-8 (measured 1.3e-8), see the docstring.
DEFAULT_EPS_FLOOR = 1e-7


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)]
    return nn.Sequential(*layers).double()


def _train(make: Callable[..., torch.optim.Optimizer], *, perturb: bool) -> list[torch.Tensor]:
    model = _mlp()
    optimizer = make(model.parameters())
    data = torch.Generator().manual_seed(1)
    noise = torch.Generator().manual_seed(2)
    for _ in range(STEPS):
        x = torch.randn(BATCH, 10, generator=data, dtype=torch.float64)
        y = torch.randint(0, 3, (BATCH,), generator=data)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if perturb:
            for p in model.parameters():
                factor = torch.randn(p.shape, generator=noise, dtype=p.dtype)
                p.grad.mul_(1 + PERTURBATION * factor)
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def relative_change(make: Callable[..., torch.optim.Optimizer]) -> float:
    """‖θ_perturbed − θ‖ / ‖θ − θ_0‖ after the steps."""
    start = torch.cat([p.detach().flatten() for p in _mlp().parameters()])
    plain = torch.cat([p.flatten() for p in _train(make, perturb=False)])
    perturbed = torch.cat([p.flatten() for p in _train(make, perturb=True)])
    return float((perturbed - plain).norm() / (plain - start).norm())


def _round_off_bases(monkeypatch: pytest.MonkeyPatch) -> None:
    """The refreshes as they were before issue 12: bases as plain ``eigh`` returns them, and
    the power step's QR and sort as LAPACK and ``argsort`` leave them."""

    def power_qr(statistic: torch.Tensor, previous: torch.Tensor, **_: object) -> tuple:
        power = statistic @ previous
        order = torch.argsort((previous * power).sum(dim=0), descending=True)
        return torch.linalg.qr(power[:, order])[0], order

    monkeypatch.setattr(
        matrix,
        "stable_eigenbasis",
        lambda a, reference=None, **options: matrix.symmetric_eigenbasis(a, **options),
    )
    monkeypatch.setattr(matrix, "power_qr_basis", power_qr)


KNOBS = {
    "amortized": {},
    "exact": {"exact": True},
    "power_qr": {"basis_refresh": "power_qr", "refresh_every": 2},
}


@pytest.mark.parametrize("mode", ["amortized", "power_qr"])
def test_soap_is_a_function_of_the_gradients(mode, monkeypatch):
    make = lambda p: SOAP(p, lr=1e-2, eps=1e-4, **KNOBS[mode])  # noqa: E731
    assert relative_change(make) < 1e-10
    _round_off_bases(monkeypatch)
    assert relative_change(make) > 1e-3


def test_soap_at_default_eps_is_within_adams_round_off_floor(monkeypatch):
    make = lambda p: SOAP(p, lr=1e-2)  # noqa: E731
    assert relative_change(make) < DEFAULT_EPS_FLOOR
    _round_off_bases(monkeypatch)
    assert relative_change(make) > 1e-3


def test_exact_soap_is_a_function_of_the_gradients_at_eps_1e_4():
    """Exact mode refreshes every step; its bases then meet the gradient in their range, so
    even plain ``eigh`` bases barely matter here: the check is that ours adds nothing."""
    assert relative_change(lambda p: SOAP(p, lr=1e-2, eps=1e-4, exact=True)) < 1e-10


def _ekfac_change(**knobs: float) -> float:
    """EKFAC's factors come from activations and output gradients, so the perturbation goes
    into the inputs (batch 8: the input factors, 11 x 11, have rank 8 at the first refresh)."""

    def train(perturb: bool) -> torch.Tensor:
        model = _mlp()
        optimizer = KFAC(model, loss="cross_entropy", ekfac=True, lr=1e-2, **knobs)
        data, noise = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
        for _ in range(STEPS):
            x = torch.randn(8, 10, generator=data, dtype=torch.float64)
            y = torch.randint(0, 3, (8,), generator=data)
            if perturb:
                x = x * (1 + PERTURBATION * torch.randn(x.shape, generator=noise, dtype=x.dtype))
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    start = torch.cat([p.detach().flatten() for p in _mlp().parameters()])
    plain, perturbed = train(False), train(True)
    return float((perturbed - plain).norm() / (plain - start).norm())


def test_ekfac_is_a_function_of_its_factors(monkeypatch):
    """EKFAC shares SOAP's refresh (measured 5e-13 at eps 1e-4, 5e-9 at the default eps)."""
    assert _ekfac_change(eps=1e-4) < 1e-10
    assert _ekfac_change() < DEFAULT_EPS_FLOOR
    _round_off_bases(monkeypatch)
    assert _ekfac_change(eps=1e-4) > 1e-3
