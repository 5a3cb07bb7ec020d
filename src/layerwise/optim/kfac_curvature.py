r"""Where KFAC's Kronecker factors come from: module hooks and curvature backward passes.

For a layer :math:`s = W a + b` (``Layer``; or ``nn.Conv2d``, where ``a`` is a patch of
the input, ``s`` the output channels at one position and the weight is viewed as
``(out_channels, in_channels * kh * kw)``) used on a batch whose model output is
:math:`f \in \mathbb{R}^{n \times c}`, with the mean loss :math:`L = \frac1n \sum_i \ell_i`,
the two factors are

.. math::
    A = \frac1R \sum_{r} \bar a_r \bar a_r^\top, \qquad
    B = \frac1n \sum_{r} \sum_k g_{r,k} g_{r,k}^\top \,/\, K,

where :math:`\bar a_r = (a_r, 1)` (the 1 only when the bias is folded into the weight), the
rows :math:`r` run over the layer's input rows (``R = n`` for a 2-D input; a layer applied to
``(n, ..., d_in)`` inputs, a convolution (one row per sample and output position) or a layer
used several times contributes all its rows: the "expand" convention of Grosse & Martens,
2016, with the 1/(positions) on A and the sum over positions on B), and :math:`g_{r,k}` are
output gradients of the curvature source:

- ``empirical``: :math:`g_r = \partial \ell_i / \partial s_r`, read from the user's own
  backward pass, whose gradient is :math:`\partial L / \partial s_r = g_r / n` (so the captured
  gradient is multiplied by n); K = 1.
- ``ggn``: :math:`g_{r,k} = J_{s_r}^\top h_{i,k}` where :math:`H_i = \sum_k h_{i,k} h_{i,k}^\top`
  is the per-sample loss Hessian :math:`\partial^2 \ell_i / \partial f_i^2` (MSE:
  :math:`\frac2c I`, columns :math:`\sqrt{2/c}\, e_k`; cross-entropy:
  :math:`\operatorname{diag}(p) - p p^\top = S S^\top` with
  :math:`S = \operatorname{diag}(\sqrt p) - p \sqrt p^\top`); c extra backward passes, K = 1.
- ``mc_fisher``: :math:`g_{r} = J_{s_r}^\top \nabla_f \ell_i(\hat y_i)` with targets sampled from
  the model's predictive distribution (cross-entropy: :math:`\hat y \sim
  \operatorname{Cat}(\operatorname{softmax} f)`; MSE: :math:`\hat y \sim N(f, \frac c2 I)`, the
  variance for which :math:`E[\nabla\ell\nabla\ell^\top] = \frac2c I`, the MSE loss Hessian);
  K = ``mc_samples`` extra backward passes.

For a deep linear network (and MSE) :math:`J_{s}` does not depend on the sample, so
:math:`B \otimes A` is exactly the Gauss–Newton block of the layer (row-major vec of W).

The extra backward passes run inside the user's ``loss.backward()``: a hook on the model
output fires when its gradient is reached, before any node of the graph below it has been
released, and calls :func:`torch.autograd.grad` with ``retain_graph=True``.
"""

from __future__ import annotations

import enum
import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from layerwise.optim.kfac_attention import AttentionProjections, ProjectionMode
from layerwise.optim.kronecker import Side, SideLayout


class Curvature(enum.StrEnum):
    """Source of the output-gradient factor B (module docstring)."""

    EMPIRICAL = "empirical"
    MC_FISHER = "mc_fisher"
    GGN = "ggn"


class Loss(enum.StrEnum):
    """The training loss, with ``reduction="mean"``: ``mse_loss`` or ``cross_entropy``."""

    MSE = "mse"
    CROSS_ENTROPY = "cross_entropy"


def second_moment(rows: Tensor, kind: Side, scale: float) -> Tensor:
    r"""``scale`` x :math:`\sum_r x_r x_r^\top` for the rows :math:`x_r` of ``rows`` (R, d),
    as a (d, d) matrix, its diagonal (d,) or (d = 1) a 0-D scalar.

    Denormal floats: late in training output gradients get tiny, their products fall into
    the denormal range, and BLAS runs many times slower on them (measured 15x on a 1024-wide
    layer). So the products are formed from unit-scaled rows (:func:`_unit_rows`) and the
    result is scaled back; no synchronization.
    """
    rows, exponent = _unit_rows(rows.to(_factor_dtype(rows.dtype)))
    scale_back = torch.exp2(2 * exponent) * scale
    match kind:
        case Side.DENSE:
            return (rows.mT @ rows).mul_(scale_back)
        case Side.DIAGONAL:
            return rows.square().sum(dim=0).mul_(scale_back)
        case Side.SCALAR:
            return rows.square().sum().mul_(scale_back)
        case other:
            raise ValueError(f"unknown factor kind {other!r}")


