"""KFAC on nn.MultiheadAttention: the packed in-projection and the out-projection are layers.

The factors are checked against a reference transformer block written with explicit tensors
(the projections' inputs and outputs retained, attention as an explicit softmax), per sample
for the Gauss–Newton factor; the module's output under the capture equals its plain output.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn
from torch.func import hessian, jacrev
from torch.nn import functional as F

from layerwise.optim import KFAC
from layerwise.optim import kronecker as kr

DTYPE = torch.float64
N, L, E, HEADS, C = 6, 4, 8, 2, 3


def make_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    block = nn.TransformerEncoderLayer(E, HEADS, dim_feedforward=12, dropout=0.0, batch_first=True)
    return nn.Sequential(block, nn.Flatten(), nn.Linear(L * E, C)).to(DTYPE)


def data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(N, L, E, generator=generator, dtype=DTYPE)
    return x, torch.randint(0, C, (N,), generator=generator)


def attention_heads(qkv: torch.Tensor) -> torch.Tensor:
    """Explicit softmax attention of one batch ``(N, L, 3E) -> (N, L, E)``."""
    q, k, v = (t.unflatten(-1, (HEADS, E // HEADS)).transpose(1, 2) for t in qkv.chunk(3, -1))
    weights = torch.softmax(q @ k.mT / math.sqrt(E // HEADS), dim=-1)
    return (weights @ v).transpose(1, 2).flatten(2)


def reference(model: nn.Sequential, x: torch.Tensor, qkv: torch.Tensor | None = None):
    """The block by hand: returns (output, x, qkv, z, attention output); ``qkv`` may be given
    (for Jacobians with respect to it)."""
    block, head = model[0], model[2]
    attention = block.self_attn
    if qkv is None:
        qkv = F.linear(x, attention.in_proj_weight, attention.in_proj_bias)
    z = attention_heads(qkv)
    attended = F.linear(z, attention.out_proj.weight, attention.out_proj.bias)
    h = block.norm1(x + attended)
    h = block.norm2(h + block.linear2(F.relu(block.linear1(h))))
    return head(h.flatten(1)), qkv, z, attended


def with_ones(rows: torch.Tensor) -> torch.Tensor:
    return torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)


def kfac_factors(model, x, y, **knobs):
    optimizer = KFAC(model, loss="cross_entropy", exact=True, damping=1e-3, **knobs)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    attention = model[0].self_attn
    return [
        (optimizer.state[w][kr.LEFT_STATISTIC], optimizer.state[w][kr.RIGHT_STATISTIC])
        for w in (attention.in_proj_weight, attention.out_proj.weight)
    ]


def test_empirical_factors_of_both_projections_match_the_explicit_block():
    model, (x, y) = make_model(), data()
    reference_model = copy.deepcopy(model)
    output, qkv, z, attended = reference(reference_model, x)
    qkv.retain_grad()
    attended.retain_grad()
    F.cross_entropy(output, y).backward()
    expected = []
    for inputs, grads in ((x, qkv.grad), (z.detach(), attended.grad)):
        a = with_ones(inputs.reshape(-1, E))
        g = grads.reshape(-1, grads.shape[-1]) * N  # gradient of each sample's own loss
        expected.append((g.T @ g / N, a.T @ a / a.shape[0]))
    factors = kfac_factors(model, x, y, curvature="empirical")
    for (b, a), (b_ref, a_ref) in zip(factors, expected, strict=True):
        torch.testing.assert_close(a, a_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(b, b_ref, rtol=1e-9, atol=1e-12)
    assert expected[0][0].shape == (3 * E, 3 * E)


def test_ggn_factor_of_the_in_projection_is_the_per_sample_gauss_newton_sum():
    """B = (1/N) Σ_i Σ_l J_ilᵀ H_i J_il with J_il the Jacobian of sample i's output with
    respect to its l-th projection row (the sum over positions, as for nn.Linear on sequences)."""
    model, (x, y) = make_model(), data()
    reference_model = copy.deepcopy(model)
    expected = torch.zeros(3 * E, 3 * E, dtype=DTYPE)
    for i in range(N):
        xi = x[i : i + 1]
        _, qkv, _, _ = reference(reference_model, xi)

        def output_of(rows, xi=xi):
            return reference(reference_model, xi, rows[None])[0][0]

        jacobian = jacrev(output_of)(qkv[0].detach())  # (C, L, 3E)
        f = output_of(qkv[0].detach()).detach()
        target = y[i : i + 1]
        h = hessian(lambda f, target=target: F.cross_entropy(f[None], target))(f)
        for position in range(L):
            j = jacobian[:, position, :]
            expected += j.T @ h @ j
    (b, _), _ = kfac_factors(model, x, y, curvature="ggn")
    torch.testing.assert_close(b, expected / N, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("need_weights", [False, True])
def test_the_captured_attention_computes_the_module_output(need_weights):
    """Masks, key padding and the averaged attention weights as the module computes them."""
    torch.manual_seed(3)
    attention = nn.MultiheadAttention(E, HEADS, batch_first=True, add_bias_kv=True).to(DTYPE)
    model = nn.Sequential(nn.Linear(E, E).to(DTYPE))  # only to host the optimizer's hooks
    x = torch.randn(N, L, E, dtype=DTYPE)
    mask = torch.triu(torch.ones(L, L, dtype=torch.bool), diagonal=1)
    padding = torch.zeros(N, L, dtype=torch.bool)
    padding[0, -1] = True
    kwargs = {"attn_mask": mask, "key_padding_mask": padding, "need_weights": need_weights}
    plain = attention(x, x, x, **kwargs)
    host = nn.ModuleDict({"attention": attention, "head": model})
    optimizer = KFAC(host, loss="mse")
    captured = attention(x, x, x, **kwargs)
    assert optimizer.state is not None
    for got, want in zip(captured, plain, strict=True):
        if want is None:
            assert got is None
            continue
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
    capture = optimizer._source.capture
    assert capture.capture(optimizer._source.attention[0].in_proj) is not None


def test_cross_attention_is_refused_with_the_advice_and_decoder_cross_attention_warns():
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(E, HEADS, batch_first=True).to(DTYPE)
    host = nn.ModuleDict({"attention": attention})
    KFAC(host, loss="mse")
    x, memory = torch.randn(2, L, E, dtype=DTYPE), torch.randn(2, L + 1, E, dtype=DTYPE)
    with pytest.raises(RuntimeError, match=r"skip_layers=\['attention'\]"):
        attention(x, memory, memory)
    decoder = nn.TransformerDecoderLayer(E, HEADS, 12, dropout=0.0, batch_first=True)
    with pytest.warns(UserWarning, match=r"multihead_attn \(cross-attention"):
        optimizer = KFAC(decoder, loss="mse")
    names = [p.name for p in optimizer._source.attention]
    assert names == ["self_attn"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        KFAC(nn.ModuleDict({"attention": attention}), loss="mse", skip_layers=["attention"])


def test_a_transformer_block_trains_with_attention_preconditioned():
    torch.manual_seed(0)
    block = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
    model = nn.Sequential(block, nn.Flatten(), nn.Linear(16 * 5, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left on the Adam path, nothing to warn about
        optimizer = KFAC(model, loss="cross_entropy", lr=0.05)
    x = torch.randn(64, 5, 16)
    y = (x[:, 0, :3]).argmax(dim=1)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    for weight in (block.self_attn.in_proj_weight, block.self_attn.out_proj.weight):
        assert kr.LEFT_STATISTIC in optimizer.state[weight]
    copied = copy.deepcopy(optimizer)  # the copy hooks the copied model's attention
    assert copied._source.attention[0].module is not block.self_attn


def test_a_compiled_model_keeps_its_attention_on_the_adam_path_with_a_warning():
    """torch.compile cannot trace the attention capture: KFAC given a compiled model says so."""
    model = torch.compile(make_model())
    with pytest.warns(UserWarning, match=r"self_attn \(a compiled model"):
        optimizer = KFAC(model, loss="cross_entropy")
    assert optimizer._source.attention == []
    assert len(optimizer._source.layers) == 3  # the feed-forward linears and the head


def test_off_statistics_steps_the_attention_runs_without_the_capture():
    """The projection mode (and its extra products) only on statistics steps."""
    model, (x, y) = make_model(), data()
    optimizer = KFAC(model, loss="cross_entropy", statistics_every=2, refresh_every=2)
    capture = optimizer._source.capture
    entered: list[bool] = []
    model[0].self_attn.register_forward_pre_hook(  # runs after KFAC's own pre-hook
        lambda module, args: entered.append(bool(capture._attention_modes))
    )
    for _ in range(4):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert entered == [True, False, True, False]
