"""Compositions of the parts that no named optimizer (and no peer library) offers, the generic
:class:`Layerwise` against the named compositions, and a new transform as one class.

Each composition is checked against an independent computation where one exists: the named
optimizer it reduces to (bit for bit), AdamW, or the preconditioner formed explicitly from the
statistics in float64.
"""

from __future__ import annotations

import copy
import dataclasses
import io
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from optim_cases import assert_same_parameters, make_mlp, regression_batches, train
from torch import nn
from torch.nn import functional

from layerwise.optim import (
    KFAC,
    SOAP,
    AdamPath,
    EigenbasisAdam,
    FirstMoment,
    GradientProducts,
    HeavyBall,
    InverseRoot,
    LayerFactors,
    Layerwise,
    Muon,
    Parts,
    Shampoo,
    Transform,
    kronecker,
    parts,
)
from layerwise.optim.matrix import inverse_root

DTYPE = torch.float64


def classification_batches(steps: int, seed: int = 0, n: int = 32):
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(2, 6, generator=generator, dtype=DTYPE)
    batches = []
    for _ in range(steps):
        x = torch.randn(n, 6, generator=generator, dtype=DTYPE)
        batches.append((x, (x @ teacher.T).argmax(dim=1)))
    return batches


def train_ce(model, optimizer, batches) -> list[float]:
    losses = []
    for x, y in batches:
        optimizer.zero_grad()
        loss = functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def kfac_parts(transform: Transform, **overrides: Any) -> Parts:
    """KFAC's composition (amortized, cross-entropy) with another transform."""
    settings = dict(
        statistics=LayerFactors(loss="cross_entropy", curvature="ggn"),
        transform=transform,
        bias_correction=True,
        refresh_every=3,
        first_moment=FirstMoment(beta=0.0),
    )
    return Parts(**{**settings, **overrides})


def test_layerwise_with_kfac_parts_is_kfac_bit_for_bit():
    """The generic optimizer given KFAC's parts takes KFAC's steps exactly: the named
    optimizer is only the composition."""
    model = make_mlp()
    twin = copy.deepcopy(model)
    kfac = KFAC(
        model,
        lr=0.1,
        loss="cross_entropy",
        curvature="ggn",
        refresh_every=3,
        kl_clip=0,
        damping=1e-3,
        adam_lr_ratio=1.0,
    )
    generic = Layerwise(
        twin.parameters(),
        kfac_parts(InverseRoot(root=1, damping=1e-3)),
        lr=0.1,
        model=twin,
    )
    batches = classification_batches(7)
    train_ce(model, kfac, batches)
    train_ce(twin, generic, batches)
    assert_same_parameters(model, twin, exact=True)


def test_kfac_factors_with_an_inverse_fourth_root_take_the_explicit_root_step():
    """Shampoo's exponent on KFAC's factors: D = (B/c + λ)^{-1/4} ∇ (A/c + λ)^{-1/4}, checked
    against roots computed by hand from the stored factors, and it trains."""
    model = make_mlp(widths=(6, 16, 2))
    damping, lr = 1e-3, 0.05
    optimizer = Layerwise(
        model.parameters(),
        kfac_parts(InverseRoot(root=4, damping=damping), refresh_every=1),
        lr=lr,
        model=model,
    )
    batches = classification_batches(40, seed=3)
    train_ce(model, optimizer, batches[:5])
    layer = model[0]
    x, y = batches[5]
    optimizer.zero_grad()
    functional.cross_entropy(model(x), y).backward()
    before = torch.cat([layer.weight, layer.bias[:, None]], dim=1).detach().clone()
    gradient = torch.cat([layer.weight.grad, layer.bias.grad[:, None]], dim=1).clone()
    optimizer.step()
    state = optimizer.state[layer.weight]
    correction = 1.0 - 0.95 ** state[kronecker.STATISTICS_UPDATES]

    def root(statistic):
        return inverse_root(statistic / correction, 4, damping=damping)

    direction = (
        root(state[kronecker.LEFT_STATISTIC]) @ gradient @ root(state[kronecker.RIGHT_STATISTIC])
    )
    after = torch.cat([layer.weight, layer.bias[:, None]], dim=1).detach()
    torch.testing.assert_close(after, before - lr * direction, rtol=1e-10, atol=1e-12)
    losses = train_ce(model, optimizer, batches[6:])
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])