def _factor_dtype(dtype: torch.dtype) -> torch.dtype:
    """Factors of bf16 / fp16 rows are formed in float32 (see ``kronecker.statistics_dtype``)."""
    return dtype if dtype.itemsize >= 4 else torch.float32


def _unit_rows(rows: Tensor) -> tuple[Tensor, Tensor]:
    r"""``rows`` scaled by the power of two :math:`2^{-e}` that brings their largest magnitude
    into [1, 2) (exact), with entries below :math:`\sqrt{\text{tiny}}` of the format
    (relative to that largest entry; 2^-63 in float32) set to zero — their products would be
    denormal and lie far below the format's resolution; and :math:`e` (0-D, float64, so that
    :math:`2^{\pm e}` cannot overflow). Three passes over the rows (extremes, scale, shrink)."""
    smallest, largest = torch.aminmax(rows)
    exponent = (torch.frexp(torch.maximum(-smallest, largest)).exponent - 1).double()
    scaled = nn.functional.hardshrink(
        rows * torch.exp2(-exponent), torch.finfo(rows.dtype).tiny ** 0.5
    )
    return scaled, exponent


@dataclass(frozen=True)
class RowProducts:
    r"""The factor increment ``scale`` x :math:`\sum_r x_r x_r^\top`, kept as its rows until it is
    accumulated (:func:`accumulate_row_products` multiplies it out inside the accumulation;
    :func:`second_moment` is the increment itself)."""

    rows: Tensor
    kind: Side
    scale: float


def accumulate_row_products(
    statistic: Tensor, increment: RowProducts, *, beta: float, alpha: float
) -> None:
    r""":math:`S \leftarrow \beta S + \alpha \cdot` ``increment``, for a dense factor as one
    in-place ``addmm`` of the unit-scaled rows (:func:`_unit_rows`: the denormal guard of
    :func:`second_moment`) whose BLAS scalar carries the scale back: no increment is
    materialized and no extra pass is made over S. One synchronization (the exponent)."""
    # Factors accumulate in their own dtype whatever autocast or bf16 layers made the rows.
    rows, exponent = _unit_rows(increment.rows.to(statistic.dtype))
    weight = alpha * increment.scale * 2.0 ** (2 * int(exponent))
    if increment.kind is Side.DENSE:
        statistic.addmm_(rows.mT, rows, beta=beta, alpha=weight)
        return
    summed = rows.square().sum(dim=0) if increment.kind is Side.DIAGONAL else rows.square().sum()
    if beta == 0.0:  # as addmm: the old value is ignored, not multiplied (it may be non-finite)
        statistic.copy_(summed.mul_(weight))
    else:
        statistic.mul_(beta).add_(summed, alpha=weight)


def _softmax(logits: Tensor) -> Tensor:
    # Written out: on a loaded CPU, torch.softmax of a tiny float64 tensor (a parallel kernel)
    # was measured ~1000x slower than these element-wise ops, and mc_fisher calls it per sample.
    exponentials = (logits - logits.amax(dim=1, keepdim=True)).exp()
    return exponentials / exponentials.sum(dim=1, keepdim=True)


def loss_hessian_sqrt_columns(output: Tensor, loss: Loss) -> list[Tensor]:
    r"""The columns of a square root of the per-sample loss Hessian, batched: entry ``k`` is
    the ``(n, c)`` matrix whose row i is :math:`h_{i,k}`, with
    :math:`\sum_k h_{i,k} h_{i,k}^\top = \partial^2 \ell_i / \partial f_i^2`."""
    n, c = output.shape
    match Loss(loss):
        case Loss.MSE:
            columns = []
            for k in range(c):
                column = output.new_zeros(n, c)
                column[:, k] = math.sqrt(2.0 / c)
                columns.append(column)
            return columns
        case Loss.CROSS_ENTROPY:
            p = _softmax(output)
            sqrt_p = p.sqrt()
            columns = []
            for k in range(c):
                # column k of diag(√p) − p √pᵀ
                column = -p * sqrt_p[:, k : k + 1]
                column[:, k] += sqrt_p[:, k]
                columns.append(column)
            return columns
        case other:  # pragma: no cover - StrEnum refuses unknown values
            raise ValueError(f"unknown loss {other!r}")


