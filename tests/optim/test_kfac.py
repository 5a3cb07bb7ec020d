"""KFAC against independent computations, in float64.

- deep linear networks: the ``ggn`` factors' Kronecker product is the exact Gauss–Newton block
  (``torch.func.jacrev`` of the network output, loss Hessian by ``torch.func.hessian``) and the
  exact-mode step is that block's Newton step;
- a nonlinear MLP: each factor equals its definition computed sample by sample;
- the paper's two-layer linear model: the stylized KFAC step (SPEC §2, fact 4) and the
  least-squares head;
- ``mc_fisher`` converges to ``ggn``; EKFAC with an identity basis is AdamW; one-sided,
  π-split, EMA and clipping conventions.
"""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev
from torch.nn import functional

from layerwise.optim import KFAC
from layerwise.optim import kronecker as kr

DTYPE = torch.float64
EXACT = 1e-10  # round-off only
LOSSES = {"mse": functional.mse_loss, "cross_entropy": functional.cross_entropy}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str) -> None:
    """Relative (to the largest entry of ``expected``) max-norm comparison with a report."""
    error = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert error <= rtol * max(scale, 1e-300), (
        f"{what}: max error {error:.3e} vs scale {scale:.3e} (rtol {rtol:g})"
    )


def make_data(n: int, d_in: int, c: int, loss: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=DTYPE)
    y = (
        torch.randint(0, c, (n,), generator=g)
        if loss == "cross_entropy"
        else torch.randn(n, c, generator=g, dtype=DTYPE)
    )
    return x, y


def linear_stack(dims: tuple[int, ...], bias: bool, seed: int, act: type | None = None):
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b, bias=bias, dtype=DTYPE))
        if act is not None and i < len(dims) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def block_matrix(layer: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None):
    return weight if bias is None else torch.cat([weight, bias[:, None]], dim=1)


def one_step(model, x, y, loss, **kwargs):
    """One KFAC step; returns the parameters before, the gradients and the optimizer."""
    opt = KFAC(model, loss=loss, **kwargs)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    opt.zero_grad()
    LOSSES[loss](model(x), y).backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    opt.step()
    return before, grads, opt


def gauss_newton_block(model, params, prefix, x, y, loss):
    r"""The exact GGN block :math:`J^\top \nabla_f^2 L\, J` of the mean loss for the block
    ``[W | b]`` of layer ``prefix``, row-major vec, by brute force."""
    has_bias = f"{prefix}.bias" in params
    weight = params[f"{prefix}.weight"]

    def output(theta):
        values = dict(params)
        values[f"{prefix}.weight"] = theta[:, : weight.shape[1]]
        if has_bias:
            values[f"{prefix}.bias"] = theta[:, -1]
        return functional_call(model, values, (x,))

    theta = block_matrix(None, weight, params.get(f"{prefix}.bias"))
    f = output(theta).detach()
    jacobian = jacrev(output)(theta).reshape(f.numel(), theta.numel())
    loss_hessian = hessian(lambda out: LOSSES[loss](out, y))(f).reshape(f.numel(), f.numel())
    return jacobian.mT @ loss_hessian @ jacobian


# ----------------------------------------------------------------------------------------
# Deep linear networks: KFAC(ggn) is the exact Gauss–Newton block.
DEEP_LINEAR_CASES = [
    # (dims, bias, the GGN blocks are invertible). Widening layers make later input factors
    # singular and narrowing ones earlier output factors, so the Newton step is checked on
    # constant widths and the factors on both.
    ((5, 3, 4, 6), True, False),
    ((6, 4, 3, 5), False, False),
    ((4, 4, 4, 4), True, True),
    ((4, 4, 4, 4), False, True),
    ((4, 1, 1), True, True),  # scalar output factors: folded into the input side's inverse
]