def test_one_sided_shampoo_is_the_input_side_root_of_summed_products():
    """Shampoo with ``sides="input"``: D_t = G_t (Σ_s G_sᵀG_s + εI)^{-1/2} (the root p = 2 of
    one preconditioned side), against brute force; as Parts it is the same optimizer."""
    generator = torch.Generator().manual_seed(7)
    weight = nn.Parameter(torch.randn(4, 6, generator=generator, dtype=DTYPE))
    twin = nn.Parameter(weight.detach().clone())
    damping, lr = 1e-6, 0.1
    shampoo = Shampoo(
        [weight],
        lr=lr,
        betas=(0.0, 0.999),
        accumulation="sum",
        damping=damping,
        sides="input",
        exact=True,
    )
    generic = Layerwise(
        [twin],
        Parts(
            statistics=GradientProducts(),
            transform=InverseRoot(damping=damping, compute_dtype=None),
            accumulation="sum",
            sides="right",
            first_moment=FirstMoment(beta=0.0),
        ),
        lr=lr,
    )
    right = torch.zeros(6, 6, dtype=DTYPE)
    for _ in range(4):
        grad = torch.randn(4, 6, generator=generator, dtype=DTYPE)
        right += grad.T @ grad
        values, vectors = torch.linalg.eigh(right)
        expected = weight.detach() - lr * grad @ (vectors * (values + damping) ** -0.5) @ vectors.T
        weight.grad, twin.grad = grad.clone(), grad.clone()
        shampoo.step()
        generic.step()
        torch.testing.assert_close(weight.detach(), expected, atol=1e-10, rtol=1e-10)
        assert torch.equal(weight, twin)
    assert kronecker.LEFT_STATISTIC not in shampoo.state[weight]


def soap_on_kfac_factors(max_preconditioner_dim: int = 8192) -> Parts:
    """SOAP on KFAC's factors: Adam in the eigenbasis of B and A, its first moment kept in the
    basis between refreshes (EKFAC keeps it in the original coordinates)."""
    beta1, beta2 = 0.9, 0.99
    return Parts(
        statistics=LayerFactors(loss="mse"),
        transform=EigenbasisAdam(beta2=beta2, epsilon=1e-8, first_moment_decay=beta1),
        refresh_every=5,
        max_preconditioner_dim=max_preconditioner_dim,
        first_moment=FirstMoment(beta=beta1),
        adam=AdamPath(betas=(beta1, beta2)),
        weight_decay=0.1,
    )


def test_soap_on_kfac_factors_with_identity_bases_is_adamw():
    """With every side diagonal (``max_preconditioner_dim=1``) the eigenbases are identities
    and the composition is exactly AdamW."""
    model = make_mlp()
    twin = copy.deepcopy(model)
    optimizer = Layerwise(model.parameters(), soap_on_kfac_factors(1), lr=3e-3, model=model)
    adamw = torch.optim.AdamW(twin.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1)
    batches = regression_batches(8)
    train(model, optimizer, batches)
    train(twin, adamw, batches)
    assert_same_parameters(model, twin, rtol=1e-12, atol=1e-14)


def test_soap_on_kfac_factors_trains():
    model = make_mlp(widths=(6, 16, 16, 2))
    optimizer = Layerwise(model.parameters(), soap_on_kfac_factors(), lr=1e-2, model=model)
    losses = train(model, optimizer, regression_batches(150, n=64))
    assert sum(losses[-10:]) < 0.25 * sum(losses[:10])
    assert optimizer.failure_counts()[kronecker.FAILED_REFRESHES] == 0


@parts.register
@dataclass(frozen=True, kw_only=True)
class SignDescent(Transform):
    """A new transform in one class: :math:`X \\mapsto \\operatorname{sign}(X)` (signSGD on the
    first moment, i.e. a signum-style method), no statistics."""

    uses_statistics = False
    compute_dtype: Any = None

    def init(self, layout, shape, like):
        return {}

    def apply(self, state, direction, *, grad, step):
        return direction.sign()


def test_a_new_transform_is_one_class_and_its_checkpoint_is_plain_data():
    model = make_mlp()
    optimizer = Layerwise(
        model.parameters(),
        Parts(statistics=None, transform=SignDescent(), heavy_ball=HeavyBall(momentum=0.5)),
        lr=1e-3,
    )
    weight = model[0].weight
    before = weight.detach().clone()
    batches = regression_batches(6)
    train(model, optimizer, batches[:1])
    # First step: first moment (β = 0.9, bias-corrected) of one gradient is the gradient.
    torch.testing.assert_close(weight.detach(), before - 1e-3 * weight.grad.sign())
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer)  # weights_only=True: the parts are plain data
    resumed_model = copy.deepcopy(model)
    resumed = Layerwise(resumed_model.parameters(), Parts(transform=SignDescent(), statistics=None))
    resumed.load_state_dict(saved)
    assert resumed.parts(resumed.param_groups[0]).heavy_ball.momentum == 0.5
    train(model, optimizer, batches[1:])
    train(resumed_model, resumed, batches[1:])
    assert_same_parameters(model, resumed_model, exact=True)