def check_declared_loss(grad: Tensor, loss: Loss) -> None:
    r"""Check the gradient of the training loss with respect to the model output ``(n, c)``
    against the declared ``loss`` (which the ``ggn`` / ``mc_fisher`` factors use).

    Softmax cross-entropy's gradient :math:`(p_i - t_i)/n` sums to zero over the classes in
    every row (also with class weights, label smoothing or ignored rows), and a mean-reduced
    one has :math:`\sum_i \lVert\cdot\rVert_1 \le 2`. So: ``"cross_entropy"`` declared and a
    row that does not sum to zero is refused (the loss is not cross-entropy of these logits);
    ``"mse"`` declared while every row sums to zero draws a warning (it looks like
    cross-entropy); a cross-entropy gradient too large for a mean draws a warning (a summed or
    scaled loss: the step would be that many times too long).
    """
    if grad.ndim != 2 or grad.shape[1] < 2:
        return
    rows = grad.detach().double()
    sums, sizes = rows.sum(dim=1).abs(), rows.abs().sum(dim=1)
    informative = sizes > 0
    if int(informative.sum()) < 2:
        return
    zero_sum = bool((sums[informative] <= 1e-6 * sizes[informative]).all())
    cross_entropy = Loss(loss) is Loss.CROSS_ENTROPY
    if cross_entropy and not zero_sum:
        raise ValueError(
            "KFAC: loss='cross_entropy' was declared, but the training loss's gradient with "
            "respect to the model output does not sum to zero over the classes, as softmax "
            "cross-entropy's does: the loss is not cross-entropy of these outputs. Declare the "
            "loss the model is trained with (loss='mse', or pass the loss module)"
        )
    if not cross_entropy and zero_sum:
        warnings.warn(
            "KFAC: loss='mse' was declared, but every row of the training loss's gradient "
            "with respect to the model output sums to zero, as softmax cross-entropy's does: "
            "if the model is trained with cross-entropy, declare loss='cross_entropy'",
            UserWarning,
            stacklevel=2,
        )
    total = float(sizes.sum())
    if cross_entropy and total > 2.0 * (1 + 1e-6):
        warnings.warn(
            f"KFAC: the cross-entropy gradient has total size {total:.3g} (a mean over the "
            "batch has at most 2): was the loss summed (reduction='sum') or scaled? KFAC's "
            "factors are those of the batch mean, so the step would be too long",
            UserWarning,
            stacklevel=2,
        )


def sampled_loss_gradient(output: Tensor, loss: Loss, generator: torch.Generator) -> Tensor:
    r""":math:`\nabla_f \ell_i(\hat y_i)` for targets sampled from the model, batched (n, c).

    Cross-entropy: ``torch.multinomial(softmax(f), 1, generator=generator)`` gives
    :math:`\hat y`, and the gradient is :math:`p - e_{\hat y}`. MSE: with
    ``eps = torch.randn(f.shape, generator=generator)``, :math:`\hat y = f + \sqrt{c/2}\,
    \epsilon` and the gradient :math:`\frac2c (f - \hat y) = -\sqrt{2/c}\,\epsilon`.
    """
    n, c = output.shape
    match Loss(loss):
        case Loss.MSE:
            noise = torch.randn(
                output.shape, generator=generator, dtype=output.dtype, device=output.device
            )
            return noise.mul_(-math.sqrt(2.0 / c))
        case Loss.CROSS_ENTROPY:
            p = _softmax(output)
            targets = torch.multinomial(p, 1, generator=generator).squeeze(1)
            return p.scatter_add_(1, targets[:, None], p.new_full((n, 1), -1.0))
        case other:  # pragma: no cover
            raise ValueError(f"unknown loss {other!r}")


Layer = nn.Linear | nn.Conv2d