@pytest.mark.parametrize(("dims", "bias", "invertible"), DEEP_LINEAR_CASES)
def test_deep_linear_ggn_factors_are_the_gauss_newton_block(dims, bias, invertible):
    model = linear_stack(dims, bias, seed=0)
    x, y = make_data(24, dims[0], dims[-1], "mse", seed=1)
    lr = 0.7
    # Singular factors need some damping to be inverted at all; it does not enter the factors.
    damping = 0.0 if invertible else 1e-6
    before, grads, opt = one_step(
        model, x, y, "mse", lr=lr, curvature="ggn", exact=True, damping=damping
    )
    for index, layer in enumerate(model):
        prefix = str(index)
        ggn = gauss_newton_block(model, before, prefix, x, y, "mse")
        state = opt.state[layer.weight]
        left = state.get(kr.LEFT_STATISTIC, state.get("left_scalar_statistic"))
        right = state.get(kr.RIGHT_STATISTIC, state.get("right_scalar_statistic"))
        kron = torch.kron(left.reshape(left.shape[0] if left.ndim else 1, -1), right)
        assert_close(kron, ggn, EXACT, f"B ⊗ A of layer {index}")
        if not invertible:
            continue
        # The exact-mode step is the block Newton step: Δθ = -lr · GGN⁻¹ ∇θ.
        gradient = block_matrix(layer, grads[f"{prefix}.weight"], grads.get(f"{prefix}.bias"))
        newton = torch.linalg.solve(ggn, gradient.reshape(-1)).reshape(gradient.shape)
        old = block_matrix(layer, before[f"{prefix}.weight"], before.get(f"{prefix}.bias"))
        new = block_matrix(layer, layer.weight.detach(), None if not bias else layer.bias.detach())
        assert_close(new - old, -lr * newton, 1e-9, f"Newton step of layer {index}")


# ----------------------------------------------------------------------------------------
# A nonlinear MLP: every factor against its per-sample definition.
def mlp_case(loss: str):
    model = linear_stack((3, 5, 4, 3), True, seed=2, act=nn.Tanh)
    x, y = make_data(9, 3, 3, loss, seed=3)
    return model, x, y


def sample_output_factor(head, s, per_sample_loss, target, curvature):
    """One sample's contribution to B: g gᵀ (empirical, mc_fisher) or Jᵀ H J (ggn)."""

    def output(s):
        return head(s[None])[0]

    def loss_at(f):
        return per_sample_loss(f[None], target)

    jacobian = jacrev(output)(s)  # (c, d_out)
    f = output(s).detach()
    if curvature == "ggn":
        return jacobian.mT @ hessian(loss_at)(f) @ jacobian
    g = jacobian.mT @ jacrev(loss_at)(f)  # chain rule: ∂ℓ/∂s = Jᵀ ∂ℓ/∂f
    return torch.outer(g, g)


def per_sample_factors(model, x, y, loss, curvature, seed):
    """(B, A) of every Linear layer of a Sequential, one sample at a time."""
    n = x.shape[0]
    targets = y
    if curvature == "mc_fisher":
        # The documented sampler: one draw for the whole batch from the seeded generator.
        with torch.no_grad():
            f_all = model(x)
        generator = torch.Generator().manual_seed(seed)
        if loss == "cross_entropy":
            targets = torch.multinomial(torch.softmax(f_all, 1), 1, generator=generator)[:, 0]
        else:
            noise = torch.randn(f_all.shape, generator=generator, dtype=DTYPE)
            targets = f_all + math.sqrt(f_all.shape[1] / 2) * noise
    factors = {}
    for index, layer in enumerate(model):
        if not isinstance(layer, nn.Linear):
            continue
        b_sum = torch.zeros(layer.out_features, layer.out_features, dtype=DTYPE)
        a_sum = torch.zeros(layer.in_features + 1, layer.in_features + 1, dtype=DTYPE)
        for i in range(n):
            a = model[:index](x[i : i + 1])[0].detach()
            a_bar = torch.cat([a, torch.ones(1, dtype=DTYPE)])
            a_sum += torch.outer(a_bar, a_bar)
            s = layer(a[None])[0].detach()
            b_sum += sample_output_factor(
                model[index + 1 :], s, LOSSES[loss], targets[i : i + 1], curvature
            )
        factors[index] = (b_sum / n, a_sum / n)
    return factors


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("curvature", ["empirical", "ggn", "mc_fisher"])
def test_mlp_factors_match_per_sample_definitions(curvature, loss):
    model, x, y = mlp_case(loss)
    expected = per_sample_factors(copy.deepcopy(model), x, y, loss, curvature, seed=11)
    # Damping only so that the exact-mode inverses exist (the CE output factor is singular).
    _, _, opt = one_step(model, x, y, loss, curvature=curvature, exact=True, damping=1e-3, seed=11)
    for index, (b, a) in expected.items():
        state = opt.state[model[index].weight]
        assert_close(state[kr.LEFT_STATISTIC], b, EXACT, f"B of layer {index}")
        assert_close(state[kr.RIGHT_STATISTIC], a, EXACT, f"A of layer {index}")


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("curvature", ["empirical", "ggn"])
def test_statistics_batch_estimates_the_factors_from_the_first_samples(curvature, loss):
    """With ``statistics_batch=k`` the factors of a batch of n are the per-sample definitions
    over its first k samples (same expectations, rescaled), while the step uses all n."""
    model, x, y = mlp_case(loss)
    k = 5
    expected = per_sample_factors(copy.deepcopy(model), x[:k], y[:k], loss, curvature, seed=11)
    full = per_sample_factors(copy.deepcopy(model), x, y, loss, curvature, seed=11)
    assert not torch.allclose(full[0][1], expected[0][1])  # the subsample makes a difference
    _, _, opt = one_step(
        model, x, y, loss, curvature=curvature, statistics_batch=k, damping=1e-3, seed=11
    )
    for index, (b, a) in expected.items():
        state = opt.state[model[index].weight]
        # One EMA update from zero, bias-corrected: (1 − β) S / (1 − β).
        correction = 1.0 - 0.95
        assert_close(state[kr.LEFT_STATISTIC] / correction, b, EXACT, f"B of layer {index}")
        assert_close(state[kr.RIGHT_STATISTIC] / correction, a, EXACT, f"A of layer {index}")
    with pytest.raises(ValueError, match="exact=True requires statistics_batch=None"):
        KFAC(model, loss=loss, exact=True, statistics_batch=k)
    with pytest.raises(ValueError, match="Invalid statistics_batch: 0"):
        KFAC(model, loss=loss, statistics_batch=0)