def test_parts_round_trip_through_plain_data():
    composed = soap_on_kfac_factors()
    data = composed.to_dict()
    assert Parts.from_dict(data) == composed
    flat = [data]
    while flat:  # only plain values, all the way down
        value = flat.pop()
        if isinstance(value, dict):
            flat.extend(value.values())
        elif isinstance(value, tuple):
            flat.extend(value)
        else:
            assert value is None or type(value) in (str, int, float, bool), value
    with pytest.raises(ValueError, match="unknown part"):
        Parts.from_dict({**data, "part": "Nonsense"})


def test_a_group_may_carry_its_own_parts():
    model = make_mlp()
    first, rest = list(model[0].parameters()), [p for m in model[1:] for p in m.parameters()]
    one_sided = Parts(
        statistics=GradientProducts(), transform=InverseRoot(damping=1e-8), sides="input"
    )
    optimizer = Layerwise(
        [{"params": first, "parts": one_sided}, {"params": rest}],
        Parts(statistics=GradientProducts(), transform=InverseRoot(damping=1e-8)),
        lr=1e-2,
    )
    train(model, optimizer, regression_batches(2))
    assert kronecker.LEFT_STATISTIC not in optimizer.state[model[0].weight]
    assert kronecker.LEFT_STATISTIC in optimizer.state[model[2].weight]


def test_composition_is_cached_and_rebuilt_when_a_knob_changes():
    model = make_mlp()
    optimizer = Shampoo(model.parameters(), lr=1e-2)
    group = optimizer.param_groups[0]
    first = optimizer.parts(group)
    assert optimizer.parts(group) is first
    group["lr"] = 0.5  # read live: no rebuild
    assert optimizer.parts(group) is first
    group["damping"] = 1e-4
    assert optimizer.parts(group).transform.damping == 1e-4
    group["damping"] = -1.0
    with pytest.raises(ValueError, match="Invalid damping"):
        train(model, optimizer, regression_batches(1))


