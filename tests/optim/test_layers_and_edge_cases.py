"""What the optimizers do with the layers people use (padding variants, attention, layers they
cannot precondition) and with edge cases (empty parameters and batches, overflowing
statistics, rank-deficient and failing polar factors)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from optim_cases import make_mlp, regression_batches, train
from torch import nn
from torch.func import jacrev
from torch.nn import functional

from layerwise.optim import KFAC, SOAP, Muon, Shampoo, kronecker
from layerwise.optim.matrix import polar_svd

DTYPE = torch.float64


# -- convolutions with every padding -------------------------------------------------------


def _explicit_factors(conv: nn.Conv2d, head: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """(B, A) of the empirical KFAC factors by definition: the patches of the input padded as
    the layer pads it, and per-position output gradients of the per-sample loss."""
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    padded = functional.pad(x, conv._reversed_padding_repeated_twice, mode=mode)
    out = conv(x).detach()
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    n, _, height, width = out.shape
    a_sum = torch.zeros(conv.in_channels * kh * kw + 1, conv.in_channels * kh * kw + 1, dtype=DTYPE)
    b_sum = torch.zeros(conv.out_channels, conv.out_channels, dtype=DTYPE)
    for i in range(n):

        def sample_loss(s, i=i):
            return functional.mse_loss(head(s[None]), y[i : i + 1], reduction="sum") / y.shape[1]

        grads = jacrev(sample_loss)(out[i])  # (channels, H, W)
        for p in range(height):
            for q in range(width):
                patch = padded[i, :, p * sh : p * sh + kh, q * sw : q * sw + kw].reshape(-1)
                a_bar = torch.cat([patch, torch.ones(1, dtype=DTYPE)])
                a_sum += torch.outer(a_bar, a_bar)
                g = grads[:, p, q]
                b_sum += torch.outer(g, g)
    return b_sum / n, a_sum / (n * height * width)


@pytest.mark.parametrize(
    ("stride", "padding", "padding_mode"),
    [(1, "same", "zeros"), (1, "valid", "zeros"), (2, 1, "reflect"), (1, 2, "circular")],
)
def test_conv_factors_with_string_padding_and_padding_modes_match_the_definition(
    stride, padding, padding_mode
):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=stride, padding=padding, padding_mode=padding_mode).double()
    x = torch.randn(4, 2, 6, 6, dtype=DTYPE)
    width = conv(x).shape[1:].numel()
    head = nn.Sequential(nn.Flatten(), nn.Linear(width, 2)).double()
    model = nn.Sequential(conv, head)
    y = torch.randn(4, 2, dtype=DTYPE)
    b, a = _explicit_factors(conv, head, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # supported: no fallback warning
        optimizer = KFAC(model, loss="mse", curvature="empirical", exact=True, damping=1e-3)
    optimizer.zero_grad()
    functional.mse_loss(model(x), y).backward()
    optimizer.step()
    state = optimizer.state[conv.weight]
    torch.testing.assert_close(state[kronecker.LEFT_STATISTIC], b, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(state[kronecker.RIGHT_STATISTIC], a, rtol=1e-10, atol=1e-14)


def test_layers_kfac_cannot_precondition_are_named_in_one_warning():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(36, 2))
    with pytest.warns(UserWarning, match=r"Adam path: 0 \(a grouped convolution"):
        optimizer = KFAC(model, loss="mse")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        KFAC(copy.deepcopy(model), loss="mse", skip_layers=["0"])  # listed: no warning
    optimizer.zero_grad()
    functional.mse_loss(model(torch.randn(3, 2, 5, 5)), torch.zeros(3, 2)).backward()
    optimizer.step()
    assert kronecker.LEFT_STATISTIC not in optimizer.state[model[0].weight]
    assert kronecker.LEFT_STATISTIC in optimizer.state[model[2].weight]


# -- attention, excluded layers, Adam-path groups -----------------------------------------


def test_attention_with_separate_kdim_vdim_weights_takes_the_adam_path_with_a_warning():
    """Separate q/k/v weights share a packed bias: no Kronecker block; the warning names it.
    (Self-attention with packed weights is preconditioned: tests/optim/test_kfac_attention.py.)"""
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {"attention": nn.MultiheadAttention(8, 2, kdim=6, vdim=5), "head": nn.Linear(8, 2)}
    )
    with pytest.warns(UserWarning, match=r"attention \(nn.MultiheadAttention with kdim/vdim"):
        optimizer = KFAC(model, loss="mse")
    assert [layer is model["head"] for layer in optimizer._source.layers] == [True]


def test_skip_layers_by_name_or_type_take_the_adam_path():
    model = make_mlp(widths=(6, 8, 5, 2))
    by_name = KFAC(model, loss="mse", skip_layers=["2"])
    by_type = KFAC(copy.deepcopy(model), loss="mse", skip_layers=[nn.Linear])
    assert [layer is model[2] for layer in by_name._source.layers] == [False, False]
    assert by_type._source.layers == []


@pytest.mark.parametrize(
    "make",
    [
        lambda groups: Muon(groups, lr=2e-2, adam_lr_ratio=0.5, adam_betas=(0.9, 0.99)),
        lambda groups: Shampoo(groups, lr=1e-2, betas=(0.9, 0.99)),
    ],
    ids=["muon", "shampoo"],
)
def test_a_group_with_preconditioned_false_is_adamw(make):
    """The group knob ``preconditioned=False`` routes a group's matrices to the Adam path
    (embeddings, heads): exactly AdamW at ``lr * adam_lr_ratio``."""
    model = make_mlp()
    twin = copy.deepcopy(model)
    optimizer = make(
        [
            {"params": [p for m in model[:4] for p in m.parameters()]},
            {"params": list(model[4].parameters()), "preconditioned": False},
        ]
    )
    head = optimizer.param_groups[1]
    lr = head["lr"] * optimizer.parts(head).adam.lr_ratio
    adamw = torch.optim.AdamW(twin[4].parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    batches = regression_batches(4)
    for x, y in batches:
        for m, o in ((model, optimizer), (twin, adamw)):
            o.zero_grad()
            functional.mse_loss(m(x), y).backward()
            o.step()
        # Same head gradients in both runs: reset the twin's body to the model's.
        with torch.no_grad():
            for p, q in zip(model[:4].parameters(), twin[:4].parameters(), strict=True):
                q.copy_(p)
        for p, q in zip(model[4].parameters(), twin[4].parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    assert kronecker.LEFT_STATISTIC not in optimizer.state[model[4].weight]
    assert kronecker.EXP_AVG_SQ in optimizer.state[model[4].weight]


# -- edge cases ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda m: Shampoo(m.parameters(), lr=1e-2),
        lambda m: SOAP(m.parameters(), lr=1e-2),
        lambda m: Muon(m.parameters(), lr=2e-2),
        lambda m: KFAC(m, loss="mse"),
    ],
    ids=["shampoo", "soap", "muon", "kfac"],
)
def test_empty_parameters_are_left_alone(make):
    model = nn.Sequential(nn.Linear(0, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    optimizer = make(model)
    for _ in range(2):
        optimizer.zero_grad()
        functional.mse_loss(
            model(torch.randn(8, 0, dtype=DTYPE)), torch.ones(8, 2, dtype=DTYPE)
        ).backward()
        optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model[0].weight not in optimizer.state


def test_kfac_skips_the_statistics_of_an_empty_batch():
    model = make_mlp()
    optimizer = KFAC(model, loss="mse", refresh_every=1)
    train(model, optimizer, regression_batches(2))
    state = optimizer.state[model[0].weight]
    kept = state[kronecker.LEFT_STATISTIC].clone(), state[kronecker.STATISTICS_UPDATES]
    optimizer.zero_grad()
    model(torch.zeros(0, 6, dtype=DTYPE)).sum().backward()  # a summed loss: zero gradient
    optimizer.step()
    assert torch.equal(state[kronecker.LEFT_STATISTIC], kept[0])
    assert state[kronecker.STATISTICS_UPDATES] == kept[1]


def test_overflowing_statistics_restart_instead_of_failing_forever():
    weight = nn.Parameter(torch.randn(4, 5))
    optimizer = Shampoo([weight], lr=1e-2, refresh_every=1)
    weight.grad = torch.full((4, 5), 1e20)  # finite, but its squares overflow float32
    with pytest.warns(RuntimeWarning, match="overflowed"):
        optimizer.step()
    for _ in range(3):
        weight.grad = torch.randn(4, 5)
        optimizer.step()
    state = optimizer.state[weight]
    assert torch.isfinite(state[kronecker.LEFT_STATISTIC]).all()
    assert torch.isfinite(weight).all()


def test_exact_polar_maps_the_null_space_to_zero():
    """The exact Muon step of a rank-1 gradient is rank 1 (u vᵀ), and a zero gradient moves
    nothing."""
    u, v = torch.randn(6, 1, dtype=DTYPE), torch.randn(1, 4, dtype=DTYPE)
    polar = polar_svd(u @ v)
    expected = (u / u.norm()) @ (v / v.norm())
    torch.testing.assert_close(polar, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(polar_svd(torch.zeros(3, 5, dtype=DTYPE)), torch.zeros(3, 5, dtype=DTYPE))
    weight = nn.Parameter(torch.randn(3, 5, dtype=DTYPE))
    before = weight.detach().clone()
    optimizer = Muon([weight], lr=0.1, exact=True)
    weight.grad = torch.zeros(3, 5, dtype=DTYPE)
    optimizer.step()
    assert torch.equal(weight, before)


def test_a_failed_svd_is_counted_and_the_step_still_taken(monkeypatch):
    weight = nn.Parameter(torch.randn(3, 5, dtype=DTYPE))
    optimizer = Muon([weight], lr=0.1, exact=True)
    weight.grad = torch.randn(3, 5, dtype=DTYPE)
    expected = polar_svd(weight.grad.clone())

    def broken(*args, **kwargs):
        raise torch.linalg.LinAlgError("injected")

    monkeypatch.setattr(torch.linalg, "svd", broken)
    before = weight.detach().clone()
    with pytest.warns(RuntimeWarning, match="SVD failed"):
        optimizer.step()
    assert optimizer.failure_counts()[kronecker.FAILED_REFRESHES] == 1
    scale = (max(1.0, 3 / 5)) ** 0.5
    torch.testing.assert_close(
        before - weight.detach(), 0.1 * scale * expected, rtol=1e-6, atol=1e-8
    )


def test_deep_copies_of_kfac_and_of_its_model():
    """A copied model carries no live hook of the original optimizer; a copied optimizer and
    model (one deepcopy) train on their own exactly as the originals."""
    model = make_mlp()
    optimizer = KFAC(model, loss="mse", refresh_every=2)
    batches = regression_batches(6)
    train(model, optimizer, batches[:2])
    lone = copy.deepcopy(model)
    lone(batches[0][0]).sum().backward()  # would feed the original's captures if it were hooked
    model_copy, optimizer_copy = copy.deepcopy((model, optimizer))
    train(model, optimizer, batches[2:])
    train(model_copy, optimizer_copy, batches[2:])
    for p, q in zip(model.parameters(), model_copy.parameters(), strict=True):
        assert torch.equal(p, q)