def supports(module: nn.Module) -> bool:
    """Whether KFAC preconditions ``module``: ``nn.Linear``, and ``nn.Conv2d`` with one group
    (any padding: numbers, ``"same"``, ``"valid"``, and every padding mode); the parameters of
    other modules take the Adam path (:func:`unsupported_reason` says why for the layers a
    user would expect to be preconditioned)."""
    return unsupported_reason(module) is None and isinstance(module, nn.Linear | nn.Conv2d)


def unsupported_reason(module: nn.Module) -> str | None:
    """Why a linear or convolutional module is not preconditioned (``None``: it is, or it is
    not such a module)."""
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return f"a grouped convolution (groups={module.groups}) has no single Kronecker factor pair"
    if isinstance(module, nn.Conv1d | nn.Conv3d | nn.ConvTranspose2d):
        return f"{type(module).__name__} is not supported (nn.Linear and nn.Conv2d are)"
    return None


def input_width(layer: Layer) -> int:
    """Columns of the layer's weight viewed as a matrix (bias not included)."""
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels * math.prod(layer.kernel_size)
    return layer.in_features


def output_width(layer: Layer) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def input_rows(layer: Layer, inputs: Tensor) -> Tensor:
    """The layer inputs as rows ``(R, input_width)``: one per sample (and position)."""
    if isinstance(layer, nn.Conv2d):
        batched = inputs if inputs.ndim == 4 else inputs[None]
        padding = layer.padding
        if isinstance(padding, str) or layer.padding_mode != "zeros":
            # "same" / "valid" and reflect / replicate / circular padding: pad as the layer
            # does (possibly asymmetric), then take the patches without padding.
            mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
            batched = nn.functional.pad(batched, layer._reversed_padding_repeated_twice, mode=mode)
            padding = (0, 0)
        patches = nn.functional.unfold(
            batched,
            layer.kernel_size,
            dilation=layer.dilation,
            padding=padding,  # type: ignore[arg-type]
            stride=layer.stride,
        )  # (n, C·kh·kw, positions), the order of weight.reshape(out_channels, -1)
        return patches.mT.reshape(-1, patches.shape[1])
    return inputs.reshape(-1, layer.in_features)


def output_rows(layer: Layer, outputs: Tensor) -> Tensor:
    """Layer outputs (or their gradients) as rows ``(R, output_width)``."""
    if isinstance(layer, nn.Conv2d):
        return outputs.movedim(-3, -1).reshape(-1, layer.out_channels)
    return outputs.reshape(-1, layer.out_features)


def _stacked(rows: list[Tensor]) -> Tensor:
    """The rows of all uses of a layer; a layer used once needs no copy."""
    return rows[0] if len(rows) == 1 else torch.cat(rows)


#: How many forward passes without a backward pass before a step draw a warning (their
#: captured inputs are kept until the step).
_PENDING_WARNING = 16

#: For a layer: which factors the coming step needs, (output side, input side); ``Side.NONE``:
#: not needed.
FactorNeeds = SideLayout


class _Hook:
    """A module hook that calls the capture; a deep copy of the module carries an inert one
    (a copied model must not feed the original optimizer, nor drag it into the copy)."""

    def __init__(self, method: Callable[..., None]) -> None:
        self._method = method

    def __call__(self, *args: object) -> None:
        self._method(*args)

    def __deepcopy__(self, memo: dict[int, object]) -> Callable[..., None]:
        return _inert_hook


def _inert_hook(*args: object) -> None:
    """What a deep-copied module keeps of KFAC's hooks."""


@dataclass
class LayerCapture:
    """What the hooks saw of one layer since the last optimizer step, by forward pass
    (``generation``): inputs, output gradients (empirical) or graph outputs (ggn /
    mc_fisher, until their backward pass), and the output factor of each backward pass with
    the number of samples it came from."""

    layer: Layer
    kinds: FactorNeeds
    inputs: list[tuple[int, Tensor]] = field(default_factory=list)
    outputs: list[tuple[int, Tensor]] = field(default_factory=list)
    output_grads: list[Tensor] = field(default_factory=list)
    output_factors: list[tuple[int, Tensor]] = field(default_factory=list)