def test_layerwise_refuses_what_is_not_a_composition():
    with pytest.raises(TypeError, match="parts must be a Parts"):
        Layerwise(make_mlp().parameters(), {"transform": "inverse_root"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a statistics part"):
        Parts(transform=InverseRoot(), statistics=None)
    with pytest.raises(ValueError, match="need the model"):
        Layerwise(make_mlp().parameters(), kfac_parts(InverseRoot(root=1)))
    with pytest.raises(ValueError, match="Invalid root"):
        InverseRoot(root=0)


# -- defaults: the fast path for training, full precision for science ----------------------


@pytest.mark.parametrize(
    ("make", "knob"),
    [
        (lambda p: Shampoo(p, lr=1e-2, refresh_every=2, **{}), "precondition_dtype"),
        (lambda p: SOAP(p, lr=1e-2, refresh_every=2), "precondition_dtype"),
        (lambda p: Muon(p, lr=2e-2), "ns_dtype"),
    ],
    ids=["shampoo", "soap", "muon"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_precision_is_bf16_application_for_float32_only(make, knob, dtype):
    """The default ``"auto"`` equals ``"bfloat16"`` for float32 parameters (bit for bit) and the
    parameters' own precision for float64 ones (so the science runs did not change)."""
    batches = regression_batches(6, dtype=dtype)
    runs = {}
    for name in ("auto", "bfloat16", None):
        model = make_mlp(dtype=dtype)
        optimizer = make(model.parameters())
        for group in optimizer.param_groups:
            group[knob] = name
        train(model, optimizer, batches)
        runs[name] = model
    expected = runs["bfloat16"] if dtype == torch.float32 else runs[None]
    other = runs[None] if dtype == torch.float32 else runs["bfloat16"]
    assert_same_parameters(runs["auto"], expected, exact=True)
    assert any(
        not torch.equal(p, q)
        for p, q in zip(runs["auto"].parameters(), other.parameters(), strict=True)
    )


def test_kfac_defaults_take_no_extra_backward_pass_on_a_wide_head(monkeypatch):
    """The default curvature (``empirical``) costs no extra backward pass whatever the output
    width; ``ggn`` takes one per output (ten here); exact mode keeps ``ggn``."""
    calls = []
    original = torch.autograd.grad
    monkeypatch.setattr(
        torch.autograd, "grad", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 10)).double()
    x = torch.randn(32, 6, dtype=DTYPE)
    y = torch.randint(0, 10, (32,))
    for kwargs, passes in (({}, 0), ({"curvature": "ggn"}, 10)):
        calls.clear()
        optimizer = KFAC(model, loss="cross_entropy", **kwargs)
        optimizer.zero_grad()
        functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.remove_hooks()
        assert len(calls) == passes, kwargs
    exact = KFAC(model, loss="cross_entropy", exact=True, damping=1e-3)
    assert exact.param_groups[0]["curvature"] == "ggn"


def test_kfac_takes_a_loss_module_and_refuses_a_summed_loss():
    model = make_mlp()
    twin = copy.deepcopy(model)
    by_module = KFAC(model, loss=nn.MSELoss(), refresh_every=2)
    by_name = KFAC(twin, loss="mse", refresh_every=2)
    batches = regression_batches(4)
    train(model, by_module, batches)
    train(twin, by_name, batches)
    assert_same_parameters(model, twin, exact=True)
    with pytest.raises(ValueError, match=r"reduction='sum'.*pass MSELoss\(reduction='mean'\)"):
        KFAC(make_mlp(), loss=nn.MSELoss(reduction="sum"))
    with pytest.raises(ValueError, match="KFAC supports"):
        KFAC(make_mlp(), loss=nn.L1Loss())


def test_exact_mode_is_resolved_per_param_group():
    model = make_mlp()
    first, rest = list(model[0].parameters()), [p for m in model[1:] for p in m.parameters()]
    optimizer = Shampoo([{"params": first, "exact": True}, {"params": rest}], lr=1e-2)
    exact, amortized = optimizer.param_groups
    assert (exact["refresh_every"], exact["grafting"], exact["precondition_dtype"]) == (
        1,
        "none",
        None,
    )
    assert (amortized["refresh_every"], amortized["grafting"]) == (10, "adam")
    with pytest.raises(ValueError, match="exact=True requires grafting='none'"):
        Shampoo([{"params": first, "exact": True, "grafting": "sgd"}], lr=1e-2)
    before = len(optimizer.param_groups)
    extra = nn.Parameter(torch.zeros(3, 3, dtype=DTYPE))
    with pytest.raises(ValueError, match="exact=True requires"):
        optimizer.add_param_group({"params": [extra], "exact": True, "refresh_every": 5})
    assert len(optimizer.param_groups) == before  # nothing half-added


@pytest.mark.parametrize(
    "make",
    [
        lambda m: Shampoo(m.parameters(), lr=1e-2, refresh_every=2, momentum=0.5),
        lambda m: SOAP(m.parameters(), lr=1e-2, refresh_every=2, basis_refresh="power_qr"),
        lambda m: Muon(m.parameters(), lr=2e-2),
        lambda m: Muon(m.parameters(), lr=2e-2, exact=True),
        lambda m: KFAC(m, loss="mse", curvature="mc_fisher", refresh_every=2),
        lambda m: KFAC(m, loss="mse", exact=True, damping=1e-3),
        lambda m: KFAC(m, loss="mse", ekfac=True, lr=1e-2, refresh_every=2),
    ],
    ids=["shampoo", "soap", "muon", "muon-exact", "kfac", "kfac-exact", "ekfac"],
)
def test_checkpoints_load_with_torch_default_weights_only_and_resume_bit_for_bit(make):
    batches = regression_batches(10, dtype=torch.float32)
    model = make_mlp(dtype=torch.float32)
    optimizer = make(model)
    train(model, optimizer, batches[:5])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer)  # torch's default: weights_only=True
    train(model, optimizer, batches[5:])
    resumed = make_mlp(seed=5, dtype=torch.float32)
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer = make(resumed)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    assert resumed_optimizer.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]
    train(resumed, resumed_optimizer, batches[5:])
    assert_same_parameters(model, resumed, exact=True)


def test_parts_are_frozen():
    composed = soap_on_kfac_factors()
    with pytest.raises(dataclasses.FrozenInstanceError):
        composed.refresh_every = 1  # type: ignore[misc]
