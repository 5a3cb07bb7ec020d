"""torch.optim conventions every optimizer follows: ``maximize``, tensor learning rates,
low-precision parameters and autocast, gradient accumulation over micro-batches (KFAC's
factors included), momentum-cycling schedulers."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from optim_cases import assert_same_parameters, make_mlp, regression_batches, train
from torch import nn
from torch.nn import functional

from layerwise.optim import KFAC, SOAP, Muon, Shampoo, kronecker

FACTORIES = {
    "shampoo": lambda m, **k: Shampoo(m.parameters(), lr=1e-2, refresh_every=2, **k),
    "soap": lambda m, **k: SOAP(m.parameters(), lr=1e-2, refresh_every=2, **k),
    "muon": lambda m, **k: Muon(m.parameters(), lr=2e-2, **k),
    "kfac": lambda m, **k: KFAC(m, loss="mse", lr=0.1, refresh_every=2, **k),
    "kfac-ggn": lambda m, **k: KFAC(m, loss="mse", curvature="ggn", refresh_every=2, **k),
}
CASES = pytest.mark.parametrize("name", FACTORIES)


@CASES
def test_maximize_on_the_negated_loss_is_minimize_bit_for_bit(name):
    model = make_mlp()
    twin = copy.deepcopy(model)
    minimizing = FACTORIES[name](model)
    maximizing = FACTORIES[name](twin, maximize=True)
    for x, y in regression_batches(6):
        for m, optimizer, sign in ((model, minimizing, 1.0), (twin, maximizing, -1.0)):
            optimizer.zero_grad()
            (sign * functional.mse_loss(m(x), y)).backward()
            optimizer.step()
    assert_same_parameters(model, twin, exact=True)


@CASES
def test_a_one_element_tensor_lr_is_the_float_lr(name):
    model = make_mlp()
    twin = copy.deepcopy(model)
    by_float = FACTORIES[name](model)
    by_tensor = FACTORIES[name](twin)
    for group in by_tensor.param_groups:
        group["lr"] = torch.tensor([group["lr"]], dtype=torch.float64)  # the same number
    batches = regression_batches(6)
    train(model, by_float, batches)
    train(twin, by_tensor, batches)
    assert_same_parameters(model, twin, exact=True)


@pytest.mark.parametrize("lr", [float("inf"), float("nan"), -1.0, torch.ones(2)])
def test_impossible_learning_rates_are_refused(lr):
    with pytest.raises(ValueError, match="Invalid lr"):
        Shampoo(make_mlp().parameters(), lr=lr)


@CASES
def test_bfloat16_parameters_train_with_float32_statistics(name):
    """bf16 parameters: statistics, decompositions and the Kronecker path's moments in float32
    (no bf16 eigh / Cholesky kernels), the update rounded to bf16; it trains as well as the
    float32 run up to bf16 resolution, and a checkpoint keeps the float32 state."""
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        model = make_mlp(widths=(6, 16, 16, 2), dtype=dtype)
        optimizer = FACTORIES[name](model)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            losses = train(model, optimizer, regression_batches(60, n=64, dtype=dtype))
        results[dtype] = sum(losses[-10:]) / sum(losses[:10])
    assert results[torch.bfloat16] < max(0.7, 1.5 * results[torch.float32]), results
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in model.parameters())
    state = optimizer.state[model[0].weight]
    statistics = [state[k] for k in kronecker.STATISTIC_KEYS if k in state]
    assert all(s.dtype == torch.float32 for s in statistics)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    resumed = FACTORIES[name](copy.deepcopy(model))
    resumed.load_state_dict(torch.load(buffer))
    resumed_state = next(iter(resumed.state.values()))
    assert {k: v.dtype for k, v in resumed_state.items() if isinstance(v, torch.Tensor)} == {
        k: v.dtype for k, v in next(iter(optimizer.state.values())).items() if torch.is_tensor(v)
    }


@CASES
def test_autocast_leaves_the_statistics_in_float32(name):
    """Under bf16 autocast (activations and output gradients in bf16) the statistics stay
    float32 and training progresses as without autocast, up to bf16 resolution."""
    results = {}
    for autocast in (False, True):
        torch.manual_seed(0)
        model = make_mlp(widths=(6, 16, 16, 2), dtype=torch.float32)
        optimizer = FACTORIES[name](model)
        losses = []
        for x, y in regression_batches(60, n=64, dtype=torch.float32):
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = functional.mse_loss(model(x).float(), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        results[autocast] = sum(losses[-10:]) / sum(losses[:10])
    assert results[True] < max(0.7, 1.5 * results[False]), results
    state = optimizer.state[model[0].weight]
    assert all(state[k].dtype == torch.float32 for k in kronecker.STATISTIC_KEYS if k in state)


def _two_micro_batches(model, optimizer, halves):
    optimizer.zero_grad()
    for xs, ys in halves:
        (functional.mse_loss(model(xs), ys) / len(halves)).backward()
    optimizer.step()


def _factors(optimizer, model):
    return [
        optimizer.state[layer.weight][key]
        for layer in model
        if isinstance(layer, nn.Linear)
        for key in kronecker.STATISTIC_KEYS
    ]


@pytest.mark.parametrize("curvature", ["empirical", "ggn"])
def test_kfac_factors_of_micro_batches_are_those_of_their_union(curvature):
    """Two micro-batches (each mean loss halved, the usual convention), then one step: the
    factors, and so the step, equal one step on the whole batch (float64, 1e-10)."""
    model = make_mlp()
    twin = copy.deepcopy(model)
    whole = KFAC(model, loss="mse", curvature=curvature, statistics_batch=None)
    parts = KFAC(twin, loss="mse", curvature=curvature, statistics_batch=None)
    x, y = regression_batches(1, n=20)[0]
    train(model, whole, [(x, y)])
    _two_micro_batches(twin, parts, [(x[:10], y[:10]), (x[10:], y[10:])])
    for mine, expected in zip(_factors(parts, twin), _factors(whole, model), strict=True):
        torch.testing.assert_close(mine, expected, rtol=1e-10, atol=1e-12)
    assert_same_parameters(model, twin, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("curvature", ["empirical", "ggn"])
def test_kfac_statistics_batch_takes_the_first_samples_of_each_micro_batch(curvature):
    """With ``statistics_batch=k`` the factors of two micro-batches are those of the batch made
    of their first k samples each."""
    x, y = regression_batches(1, n=20)[0]
    first = [*range(4), *range(10, 14)]
    factors = []
    for halves, statistics_batch in (
        ([(x[:10], y[:10]), (x[10:], y[10:])], 4),
        ([(x[first], y[first])], None),
    ):
        model = make_mlp()
        optimizer = KFAC(model, loss="mse", curvature=curvature, statistics_batch=statistics_batch)
        _two_micro_batches(model, optimizer, halves)
        factors.append(_factors(optimizer, model))
    input_factors = [f for i, f in enumerate(zip(*factors, strict=True)) if i % 2 == 1]
    for mine, expected in input_factors:
        torch.testing.assert_close(mine, expected, rtol=1e-10, atol=1e-12)
    if curvature == "ggn":  # B depends on the samples only (the empirical B on the gradients)
        for mine, expected in zip(*factors, strict=True):
            torch.testing.assert_close(mine, expected, rtol=1e-10, atol=1e-12)


def test_kfac_ignores_forward_passes_that_are_not_back_propagated():
    model = make_mlp()
    twin = copy.deepcopy(model)
    plain = KFAC(model, loss="mse", curvature="ggn")
    evaluated = KFAC(twin, loss="mse", curvature="ggn")
    batches = regression_batches(3)
    for x, y in batches[:2]:
        for m, optimizer in ((model, plain), (twin, evaluated)):
            optimizer.zero_grad()
            functional.mse_loss(m(x), y).backward()
            if m is twin:
                twin(batches[2][0]).sum()  # gradients enabled, never back-propagated
            optimizer.step()
    assert_same_parameters(model, twin, exact=True)


def test_muon_keeps_its_matrix_momentum_under_the_momentum_key():
    """A group's ``momentum`` is the matrix momentum, which is what OneCycleLR cycles
    (checkpoints of the earlier ``muon_momentum`` key are migrated)."""
    model = make_mlp()
    optimizer = Muon(model.parameters(), lr=2e-2)
    optimizer.param_groups[0]["momentum"] = 0.5
    assert optimizer.parts(optimizer.param_groups[0]).first_moment.beta == 0.5
    saved = optimizer.state_dict()
    saved["param_groups"][0]["muon_momentum"] = saved["param_groups"][0].pop("momentum")
    fresh = Muon(model.parameters(), lr=2e-2)
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["momentum"] == 0.5 and "muon_momentum" not in fresh.param_groups[0]


def test_one_cycle_lr_cycles_muons_matrix_momentum():
    model = make_mlp()
    optimizer = Muon(model.parameters(), lr=2e-2)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=10)
    seen = set()
    for x, y in regression_batches(5):
        train(model, optimizer, [(x, y)])
        scheduler.step()
        seen.add(optimizer.parts(optimizer.param_groups[0]).first_moment.beta)
    assert len(seen) == 5 and all(0.85 <= m <= 0.95 for m in seen)
