"""KFAC as a training optimizer: resume, failure handling, hooks, and that it trains."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn
from torch.nn import functional

from layerwise.optim import KFAC
from layerwise.optim import kronecker as kr

LOSSES = {"mse": functional.mse_loss, "cross_entropy": functional.cross_entropy}


def mlp(seed: int, dtype=torch.float64, outputs: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, 8, dtype=dtype),
        nn.Tanh(),
        nn.Linear(8, 6, dtype=dtype),
        nn.LayerNorm(6, dtype=dtype),  # not a Linear: Adam path
        nn.Tanh(),
        nn.Linear(6, outputs, dtype=dtype),
    )


def batch(step: int, loss: str, dtype=torch.float64, n: int = 32, outputs: int = 3):
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(n, 4, generator=g, dtype=dtype)
    if loss == "cross_entropy":
        return x, torch.randint(0, outputs, (n,), generator=g)
    return x, torch.randn(n, outputs, generator=g, dtype=dtype)


def train_step(model, opt, step, loss):
    x, y = batch(step, loss)
    opt.zero_grad()
    LOSSES[loss](model(x), y).backward()
    opt.step()


RESUME_CASES = {
    "exact-ggn": dict(curvature="ggn", exact=True, damping=1e-3),
    "amortized-mc": dict(
        curvature="mc_fisher",
        refresh_every=3,
        statistics_every=2,
        momentum=0.9,
        weight_decay=0.01,
        damping_split="pi",
    ),
    "amortized-ekfac-empirical": dict(curvature="empirical", ekfac=True, refresh_every=2),
    "amortized-bf16": dict(curvature="ggn", refresh_every=3, precondition_dtype="bfloat16"),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_state_dict_resumes_bit_for_bit(case):
    options = RESUME_CASES[case]
    loss = "cross_entropy"
    model = mlp(0)
    opt = KFAC(model, lr=0.05, loss=loss, **options)
    for step in range(5):
        train_step(model, opt, step, loss)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed_model = mlp(1)  # different initial values, overwritten by the checkpoint
    resumed_model.load_state_dict(saved["model"])
    resumed = KFAC(resumed_model, lr=0.05, loss=loss, **options)
    resumed.load_state_dict(saved["opt"])
    for step in range(5, 11):
        train_step(model, opt, step, loss)
        train_step(resumed_model, resumed, step, loss)
        for p, q in zip(model.parameters(), resumed_model.parameters(), strict=True):
            assert torch.equal(p, q), f"{case}: diverged at step {step}"


def test_non_finite_gradient_skips_the_step():
    model = mlp(2)
    opt = KFAC(model, lr=0.1, loss="mse", curvature="ggn")
    train_step(model, opt, 0, "mse")
    before = [p.detach().clone() for p in model.parameters()]
    x, y = batch(1, "mse")
    opt.zero_grad()
    functional.mse_loss(model(x), y).backward()
    model[2].weight.grad[0, 0] = math.nan
    with pytest.warns(RuntimeWarning, match="skipped"):
        opt.step()
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)
    assert opt.failure_counts()["skipped_steps"] == len(opt.state)
    train_step(model, opt, 2, "mse")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_failed_inversion_keeps_the_previous_inverse(monkeypatch):
    model = mlp(3)
    opt = KFAC(model, lr=0.1, loss="mse", curvature="ggn", refresh_every=1)
    train_step(model, opt, 0, "mse")
    state = opt.state[model[0].weight]
    previous = {
        key: state[key].clone() for key in (kr.LEFT_PRECONDITIONER, kr.RIGHT_PRECONDITIONER)
    }

    def failing_cholesky(a, **kwargs):
        return torch.linalg.cholesky(torch.eye(a.shape[-1], dtype=a.dtype)), torch.tensor(1)

    def failing_eigh(a, **kwargs):
        raise torch.linalg.LinAlgError("injected")

    monkeypatch.setattr(torch.linalg, "cholesky_ex", failing_cholesky)
    monkeypatch.setattr(torch.linalg, "eigh", failing_eigh)
    with pytest.warns(RuntimeWarning, match="refresh failed"):
        train_step(model, opt, 1, "mse")
    monkeypatch.undo()
    for key, value in previous.items():
        assert torch.equal(state[key], value)
    linear_layers = sum(isinstance(m, nn.Linear) for m in model)
    assert opt.failure_counts()[kr.FAILED_REFRESHES] == linear_layers
    assert all(torch.isfinite(p).all() for p in model.parameters())
    train_step(model, opt, 2, "mse")  # recovers
    assert state[kr.CONSECUTIVE_FAILURES] == 0
    assert not torch.equal(state[kr.RIGHT_PRECONDITIONER], previous[kr.RIGHT_PRECONDITIONER])


def test_statistics_are_only_computed_on_statistics_steps(monkeypatch):
    model = mlp(4)
    opt = KFAC(model, lr=0.1, loss="mse", curvature="ggn", statistics_every=3)
    calls = []
    original = torch.autograd.grad
    monkeypatch.setattr(
        torch.autograd, "grad", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    for step in range(6):
        train_step(model, opt, step, "mse")
    # ggn with 3 outputs: 3 backward passes on steps 1 and 4 only.
    assert len(calls) == 6
    assert opt.state[model[0].weight]["statistics_updates"] == 2


def test_remove_hooks_and_missing_capture():
    model = mlp(5)
    opt = KFAC(model, lr=0.1, loss="mse", curvature="ggn")
    opt.remove_hooks()
    x, y = batch(0, "mse")
    functional.mse_loss(model(x), y).backward()
    with pytest.raises(RuntimeError, match="no factors were captured"):
        opt.step()


def test_evaluation_forward_between_backward_and_step_is_harmless():
    model, twin = mlp(6), mlp(6)
    opt = KFAC(model, lr=0.1, loss="mse", curvature="empirical", exact=True, damping=1e-3)
    reference = KFAC(twin, lr=0.1, loss="mse", curvature="empirical", exact=True, damping=1e-3)
    x, y = batch(0, "mse")
    for m, o in ((model, opt), (twin, reference)):
        o.zero_grad()
        functional.mse_loss(m(x), y).backward()
    with torch.no_grad():
        model(torch.randn(5, 4, dtype=torch.float64))
    opt.step()
    reference.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("curvature", ["empirical", "mc_fisher", "ggn"])
def test_trains_a_small_mlp(curvature, loss):
    """Amortized defaults on a learnable task: the full-data loss drops well below its start."""
    torch.manual_seed(0)
    outputs = 3 if loss == "cross_entropy" else 1  # the regressor has a scalar output factor
    model = mlp(7, dtype=torch.float32, outputs=outputs)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(256, 4, generator=g)
    w = torch.randn(4, 3, generator=g)
    y = (x @ w).argmax(1) if loss == "cross_entropy" else torch.sin(x @ w[:, :1])
    opt = KFAC(model, loss=loss, curvature=curvature)
    with torch.no_grad():
        start = LOSSES[loss](model(x), y).item()
    for _ in range(60):
        index = torch.randint(0, 256, (64,), generator=g)
        opt.zero_grad()
        LOSSES[loss](model(x[index]), y[index]).backward()
        opt.step()
    with torch.no_grad():
        end = LOSSES[loss](model(x), y).item()
    assert end < 0.25 * start, (start, end)
    assert opt.failure_counts() == {kr.FAILED_REFRESHES: 0, "skipped_steps": 0}


def test_biases_in_their_own_group_stay_folded_and_take_their_groups_settings():
    """The usual "no weight decay on biases" groups: the bias stays folded into its layer's
    block (same factors, same direction), and only the weights decay."""
    torch.manual_seed(0)
    model = mlp(9)
    twin = copy.deepcopy(model)
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
    lr, decay = 0.1, 0.5
    grouped = KFAC(
        model,
        lr=lr,
        loss="mse",
        params=[{"params": weights, "weight_decay": decay}, {"params": biases}],
        adam_lr_ratio=1.0,  # the LayerNorm's Adam path at the same lr as the formula below
    )
    single = KFAC(twin, lr=lr, loss="mse", adam_lr_ratio=1.0)
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randn(16, model[-1].out_features, dtype=torch.float64)
    before = [p.detach().clone() for p in model.parameters()]
    for m, optimizer in ((model, grouped), (twin, single)):
        optimizer.zero_grad()
        functional.mse_loss(m(x), y).backward()
        optimizer.step()
    for (name, p), q, start in zip(
        model.named_parameters(), twin.parameters(), before, strict=True
    ):
        expected = q - lr * decay * start if name.endswith("weight") else q
        torch.testing.assert_close(p, expected, rtol=1e-12, atol=1e-14, msg=name)
    assert kr.LEFT_STATISTIC in grouped.state[model[0].weight]
    assert model[0].bias not in grouped.state  # folded: its state lives on the weight
    assert copy.deepcopy(KFAC(mlp(9), loss="mse").defaults)["exact"] is False


def test_added_param_group_is_preconditioned():
    model = mlp(10)
    last = model[5]
    opt = KFAC(model, lr=0.1, loss="mse", params=[p for p in model[:5].parameters()])
    opt.add_param_group({"params": list(last.parameters()), "lr": 0.05})
    train_step(model, opt, 0, "mse")
    assert kr.RIGHT_STATISTIC in opt.state[last.weight]


@pytest.mark.parametrize("curvature", ["empirical", "ggn"])
def test_no_step_keeps_its_graph_alive(curvature):
    """Regression: a hook holding the model output made a cycle through autograd that kept
    every step's graph (and its activations) alive."""
    import gc
    import weakref

    model = mlp(11)
    opt = KFAC(model, loss="mse", curvature=curvature)
    x = torch.randn(16, 4, dtype=torch.float64)
    outputs = []
    for _ in range(3):
        opt.zero_grad()
        out = model(x)
        outputs.append(weakref.ref(out))
        functional.mse_loss(out, torch.zeros_like(out)).backward()
        opt.step()
        del out
    gc.collect()
    assert all(ref() is None for ref in outputs)
