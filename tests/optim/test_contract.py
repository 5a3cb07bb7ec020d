"""The torch.optim contract for every optimizer of the package, in both modes."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from optim_cases import assert_same_parameters, make_mlp, regression_batches, train
from torch import nn

from layerwise.optim import SOAP, FailurePolicy, InverseRoot, Muon, Shampoo, kronecker
from layerwise.optim.kronecker import SKIPPED_STEPS

# Cases as data: (id, factory). Refresh every 3 steps in amortized mode so a resume lands
# between refreshes.
OPTIMIZERS = {
    "shampoo": lambda p: Shampoo(p, lr=1e-2, refresh_every=3, momentum=0.5, weight_decay=1e-3),
    "shampoo-exact": lambda p: Shampoo(p, lr=1e-2, damping=1e-8, exact=True),
    "shampoo-sum-sgd": lambda p: Shampoo(
        p,
        lr=1e-2,
        betas=(0.0, 0.999),
        accumulation="sum",
        grafting="sgd",
        refresh_every=2,
        nesterov=True,
        momentum=0.9,
    ),
    "shampoo-bf16": lambda p: Shampoo(
        p, lr=1e-2, refresh_every=3, damping=1e-6, precondition_dtype="bfloat16"
    ),
    "soap": lambda p: SOAP(p, lr=1e-2, refresh_every=3),
    "soap-bf16": lambda p: SOAP(p, lr=1e-2, refresh_every=3, precondition_dtype="bfloat16"),
    "soap-power-qr": lambda p: SOAP(p, lr=1e-2, refresh_every=2, basis_refresh="power_qr"),
    "soap-exact": lambda p: SOAP(p, lr=1e-2, exact=True),
    "muon": lambda p: Muon(p, lr=2e-2, adam_lr_ratio=0.5, weight_decay=1e-3),
    "muon-exact": lambda p: Muon(p, lr=2e-2, adam_lr_ratio=0.5, exact=True),
}
CASES = pytest.mark.parametrize("factory", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())


@CASES
def test_state_dict_resume_is_bit_for_bit(factory):
    batches = regression_batches(12)
    model = make_mlp()
    optimizer = factory(model.parameters())
    train(model, optimizer, batches[:5])
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    train(model, optimizer, batches[5:])

    resumed = make_mlp(seed=123)  # different initial values, overwritten by the checkpoint
    resumed.load_state_dict(saved_model)
    resumed_optimizer = factory(resumed.parameters())
    resumed_optimizer.load_state_dict(saved_optimizer)
    train(resumed, resumed_optimizer, batches[5:])
    assert_same_parameters(model, resumed, exact=True)


@CASES
def test_trains_a_small_mlp_well_below_its_initial_loss(factory):
    model = make_mlp(widths=(6, 16, 16, 2))
    optimizer = factory(model.parameters())
    batches = regression_batches(300, n=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no refresh failure and no skipped step on this task
        losses = train(model, optimizer, batches)
    start = sum(losses[:5]) / 5
    end = sum(losses[-10:]) / 10
    assert end < 0.25 * start, f"loss {start:.3g} -> {end:.3g}"


@CASES
def test_nan_gradient_skips_the_step_and_leaves_parameters_finite(factory):
    model = make_mlp()
    optimizer = factory(model.parameters())
    batches = regression_batches(4)
    train(model, optimizer, batches[:2])
    before = copy.deepcopy(model.state_dict())
    optimizer.zero_grad()
    nn.functional.mse_loss(model(batches[2][0]), batches[2][1]).backward()
    model[0].weight.grad[0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="non-finite gradient"):
        optimizer.step()
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert optimizer.failure_counts()[SKIPPED_STEPS] > 0
    train(model, optimizer, batches[3:])
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", ["shampoo", "shampoo-exact", "soap", "soap-exact"])
def test_failed_decomposition_keeps_previous_preconditioner_and_is_counted(name, monkeypatch):
    model = make_mlp()
    optimizer = OPTIMIZERS[name](model.parameters())
    batches = regression_batches(6)
    train(model, optimizer, batches[:3])
    weight_state = optimizer.state[model[0].weight]
    kept = weight_state[kronecker.LEFT_PRECONDITIONER].clone()

    def broken(*args, **kwargs):
        raise torch.linalg.LinAlgError("injected failure")

    # eigh, and the QR of SOAP's power-iteration refresh.
    monkeypatch.setattr(torch.linalg, "eigh", broken)
    monkeypatch.setattr(torch.linalg, "qr", broken)
    with pytest.warns(RuntimeWarning, match="refresh failed"):
        train(model, optimizer, batches[3:])
    assert optimizer.failure_counts()[kronecker.FAILED_REFRESHES] > 0
    assert torch.equal(weight_state[kronecker.LEFT_PRECONDITIONER], kept)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_too_many_consecutive_failures_raise(monkeypatch):
    policy = FailurePolicy(max_consecutive_failures=1)
    transform = InverseRoot(root=4)
    like = torch.zeros(3, 3, dtype=torch.float64)
    layout = (kronecker.Side.DENSE, kronecker.Side.DENSE)
    state = {
        **kronecker.init_statistics(layout, (3, 3), like),
        **transform.init(layout, (3, 3), like),
    }
    state.update({kronecker.FAILED_REFRESHES: 0, kronecker.CONSECUTIVE_FAILURES: 0})
    monkeypatch.setattr(
        torch.linalg, "eigh", lambda a: (_ for _ in ()).throw(torch.linalg.LinAlgError("x"))
    )
    with pytest.warns(RuntimeWarning):
        assert policy.refresh(transform, state, correction=1.0) is False
    with pytest.raises(kronecker.DecompositionError, match="2 consecutive"):
        policy.refresh(transform, state, correction=1.0)


@CASES
def test_lr_scheduler_drives_the_step_size(factory):
    model = make_mlp()
    optimizer = factory(model.parameters())
    # LambdaLR sets lr = base_lr * lambda(0) = 0 at construction.
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.0)
    before = copy.deepcopy(model.state_dict())
    train(model, optimizer, regression_batches(2))
    weight_decay_free = all(g.get("weight_decay", 0.0) == 0.0 for g in optimizer.param_groups)
    for name, value in model.state_dict().items():
        if weight_decay_free:
            assert torch.equal(value, before[name]), name
        else:  # lr = 0 also switches off the decoupled decay
            torch.testing.assert_close(value, before[name], atol=0, rtol=0)


def test_per_group_settings_are_honoured():
    model = make_mlp()
    frozen, trained = list(model[0].parameters()), list(model[2].parameters())
    optimizer = Shampoo(
        [{"params": frozen, "lr": 0.0}, {"params": trained, "refresh_every": 1}], lr=1e-2
    )
    before = [p.detach().clone() for p in frozen]
    train(model, optimizer, regression_batches(3))
    assert all(torch.equal(p, q) for p, q in zip(frozen, before, strict=True))
    assert optimizer.param_groups[1]["refresh_every"] == 1
    assert optimizer.param_groups[0]["refresh_every"] == 10


def test_conv_kernel_is_preconditioned_as_an_output_by_rest_matrix():
    conv = nn.Conv2d(2, 3, kernel_size=2).double()
    optimizer = Shampoo(conv.parameters(), lr=1e-2)
    conv(torch.randn(4, 2, 5, 5, dtype=torch.float64)).square().mean().backward()
    optimizer.step()
    state = optimizer.state[conv.weight]
    assert state[kronecker.LEFT_STATISTIC].shape == (3, 3)
    assert state[kronecker.RIGHT_STATISTIC].shape == (8, 8)  # 2 channels x 2 x 2 kernel


def test_large_side_falls_back_to_a_diagonal_statistic():
    weight = nn.Parameter(torch.randn(3, 40, dtype=torch.float64))
    optimizer = Shampoo([weight], lr=1e-2, max_preconditioner_dim=16)
    weight.grad = torch.randn(3, 40, dtype=torch.float64)
    optimizer.step()
    state = optimizer.state[weight]
    assert state[kronecker.LEFT_STATISTIC].shape == (3, 3)
    assert state[kronecker.RIGHT_STATISTIC].shape == (40,)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda p: Shampoo(p, lr=-1.0), "Invalid lr"),
        (lambda p: Shampoo(p, betas=(0.9, 1.5)), "Invalid betas"),
        (lambda p: Shampoo(p, refresh_every=0), "Invalid refresh_every"),
        (lambda p: Shampoo(p, exact=True, grafting="adam"), "exact=True requires grafting"),
        (lambda p: SOAP(p, exact=True, refresh_every=10), "exact=True requires refresh_every"),
        (lambda p: Muon(p, momentum=1.0), "Invalid momentum"),
        (lambda p: Muon(p, exact=True, polar="newton_schulz"), "exact=True requires polar"),
        (lambda p: Shampoo(p, grafting="adagrad"), "adagrad"),
        (lambda p: Shampoo(p, damping=-1.0), "Invalid damping"),
    ],
)
def test_bad_hyperparameters_are_refused_by_name(factory, message):
    with pytest.raises(ValueError, match=message):
        factory(make_mlp().parameters())


def test_checkpoint_without_a_newer_knob_loads_with_its_default():
    model = make_mlp()
    optimizer = Shampoo(model.parameters(), lr=1e-2)
    train(model, optimizer, regression_batches(2))
    saved = copy.deepcopy(optimizer.state_dict())
    for group in saved["param_groups"]:
        del group["statistics_every"]  # as if written before the knob existed
    fresh = Shampoo(model.parameters(), lr=1e-2)
    fresh.load_state_dict(saved)
    assert all(g["statistics_every"] == 1 for g in fresh.param_groups)
    train(model, fresh, regression_batches(2))