def output_factors(model, x, y, loss, **kwargs) -> list[torch.Tensor]:
    model = copy.deepcopy(model)
    _, _, opt = one_step(model, x, y, loss, exact=True, damping=1e-3, **kwargs)
    return [opt.state[m.weight][kr.LEFT_STATISTIC] for m in model if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_mc_fisher_converges_to_ggn(loss):
    model, x, y = mlp_case(loss)
    reference = output_factors(model, x, y, loss, curvature="ggn")
    errors = {}
    for samples in (16, 1024):
        squared = []
        for seed in range(3):
            sampled = output_factors(
                model, x, y, loss, curvature="mc_fisher", mc_samples=samples, seed=seed
            )
            squared += [
                float(torch.linalg.matrix_norm(mc - ggn) / torch.linalg.matrix_norm(ggn)) ** 2
                for mc, ggn in zip(sampled, reference, strict=True)
            ]
        errors[samples] = math.sqrt(sum(squared) / len(squared))
    # Root-mean-square Monte-Carlo error ~ 1/√samples: 64x the samples, about 8x smaller. A
    # wrong scale (e.g. a factor 2 in the sampling variance) leaves a relative error >= 0.5.
    assert errors[1024] < 0.05, errors
    assert errors[1024] < errors[16] / 3, errors


# ----------------------------------------------------------------------------------------
# The paper's two-layer linear model (SPEC §1 and §2, fact 4).
def test_two_layer_linear_kfac_is_the_stylized_step_and_the_least_squares_head():
    d, k, dy, n, eta = 6, 3, 4, 40, 0.5
    model = linear_stack((d, k, dy), False, seed=4)
    g_layer, f_layer = model[0], model[1]
    x, y = make_data(n, d, dy, "mse", seed=5)
    G, F = g_layer.weight.detach().clone(), f_layer.weight.detach().clone()
    opt = KFAC(
        model,
        loss="mse",
        curvature="ggn",
        exact=True,
        params=[{"params": [g_layer.weight], "lr": eta}, {"params": [f_layer.weight], "lr": 1.0}],
    )
    opt.zero_grad()
    functional.mse_loss(model(x), y).backward()
    opt.step()
    sigma_x = x.T @ x / n
    sigma_yx = y.T @ x / n
    expected_g = G - eta * torch.linalg.solve(F.T @ F, F.T @ (F @ G @ sigma_x - sigma_yx)) @ (
        torch.linalg.inv(sigma_x)
    )
    assert_close(g_layer.weight.detach(), expected_g, 1e-10, "stylized KFAC G step")
    z = x @ G.T
    ols_head = torch.linalg.lstsq(z, y).solution.T
    assert_close(f_layer.weight.detach(), ols_head, 1e-10, "least-squares head")


# ----------------------------------------------------------------------------------------
# Reductions and conventions.
def test_ekfac_with_identity_basis_is_adamw():
    model = linear_stack((4, 6, 3), True, seed=6, act=nn.Tanh)
    twin = copy.deepcopy(model)
    hyper = dict(lr=3e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    # max_preconditioner_dim=1: every side is diagonal, so the eigenbasis is the identity.
    opt = KFAC(
        model,
        loss="mse",
        curvature="empirical",
        ekfac=True,
        max_preconditioner_dim=1,
        kl_clip=0,
        **hyper,
    )
    adamw = torch.optim.AdamW(twin.parameters(), **hyper)
    for step in range(8):
        x, y = make_data(16, 4, 3, "mse", seed=100 + step)
        for o, m in ((opt, model), (adamw, twin)):
            o.zero_grad()
            functional.mse_loss(m(x), y).backward()
            o.step()
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            assert_close(p.detach(), q.detach(), 1e-12, f"EKFAC vs AdamW at step {step}")


def test_sides_input_preconditions_with_the_input_factor_only():
    model = linear_stack((5, 4, 3), True, seed=7, act=nn.Tanh)
    x, y = make_data(12, 5, 3, "cross_entropy", seed=8)
    damping = 0.05
    hidden = torch.tanh(model[0](x)).detach()
    before, grads, _ = one_step(
        model, x, y, "cross_entropy", lr=1.0, exact=True, damping=damping, sides="input"
    )
    for index, inputs in ((0, x), (2, hidden)):
        rows = torch.cat([inputs, torch.ones(len(inputs), 1, dtype=DTYPE)], dim=1)
        a = rows.T @ rows / len(rows)
        layer = model[index]
        gradient = block_matrix(layer, grads[f"{index}.weight"], grads[f"{index}.bias"])
        expected = gradient @ torch.linalg.inv(a + damping * torch.eye(len(a), dtype=DTYPE))
        old = block_matrix(layer, before[f"{index}.weight"], before[f"{index}.bias"])
        new = block_matrix(layer, layer.weight.detach(), layer.bias.detach())
        assert_close(old - new, expected, 1e-10, f"one-sided step of layer {index}")


def test_pi_split_damping():
    model = linear_stack((4, 3), True, seed=9)
    x, y = make_data(10, 4, 3, "mse", seed=10)
    damping = 0.3
    before, grads, _ = one_step(
        model, x, y, "mse", lr=1.0, curvature="ggn", exact=True, damping=damping, damping_split="pi"
    )
    rows = torch.cat([x, torch.ones(10, 1, dtype=DTYPE)], dim=1)
    a = rows.T @ rows / 10
    b = 2.0 / 3 * torch.eye(3, dtype=DTYPE)  # one layer, MSE: B = (2/c) I
    pi = math.sqrt((a.trace() / 5) / (b.trace() / 3))
    gradient = block_matrix(None, grads["0.weight"], grads["0.bias"])
    expected = torch.linalg.solve(
        b + math.sqrt(damping) / pi * torch.eye(3, dtype=DTYPE), gradient
    ) @ torch.linalg.inv(a + math.sqrt(damping) * pi * torch.eye(5, dtype=DTYPE))
    step = block_matrix(None, before["0.weight"], before["0.bias"]) - block_matrix(
        None, model[0].weight.detach(), model[0].bias.detach()
    )
    assert_close(step, expected, 1e-10, "π-split step")


def test_ema_factors_are_bias_corrected():
    model = linear_stack((4, 3), True, seed=12)
    decay, damping = 0.8, 0.01
    opt = KFAC(
        model,
        lr=1e-3,
        loss="mse",
        curvature="empirical",
        accumulation="ema",
        statistics_decay=decay,
        refresh_every=1,
        damping=damping,
        kl_clip=0,
    )
    inputs = []
    for step in range(2):
        x, y = make_data(7, 4, 3, "mse", seed=20 + step)
        inputs.append(torch.cat([x, torch.ones(7, 1, dtype=DTYPE)], dim=1))
        opt.zero_grad()
        functional.mse_loss(model(x), y).backward()
        opt.step()
    a1, a2 = (r.T @ r / 7 for r in inputs)
    corrected = (decay * (1 - decay) * a1 + (1 - decay) * a2) / (1 - decay**2)
    expected = torch.linalg.inv(corrected + damping * torch.eye(5, dtype=DTYPE))
    state = opt.state[model[0].weight]
    assert_close(state[kr.RIGHT_PRECONDITIONER], expected, 1e-10, "bias-corrected inverse")


def test_kl_clip_scales_the_step_to_the_bound():
    model = linear_stack((4, 5, 3), True, seed=13, act=nn.Tanh)
    twin = copy.deepcopy(model)
    x, y = make_data(16, 4, 3, "cross_entropy", seed=14)
    kl_clip, lr = 1e-4, 0.5
    common = dict(lr=lr, curvature="ggn", exact=True, damping=1e-2)
    free_before, grads, _ = one_step(twin, x, y, "cross_entropy", **common)
    _, _, opt = one_step(model, x, y, "cross_entropy", kl_clip=kl_clip, **common)
    free_steps = {n: free_before[n] - p.detach() for n, p in twin.named_parameters()}
    clipped_steps = {n: free_before[n] - p.detach() for n, p in model.named_parameters()}
    # lr² Σ ⟨D, ∇⟩ from the unclipped step (Δθ = lr D)
    quadratic = sum(lr * (free_steps[n] * grads[n]).sum() for n in free_steps)
    assert quadratic > kl_clip  # the bound is active
    nu = math.sqrt(kl_clip / quadratic)
    assert opt.last_update_scales[0] == pytest.approx(nu, rel=1e-12)
    for name in free_steps:
        assert_close(clipped_steps[name], nu * free_steps[name], 1e-10, f"clipped {name}")


def test_exact_mode_refuses_contradictions_and_singular_factors():
    model = linear_stack((6, 2), False, seed=15)
    with pytest.raises(ValueError, match="accumulation"):
        KFAC(model, loss="mse", exact=True, accumulation="ema")
    with pytest.raises(ValueError):
        KFAC(model, loss="hinge")
    x, y = make_data(4, 6, 2, "mse", seed=16)  # n < d: the input factor is singular
    opt = KFAC(model, loss="mse", curvature="ggn", exact=True)
    opt.zero_grad()
    functional.mse_loss(model(x), y).backward()
    with pytest.raises(kr.DecompositionError):
        opt.step()


def test_sides_output_preconditions_with_the_ggn_output_factor_only():
    model = linear_stack((5, 4), True, seed=17)
    x, y = make_data(12, 5, 4, "cross_entropy", seed=18)
    damping = 0.05
    p = torch.softmax(model(x), dim=1).detach()
    # One layer, cross-entropy: B = mean over the batch of diag(p) − p pᵀ (the logit Hessian).
    b = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).mean(0)
    before, grads, _ = one_step(
        model, x, y, "cross_entropy", lr=1.0, exact=True, damping=damping, sides="output"
    )
    gradient = block_matrix(None, grads["0.weight"], grads["0.bias"])
    expected = torch.linalg.solve(b + damping * torch.eye(4, dtype=DTYPE), gradient)
    step = block_matrix(None, before["0.weight"], before["0.bias"]) - block_matrix(
        None, model[0].weight.detach(), model[0].bias.detach()
    )
    assert_close(step, expected, 1e-10, "output-only step")


def test_max_update_norm_bounds_the_step():
    model = linear_stack((4, 5, 3), True, seed=19, act=nn.Tanh)
    x, y = make_data(16, 4, 3, "mse", seed=20)
    bound, lr = 1e-3, 0.5
    before, _, opt = one_step(
        model, x, y, "mse", lr=lr, curvature="ggn", exact=True, damping=1e-2, max_update_norm=bound
    )
    norm = math.sqrt(
        sum(((before[n] - p.detach()) ** 2).sum() for n, p in model.named_parameters())
    )
    assert opt.last_update_scales[0] < 1
    assert norm == pytest.approx(bound, rel=1e-10)


def test_closure_step_equals_the_explicit_loop():
    model = linear_stack((4, 5, 3), True, seed=21, act=nn.Tanh)
    twin = copy.deepcopy(model)
    x, y = make_data(16, 4, 3, "cross_entropy", seed=22)
    opt = KFAC(model, lr=0.3, loss="cross_entropy", curvature="mc_fisher", seed=3)
    reference = KFAC(twin, lr=0.3, loss="cross_entropy", curvature="mc_fisher", seed=3)

    def closure():
        opt.zero_grad()
        value = functional.cross_entropy(model(x), y)
        value.backward()
        return value

    for _ in range(3):
        opt.step(closure)
        reference.zero_grad()
        functional.cross_entropy(twin(x), y).backward()
        reference.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_second_moment_rescaling_is_exact_and_drops_only_negligible_entries():
    """Denormal guard of the statistics: power-of-two rescaling changes nothing (float64 and
    float32, bit for bit); entries below √tiny of the largest one are dropped, which moves the
    factor by far less than the format's resolution."""
    from layerwise.optim.kfac_curvature import second_moment
    from layerwise.optim.kronecker import Side

    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(64, 8, generator=generator, dtype=torch.float64)
    tiny = rows * 2.0**-80
    assert torch.equal(second_moment(tiny, Side.DENSE, 3.0), (tiny.mT @ tiny) * 3.0)
    rows32 = (rows * 2.0**-50).float()
    assert torch.equal(second_moment(rows32, Side.DENSE, 1.0), rows32.mT @ rows32)
    # A column 2^-70 below the rest: in float32 its products with itself are denormal.
    wide = rows32.clone()
    wide[:, 0] *= 2.0**-70
    result = second_moment(wide, Side.DENSE, 1.0)
    plain = wide.double().mT @ wide.double()
    assert result[0, 0] == 0.0 and result[0, 1] == 0.0  # the dropped column
    error = (result.double() - plain).abs().max() / plain.abs().max()
    assert error < 1e-6  # float32 round-off of the whole factor; the drop itself is ~2^-70


@pytest.mark.parametrize("kind", ["dense", "diagonal", "scalar"])
@pytest.mark.parametrize(
    "weights", [(0.9, 0.1), (1.0, 1.0), (0.0, 1.0)], ids=["ema", "sum", "latest"]
)
@pytest.mark.parametrize("magnitude", [1.0, 2.0**-55])
def test_fused_row_products_accumulate_like_the_explicit_increment(kind, weights, magnitude):
    """S <- βS + α·scale·Σ x xᵀ fused into one addmm (dense) equals the explicit increment of
    second_moment folded in, also for rows whose small entries' products would be denormal in
    float32 (the sums stay normal); with β = 0 a non-finite old value is ignored, as addmm
    does."""
    from layerwise.optim.kfac_curvature import (
        RowProducts,
        accumulate_row_products,
        second_moment,
    )
    from layerwise.optim.kronecker import Side

    kind = Side(kind)
    beta, alpha = weights
    generator = torch.Generator().manual_seed(3)
    width = 1 if kind is Side.SCALAR else 6
    rows = (torch.randn(40, width, generator=generator) * magnitude).float()
    start = {
        Side.DENSE: torch.eye(6),
        Side.DIAGONAL: torch.ones(6),
        Side.SCALAR: torch.tensor(2.0),
    }[kind] * magnitude**2
    fused = start.clone()
    if beta == 0.0:
        fused.fill_(float("nan"))
    accumulate_row_products(fused, RowProducts(rows, kind, 0.25), beta=beta, alpha=alpha)
    increment = second_moment(rows.double(), kind, 0.25)
    expected = beta * start.double() + alpha * increment
    assert torch.isfinite(fused).all()
    scale = float(expected.abs().max())
    torch.testing.assert_close(fused.double(), expected, rtol=1e-6, atol=1e-6 * scale)


def test_an_lr_schedule_still_moves_a_kl_clipped_step():
    """The KL bound uses the lr before scheduling (``initial_lr``): halving the lr halves a
    clipped step (with the current lr the clipped step would not depend on the lr at all)."""
    steps = []
    for factor in (1.0, 0.5):
        model = linear_stack((4, 5, 3), True, seed=13, act=nn.Tanh)
        x, y = make_data(16, 4, 3, "cross_entropy", seed=14)
        opt = KFAC(
            model,
            lr=0.5,
            loss="cross_entropy",
            curvature="ggn",
            exact=True,
            damping=1e-2,
            kl_clip=1e-4,
        )
        torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch, factor=factor: factor)
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        functional.cross_entropy(model(x), y).backward()
        opt.step()
        assert opt.last_update_scales[0] < 1  # the clip is active
        steps.append([b - p.detach() for b, p in zip(before, model.parameters(), strict=True)])
    for full, half in zip(*steps, strict=True):
        assert_close(half, 0.5 * full, 1e-12, "scheduled clipped step")