class CurvatureCapture:
    r"""Forward hooks on ``layers`` (their inputs, and their outputs or output gradients) and on
    ``model`` (its output, where the ``ggn`` / ``mc_fisher`` backward passes start).

    ``needs(layer)`` is asked at each forward pass which factors the next optimizer step will
    use; nothing is captured for a layer that needs none (not a statistics step).

    Gradient accumulation: the factors cover every forward pass whose backward pass reached
    the model output since the last :meth:`clear` (the optimizer step), weighted by their rows
    (:math:`A` over all input rows, :math:`B` over all samples), so that micro-batches give
    the factors of their union — when, as usual, each micro-batch's mean loss is divided by
    the number of micro-batches (the accumulated gradient is then the batch mean). A forward
    pass that is never back-propagated (evaluation under gradients) does not count.

    ``statistics_batch``: the factors are estimated from the first this-many samples of each
    (micro-)batch (all of them if ``None``), rescaled so that they estimate the same
    expectations: with k of n samples, :math:`A = \frac1{R_k}\sum_{r \le R_k} \bar a_r \bar
    a_r^\top` and :math:`B = \frac1k \sum_{i \le k} g_i g_i^\top`. The factor products then cost
    as at batch k. (The ``ggn`` / ``mc_fisher`` backward passes still run on the whole batch.)
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[Layer],
        *,
        curvature: Curvature,
        loss: Loss,
        mc_samples: int,
        generator: torch.Generator,
        needs: Callable[[Layer], FactorNeeds],
        statistics_batch: int | None = None,
        attention: Sequence[AttentionProjections] = (),
    ) -> None:
        self.curvature = Curvature(curvature)
        self.statistics_batch = statistics_batch
        self.loss = loss  # the setter converts and marks it unchecked
        self.mc_samples = mc_samples
        self.generator = generator
        self._needs = needs
        self._captures: dict[Layer, LayerCapture] = {}
        self._generation = 0
        #: Batch size of each forward pass since the last step, and those back-propagated.
        self._batch_sizes: dict[int, int] = {}
        self._backwarded: set[int] = set()
        #: Model outputs whose curvature backward pass is still to run, by forward pass.
        self._pending_outputs: dict[int, Tensor] = {}
        self._in_curvature_pass = False
        self._handles = [model.register_forward_pre_hook(_Hook(self._on_model_input))]
        for layer in layers:
            self._handles.append(layer.register_forward_hook(_Hook(self._on_layer_forward)))
        #: Attention modules running now, with the mode that computes their projections.
        self._attention_modes: list[tuple[nn.Module, ProjectionMode]] = []
        for projections in attention:
            module = projections.module
            enter = functools.partial(self._enter_attention, projections)
            self._handles.append(module.register_forward_pre_hook(_Hook(enter)))
            self._handles.append(
                module.register_forward_hook(_Hook(self._exit_attention), always_call=True)
            )
        self._handles.append(model.register_forward_hook(_Hook(self._on_model_output)))

    @property
    def loss(self) -> Loss:
        """The declared training loss (checked once against the first backward pass of a
        ``ggn`` / ``mc_fisher`` capture, :func:`check_declared_loss`)."""
        return self._loss

    @loss.setter
    def loss(self, loss: Loss | str) -> None:
        loss = Loss(loss)
        if getattr(self, "_loss", None) is not loss:
            self._loss_checked = False  # a new declaration is checked again
        self._loss = loss

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()

    def clear(self) -> None:
        """Forget everything captured (after an optimizer step)."""
        self._captures = {}
        self._batch_sizes = {}
        self._backwarded = set()
        self._pending_outputs = {}

    def capture(self, layer: Layer) -> LayerCapture | None:
        return self._captures.get(layer)

    def factor_increments(
        self, layer: Layer, kinds: FactorNeeds, *, bias: bool
    ) -> list[Tensor | RowProducts | None]:
        """The factor increments ``[B, A]`` of ``layer`` from what was captured (module
        docstring): row products for the input side and the empirical output side, tensors
        for the ``ggn`` / ``mc_fisher`` output side (formed during the backward passes);
        ``bias``: append the constant 1 to the input rows."""
        capture = self._captures.get(layer)
        if capture is None or capture.kinds != kinds or not self._backwarded:
            raise RuntimeError(
                f"KFAC: no factors were captured for {layer}; run the model's forward and the "
                "loss's backward pass (with gradients enabled) before step(). With torch.compile, "
                "create the optimizer before the compiled model's first call: a compiled graph "
                "does not see module hooks added after it was traced"
            )
        output_kind, input_kind = kinds
        increments: list[Tensor | RowProducts | None] = [None, None]
        if input_kind is not Side.NONE:
            rows = _stacked(
                [
                    input_rows(layer, self._sampled(layer, a))
                    for generation, a in capture.inputs
                    if generation in self._backwarded
                ]
            )
            if bias:
                rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
            if rows.shape[0] == 0:  # an empty batch says nothing about the factors
                return [None, None]
            increments[1] = RowProducts(rows, input_kind, 1.0 / rows.shape[0])
        if output_kind is Side.NONE:
            return increments
        if self.curvature is Curvature.EMPIRICAL:
            if not capture.output_grads:
                raise RuntimeError(f"KFAC: no output gradient was captured for {layer}")
            grads = [output_rows(layer, self._sampled(layer, g)) for g in capture.output_grads]
            # The captured gradients are those of the mean loss over all samples of the step,
            # (1/N) ∂ℓ_i/∂s: B is N²/k Σ_{i ≤ k} (∂ℓ_i/∂s / N)(…)ᵀ for the k samples used.
            sizes = [self._batch_sizes[g] for g in sorted(self._backwarded)]
            total = sum(sizes)
            used = sum(self._samples(n) for n in sizes)
            if used == 0:
                return [None, None]
            increments[0] = RowProducts(_stacked(grads), output_kind, total * total / used)
        elif not capture.output_factors:
            raise RuntimeError(
                f"KFAC: the {self.curvature.value} backward pass did not reach {layer}; was the "
                "loss computed from the model's output? (A compiled model hides its layers' "
                "outputs from autograd: use curvature='empirical' with torch.compile.)"
            )
        elif len(capture.output_factors) == 1:
            increments[0] = capture.output_factors[0][1]
        else:  # micro-batches: the factors' average weighted by their samples
            used = sum(samples for samples, _ in capture.output_factors)
            increments[0] = sum(
                (factor * (samples / used) for samples, factor in capture.output_factors),
                start=torch.zeros_like(capture.output_factors[0][1]),
            )
        return increments

    def _samples(self, batch: int) -> int:
        """How many samples of a batch of ``batch`` feed the factors."""
        return batch if self.statistics_batch is None else min(batch, self.statistics_batch)

    def _sampled(self, layer: Layer, tensor: Tensor) -> Tensor:
        """The first ``statistics_batch`` samples of a layer's input or output (gradient); an
        input without a batch dimension (1-D for a linear layer, 3-D for a convolution) is
        one sample."""
        unbatched = tensor.ndim == (3 if isinstance(layer, nn.Conv2d) else 1)
        if self.statistics_batch is None or unbatched:
            return tensor
        return tensor[: self.statistics_batch]

    # -- hooks -----------------------------------------------------------------------------
    def _recording(self) -> bool:
        return torch.is_grad_enabled() and not self._in_curvature_pass

    def _on_model_input(self, module: nn.Module, args: tuple) -> None:
        # A forward pass under no_grad (evaluation between backward and step) leaves the
        # captures alone.
        if self._recording():
            self._generation += 1
            pending = len(self._batch_sizes) - len(self._backwarded)
            if pending == _PENDING_WARNING:
                warnings.warn(
                    f"KFAC: {pending} forward passes with gradients enabled since the last "
                    "step() were not back-propagated; their captured inputs are kept until "
                    "step(). Run evaluation under torch.no_grad().",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def _on_layer_forward(self, layer: Layer, args: tuple, output: Tensor) -> None:
        if not self._recording() or not output.requires_grad:
            return
        capture = self._captures.get(layer)
        if capture is None:
            kinds = self._needs(layer)
            if kinds == (Side.NONE, Side.NONE):
                return
            capture = self._captures[layer] = LayerCapture(layer, kinds)
        output_kind, input_kind = capture.kinds
        if input_kind is not Side.NONE:
            capture.inputs.append((self._generation, args[0].detach()))
        if output_kind is Side.NONE:
            return
        if self.curvature is Curvature.EMPIRICAL:
            output.register_hook(lambda grad, capture=capture: self._on_output_grad(capture, grad))
        else:
            capture.outputs.append((self._generation, output))

    def _enter_attention(
        self, projections: AttentionProjections, module: nn.Module, args: tuple
    ) -> None:
        # The mode is left by the forward hook, which runs even when the forward raises.
        if torch.compiler.is_compiling():
            raise RuntimeError(
                f"KFAC: torch.compile cannot trace the capture of {projections.name} "
                "(nn.MultiheadAttention's projections are seen through a TorchFunctionMode). "
                "Compile the model before creating KFAC (its attention then takes the Adam "
                "path), or pass skip_layers=[nn.MultiheadAttention]"
            )
        layers = [p for p in (projections.in_proj, projections.out_proj) if p is not None]
        wanted = any(
            layer in self._captures or self._needs(layer) != (Side.NONE, Side.NONE)
            for layer in layers
        )
        if self._recording() and wanted:  # off statistics steps the module runs as it is
            mode = ProjectionMode(projections, self._on_layer_forward)
            mode.__enter__()
            self._attention_modes.append((module, mode))

    def _exit_attention(self, module: nn.Module, args: tuple, output: object) -> None:
        if self._attention_modes and self._attention_modes[-1][0] is module:
            self._attention_modes.pop()[1].__exit__(None, None, None)

    def _on_output_grad(self, capture: LayerCapture, grad: Tensor) -> None:
        capture.output_grads.append(grad.detach())

    def _on_model_output(self, module: nn.Module, args: tuple, output: object) -> None:
        if not self._recording() or not isinstance(output, Tensor) or not output.requires_grad:
            return
        generation = self._generation
        self._batch_sizes[generation] = output.shape[0]
        pending = self.curvature is not Curvature.EMPIRICAL and any(
            g == generation for capture in self._captures.values() for g, _ in capture.outputs
        )
        if pending and output.ndim != 2:
            raise ValueError(
                f"KFAC curvature={self.curvature.value!r} needs a model output of shape "
                f"(batch, outputs); got {tuple(output.shape)}"
            )
        if pending:
            self._pending_outputs[generation] = output
        # The hook must not hold the output itself: output -> hook -> output is a cycle through
        # autograd's C++ objects that Python's collector cannot free (it kept every step's
        # graph alive: ~5 MB a step on a small transformer).
        output.register_hook(lambda grad: self._on_model_output_grad(generation, grad))

    def _on_model_output_grad(self, generation: int, grad: Tensor) -> None:
        # The inner torch.autograd.grad calls reach this hook again.
        if self._in_curvature_pass or generation not in self._batch_sizes:
            return
        if not self._loss_checked and self.curvature is not Curvature.EMPIRICAL:
            # Once: the declared loss shapes the ggn / mc_fisher factors.
            self._loss_checked = True
            check_declared_loss(grad, self.loss)
        self._backwarded.add(generation)
        output = self._pending_outputs.pop(generation, None)
        if output is None:
            return
        self._in_curvature_pass = True
        try:
            self._curvature_backward(output, generation)
        finally:
            self._in_curvature_pass = False

    def _curvature_backward(self, output: Tensor, generation: int) -> None:
        captures = [
            c for c in self._captures.values() if any(g == generation for g, _ in c.outputs)
        ]
        tensors = [[t for g, t in c.outputs if g == generation] for c in captures]
        flat = [t for group in tensors for t in group]
        values = output.detach()
        samples = self._samples(values.shape[0])
        if samples == 0:
            return
        if self.curvature is Curvature.GGN:
            vectors = loss_hessian_sqrt_columns(values, self.loss)
            scale = 1.0 / samples
        else:
            vectors = [
                sampled_loss_gradient(values, self.loss, self.generator)
                for _ in range(self.mc_samples)
            ]
            scale = 1.0 / (samples * self.mc_samples)
        factors: list[Tensor | None] = [None] * len(captures)
        for vector in vectors:
            grads = torch.autograd.grad(
                output, flat, grad_outputs=vector, retain_graph=True, allow_unused=True
            )
            position = 0
            for index, (capture, group) in enumerate(zip(captures, tensors, strict=True)):
                pieces = grads[position : position + len(group)]
                position += len(group)
                rows = [
                    output_rows(capture.layer, self._sampled(capture.layer, g))
                    for g in pieces
                    if g is not None
                ]
                if not rows:
                    continue
                increment = second_moment(_stacked(rows), capture.kinds[0], scale)
                factor = factors[index]
                factors[index] = increment if factor is None else factor.add_(increment)
        for capture, factor in zip(captures, factors, strict=True):
            if factor is not None:
                capture.output_factors.append((samples, factor))
            # The graph tensors are not needed any more; let the graph be freed.
            capture.outputs = [(g, t) for g, t in capture.outputs if g != generation]
