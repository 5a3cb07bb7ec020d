r"""Where a block's statistics come from: gradient products, or layer factors from hooks.

- :class:`GradientProducts` (Shampoo, SOAP): :math:`L \mathrel{+}= G G^\top`,
  :math:`R \mathrel{+}= G^\top G` of the block's gradient :math:`G`, each product fused with
  its accumulation. Every parameter with two or more dimensions is a block (viewed as
  ``(shape[0], prod(shape[1:]))``).
- :class:`LayerFactors` (KFAC, EKFAC): the output-gradient factor :math:`B` and the input
  factor :math:`A` of each ``nn.Linear`` / ``nn.Conv2d`` layer, captured by module hooks
  (:mod:`layerwise.optim.kfac_curvature`). A layer's weight and bias form one block
  :math:`[W \mid b]`; the other parameters take the Adam path.

A statistics part is a frozen config; the optimizer turns it into a *source*
(:class:`GradientSource`, :class:`LayerFactorSource`) that forms the blocks of a param group
and folds the increments of a statistics step into the block's state. Transforms without
statistics (Muon) use the gradient source's blocks and no increments.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from layerwise.optim.distributed import Distributed, all_reduce_coalesced
from layerwise.optim.factor_sync import FactorReduction, Key, Share
from layerwise.optim.kfac_attention import (
    AttentionProjections,
    cross_attention_modules,
    packed_in_projection,
    unsupported_attention,
)
from layerwise.optim.kfac_curvature import (
    Curvature,
    CurvatureCapture,
    Layer,
    Loss,
    RowProducts,
    accumulate_row_products,
    input_width,
    output_width,
    unsupported_reason,
)
from layerwise.optim.kronecker import (
    STATISTIC_KEYS,
    STEP,
    Accumulation,
    Side,
    SideLayout,
    accumulate_increment,
    accumulation_weights,
    statistics_dtype,
)


@dataclass(frozen=True)
class Block:
    """Parameters preconditioned together as one ``(m, n)`` matrix (state lives on the first).

    ``kronecker=False`` sends the block down the Adam path (each tensor entry-wise).
    """

    params: tuple[nn.Parameter, ...]
    kronecker: bool

    @property
    def key(self) -> nn.Parameter:
        return self.params[0]

    def matrix(self, tensors: Sequence[Tensor]) -> Tensor:
        """View (and for a weight + bias pair, concatenate) the block's tensors as a matrix."""
        if not self.kronecker:
            return tensors[0]
        first = tensors[0].reshape(tensors[0].shape[0], -1)
        if len(tensors) == 1:
            return first
        return torch.cat([first, *(t.reshape(first.shape[0], -1) for t in tensors[1:])], dim=1)

    def split(self, matrix: Tensor) -> list[Tensor]:
        """Inverse of :meth:`matrix`: the block's tensors from a matrix of its shape."""
        if len(self.params) == 1:
            return [matrix.reshape(self.params[0].shape)]
        widths = [p.numel() // p.shape[0] for p in self.params]
        pieces = torch.split(matrix, widths, dim=1)
        return [piece.reshape(p.shape) for piece, p in zip(pieces, self.params, strict=True)]


@dataclass(frozen=True, kw_only=True)
class GradientProducts:
    """Shampoo's statistics, :math:`GG^\\top` and :math:`G^\\top G` (module docstring)."""

    #: A size-1 side of a gradient product only repeats the other side's trace.
    scalar_sides: ClassVar[bool] = False


@dataclass(frozen=True, kw_only=True)
class LayerFactors:
    r"""KFAC's statistics: Kronecker factors of each layer, captured by hooks.

    ``curvature``: where the output-gradient factor comes from — ``"empirical"`` (the
    gradients of the training loss; no extra pass), ``"mc_fisher"`` (``mc_samples`` backward
    passes with targets sampled from the model) or ``"ggn"`` (the exact Gauss–Newton factor;
    one backward pass per model output). ``loss``: the training loss, mean-reduced
    (``"mse"`` or ``"cross_entropy"``). ``statistics_batch``: factors from the first this-many
    samples of each batch (``None``: all). ``seed``: of the ``mc_fisher`` sampler. See
    :mod:`layerwise.optim.kfac_curvature` for the definitions.
    """

    #: A layer with one output (or one input and no bias) has a scalar factor that matters.
    scalar_sides: ClassVar[bool] = True

    loss: Loss
    curvature: Curvature = Curvature.EMPIRICAL
    mc_samples: int = 1
    statistics_batch: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "loss", Loss(self.loss))
        object.__setattr__(self, "curvature", Curvature(self.curvature))
        if not (isinstance(self.mc_samples, int) and self.mc_samples >= 1):
            raise ValueError(f"Invalid mc_samples: {self.mc_samples!r}")
        batch = self.statistics_batch
        if batch is not None and not (isinstance(batch, int) and batch >= 1):
            raise ValueError(f"Invalid statistics_batch: {batch!r}")


Statistics = GradientProducts | LayerFactors

#: ``(param group) -> (parts)``: how a source reads a group's composition.
PartsOf = Callable[[dict[str, Any]], Any]


class GradientSource:
    """Blocks of every matrix parameter; statistics from the block's gradient."""

    scalar_sides: ClassVar[bool] = GradientProducts.scalar_sides

    def blocks(self, group: dict[str, Any]) -> list[Block]:
        """One block per parameter with a gradient: matrices (after the >2-D view) go to the
        Kronecker path, everything else to the Adam path (empty parameters to neither)."""
        return [
            Block((p,), kronecker=self.is_matrix(p))
            for p in group["params"]
            if p.grad is not None and p.numel() > 0
        ]

    @staticmethod
    def is_matrix(param: Tensor) -> bool:
        """Whether ``param``'s block takes the Kronecker path (gradient or none)."""
        return param.ndim >= 2 and param.numel() > 0

    def accumulate(
        self,
        block: Block,
        state: dict[str, Any],
        grad: Tensor,
        layout: SideLayout,
        accumulation: Accumulation,
        decay: float,
    ) -> bool:
        r"""Fold :math:`G G^\top` and :math:`G^\top G` (their diagonals for diagonal sides) into
        the statistics. A dense side is one fused product, :math:`S \leftarrow \beta S + (1 -
        \beta)\, G G^\top` as a single in-place ``addmm`` (BLAS's own :math:`\beta C + \alpha
        AB`): no increment is materialized and no extra pass is made over :math:`S`. Returns
        whether anything was folded in."""
        beta, alpha = accumulation_weights(accumulation, decay)
        for side, (key, kind) in enumerate(zip(STATISTIC_KEYS, layout, strict=True)):
            if kind is Side.NONE:
                continue
            statistic = state[key]
            g = grad if grad.dtype == statistic.dtype else grad.to(statistic.dtype)
            if kind is Side.DENSE:
                first, second = (g, g.mT) if side == 0 else (g.mT, g)
                statistic.addmm_(first, second, beta=beta, alpha=alpha)
            else:
                accumulate_increment(accumulation, decay, statistic, g.square().sum(dim=1 - side))
        return True

    def step_done(self) -> None:
        """Nothing is kept between steps."""

    def synchronize(self) -> None:
        """Nothing is in flight: the statistics in the state are always complete."""

    def in_flight_tensors(self) -> list[Tensor]:
        """Buffers held outside the optimizer state (none)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""

    def index(self, param_groups: list[dict[str, Any]]) -> None:
        """Nothing depends on the groups."""


def _skipped(name: str, module: nn.Module, skip_layers: Sequence[str | type]) -> bool:
    """Whether ``skip_layers`` names ``name`` (or a prefix of it up to a dot) or types
    ``module``."""
    types = tuple(s for s in skip_layers if isinstance(s, type))
    names = [s for s in skip_layers if isinstance(s, str)]
    return isinstance(module, types) or any(name == n or name.startswith(n + ".") for n in names)


def _preconditioned_layers(
    model: nn.Module, skip_layers: Sequence[str | type], compiled: bool = False
) -> tuple[list[Layer], list[AttentionProjections]]:
    """The layers KFAC preconditions: supported ``nn.Linear`` / ``nn.Conv2d`` modules with a
    trainable, non-empty weight, and the packed in-projection and the out-projection of each
    self-attention ``nn.MultiheadAttention`` (:mod:`layerwise.optim.kfac_attention`), except
    those named or typed in ``skip_layers`` (a name is a module's name in
    ``model.named_modules()`` or a prefix of it up to a dot; an attention module's packed
    in-projection is named ``<module>.in_proj``). A layer a user would expect to be
    preconditioned but that is not gets one warning naming it and why. ``compiled``: the
    model is compiled (``torch.compile`` cannot trace the attention capture: attention takes
    the Adam path)."""
    cross = cross_attention_modules(model)
    attention: list[AttentionProjections] = []
    inside_attention: set[int] = set()
    left_out: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.MultiheadAttention):
            continue
        inside_attention.update(id(child) for child in module.modules() if child is not module)
        if _skipped(name, module, skip_layers):
            continue
        reason = unsupported_attention(module, cross=id(module) in cross)
        if compiled and reason is None:
            reason = "a compiled model: torch.compile cannot trace KFAC's attention capture"
        if reason is not None:
            left_out.append(f"{name} ({reason})")
            continue
        weight = module.in_proj_weight
        in_proj = None
        if weight.requires_grad and not _skipped(name + ".in_proj", module, skip_layers):
            in_proj = packed_in_projection(module)
        out_proj = module.out_proj
        if not out_proj.weight.requires_grad or _skipped(name + ".out_proj", out_proj, skip_layers):
            out_proj = None
        if in_proj is not None or out_proj is not None:
            attention.append(AttentionProjections(name, module, in_proj, out_proj))
    layers: list[Layer] = [
        layer
        for projections in attention
        for layer in (projections.in_proj, projections.out_proj)
        if layer is not None
    ]
    for name, module in model.named_modules():
        if id(module) in inside_attention or not isinstance(
            module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d
        ):
            continue
        if not module.weight.requires_grad or module.weight.numel() == 0:
            continue
        if _skipped(name, module, skip_layers):
            continue  # excluded on purpose: no warning
        reason = unsupported_reason(module)
        if reason is not None:
            left_out.append(f"{name} ({reason})")
            continue
        layers.append(module)  # type: ignore[arg-type]
    if left_out:
        warnings.warn(
            "KFAC: these layers take the Adam path: " + "; ".join(left_out) + ". Pass them in "
            "skip_layers to silence this.",
            UserWarning,
            stacklevel=5,
        )
    return layers, attention


def _is_wrapper(model: nn.Module) -> bool:
    """Whether ``model`` is a data-parallel wrapper (``DistributedDataParallel``,
    ``DataParallel``) whose layers live in ``model.module``."""
    return isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel)


def _compiled(model: nn.Module) -> bool:
    """Whether ``model`` is ``torch.compile(module)`` or was compiled in place
    (``module.compile()``)."""
    return hasattr(model, "_orig_mod") or getattr(model, "_compiled_call_impl", None) is not None


#: ``state_dict()`` entry holding the ``mc_fisher`` sampler's generator state.
GENERATOR_STATE = "kfac_generator_state"


class LayerFactorSource(GradientSource):
    """KFAC's source: hooks on the model's layers (:class:`CurvatureCapture`), blocks of weight
    and bias, factor increments from what the hooks captured.

    ``parts_of(group)`` gives the composition of a param group and ``state_of(param)`` the
    optimizer state of a block: at each forward pass the hooks ask which factors the coming
    step needs (none off statistics steps).
    """

    scalar_sides: ClassVar[bool] = LayerFactors.scalar_sides

    def __init__(
        self,
        model: nn.Module,
        factors: LayerFactors,
        *,
        parts_of: PartsOf,
        state_of: Callable[[nn.Parameter], dict[str, Any]],
        skip_layers: Sequence[str | type] = (),
        distributed: Distributed | None = None,
    ) -> None:
        # A DistributedDataParallel (or DataParallel) wrapper: the layers are the inner
        # module's, the model-output hooks sit on the wrapper (they see its output).
        inner = getattr(model, "module", None)
        inner = inner if isinstance(inner, nn.Module) and _is_wrapper(model) else model
        if factors.curvature is not Curvature.EMPIRICAL and (_compiled(model) or _compiled(inner)):
            raise ValueError(
                f"KFAC curvature={factors.curvature.value!r} back-propagates to the layers' "
                "outputs, which a compiled model (torch.compile) hides from autograd; use "
                "curvature='empirical' with a compiled model"
            )
        self._model = model
        self._skip_layers = tuple(skip_layers)
        self.factors = factors
        self._parts_of = parts_of
        self._state_of = state_of
        self.distributed = distributed if distributed is not None else Distributed()
        #: Under a process group: the factor all-reduce launched by the last statistics step,
        #: folded into the factors when they are next needed (:mod:`layerwise.optim.factor_sync`),
        #: and whether the current step has launched it.
        self._reduction: FactorReduction | None = None
        self._launched = False
        compiled = _compiled(model) or _compiled(inner)
        self.layers, self.attention = _preconditioned_layers(inner, skip_layers, compiled)
        self._layer_of: dict[nn.Parameter, Layer] = {}
        for layer in self.layers:
            if layer.weight in self._layer_of:
                raise ValueError("KFAC: a weight shared between layers is not supported")
            self._layer_of[layer.weight] = layer
        self._groups: list[dict[str, Any]] = []
        self._group_index: dict[nn.Parameter, int] = {}
        device = next(iter(model.parameters())).device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(self._seed(factors))
        self.capture = CurvatureCapture(
            model,
            self.layers,
            curvature=factors.curvature,
            loss=factors.loss,
            mc_samples=factors.mc_samples,
            statistics_batch=factors.statistics_batch,
            generator=self.generator,
            needs=self._needs,
            attention=self.attention,
        )

    # -- groups and blocks -----------------------------------------------------------------
    def index(self, param_groups: list[dict[str, Any]]) -> None:
        """Map parameters to their groups and take the groups' factor settings, which are per
        model (a checkpoint may bring others). A layer's bias may sit in another group than its
        weight (e.g. without weight decay): it is still folded into the weight's block, whose
        factors it shares, and its own group's learning rate and weight decay apply to it."""
        factors = {self._parts_of(g).statistics for g in param_groups}
        if len(factors) != 1 or not isinstance(next(iter(factors)), LayerFactors):
            raise ValueError(
                "KFAC: the layer factors (loss, curvature, mc_samples, statistics_batch, seed) "
                f"are per model, not per param group; got {sorted(map(repr, factors))}"
            )
        self._configure(factors.pop())
        self._groups = param_groups
        self._group_index = {p: i for i, g in enumerate(param_groups) for p in g["params"]}

    def __deepcopy__(self, memo: dict[int, Any]) -> LayerFactorSource:
        """A deep copy (of the optimizer, and with it of the model) hooks the copied model's
        layers: the copy captures its own factors and steps on its own."""
        copy_of = copy.deepcopy
        new = LayerFactorSource.__new__(LayerFactorSource)
        memo[id(self)] = new
        new._model = copy_of(self._model, memo)
        new._skip_layers = self._skip_layers
        new.factors = self.factors
        new._parts_of = copy_of(self._parts_of, memo)
        new._state_of = copy_of(self._state_of, memo)
        new.layers = [copy_of(layer, memo) for layer in self.layers]
        new.attention = copy_of(self.attention, memo)
        new._layer_of = {layer.weight: layer for layer in new.layers}
        new._groups = copy_of(self._groups, memo)
        new._group_index = copy_of(self._group_index, memo)
        new.distributed = self.distributed
        self.synchronize()  # the copied factors are complete; nothing is in flight in the copy
        new._reduction = None
        new._launched = False
        new.generator = torch.Generator(device=self.generator.device)
        new.generator.set_state(self.generator.get_state())
        new.capture = CurvatureCapture(
            new._model,
            new.layers,
            curvature=self.factors.curvature,
            loss=self.factors.loss,
            mc_samples=self.factors.mc_samples,
            statistics_batch=self.factors.statistics_batch,
            generator=new.generator,
            needs=new._needs,
            attention=new.attention,
        )
        return new

    def _configure(self, factors: LayerFactors) -> None:
        if factors.seed != self.factors.seed:
            self.generator.manual_seed(self._seed(factors))
        self.factors = factors
        self.capture.curvature = factors.curvature
        self.capture.loss = factors.loss
        self.capture.mc_samples = factors.mc_samples
        self.capture.statistics_batch = factors.statistics_batch

    def _seed(self, factors: LayerFactors) -> int:
        """The ``mc_fisher`` sampler's seed: ``seed + rank`` under a process group, so that the
        ranks draw independent targets."""
        return factors.seed + self.distributed.rank

    @staticmethod
    def folds_bias(layer: Layer) -> bool:
        return layer.bias is not None and layer.bias.requires_grad

    def block_shape(self, layer: Layer) -> tuple[int, int]:
        return output_width(layer), input_width(layer) + int(self.folds_bias(layer))

    def _preconditioned(self, layer: Layer) -> bool:
        index = self._group_index.get(layer.weight)
        return index is not None and self._parts_of(self._groups[index]).preconditioned

    def blocks(self, group: dict[str, Any]) -> list[Block]:
        """A block ``[W | b]`` per layer whose weight is in ``group`` (with its bias, wherever
        the bias's group is); the group's other parameters take the Adam path."""
        blocks: list[Block] = []
        for p in group["params"]:
            layer = self._layer_of.get(p)
            if layer is None or p.grad is None:
                continue
            params: tuple[nn.Parameter, ...] = (p,)
            if self.folds_bias(layer):
                assert layer.bias is not None
                if layer.bias.grad is None:
                    raise RuntimeError(f"KFAC: {layer} has a weight gradient but no bias gradient")
                params = (p, layer.bias)
            blocks.append(Block(params, kronecker=True))
        folded = {
            layer.bias
            for layer in self.layers
            if self.folds_bias(layer)
            and layer.weight.grad is not None
            and self._preconditioned(layer)
        }
        for p in group["params"]:
            if p.grad is None or p.numel() == 0 or p in self._layer_of or p in folded:
                continue
            blocks.append(Block((p,), kronecker=False))
        return blocks

    def _needs(self, layer: Layer) -> SideLayout:
        """Asked by the hooks at each forward pass: the factors the next step will use."""
        index = self._group_index.get(layer.weight)
        if index is None:
            return Side.NONE, Side.NONE
        parts = self._parts_of(self._groups[index])
        state = self._state_of(layer.weight)
        steps_done = state.get(STEP, 0) if state else 0
        if not parts.preconditioned or steps_done % parts.statistics_every != 0:
            return Side.NONE, Side.NONE
        return parts.layout(self.block_shape(layer), scalar_sides=self.scalar_sides)

    # -- statistics ------------------------------------------------------------------------
    def accumulate(
        self,
        block: Block,
        state: dict[str, Any],
        grad: Tensor,
        layout: SideLayout,
        accumulation: Accumulation,
        decay: float,
    ) -> bool:
        layer = self._layer_of[block.key]
        beta, alpha = accumulation_weights(accumulation, decay)
        if self.distributed.active:
            return self._fold_share(layer, state, layout, beta, alpha)
        increments = self.capture.factor_increments(layer, layout, bias=self.folds_bias(layer))
        if all(increment is None for increment in increments):
            return False  # an empty batch
        for key, kind, increment in zip(STATISTIC_KEYS, layout, increments, strict=True):
            if kind is Side.NONE or increment is None:
                continue
            if isinstance(increment, RowProducts):
                accumulate_row_products(state[key], increment, beta=beta, alpha=alpha)
            else:
                accumulate_increment(accumulation, decay, state[key], increment)
        return True

    def _fold_share(
        self, layer: Layer, state: dict[str, Any], layout: SideLayout, beta: float, alpha: float
    ) -> bool:
        r"""Under a process group: the step's first call launches the all-reduce of every
        layer's shares (:mod:`layerwise.optim.factor_sync`); each call registers
        :math:`S \leftarrow \beta S + \alpha \bar\Delta` for the sides of ``layer``, applied
        when the reduction is waited on (:meth:`synchronize`)."""
        if not self._launched:
            self.synchronize()  # the previous step's folds come first (step() waited already)
            self._reduction = FactorReduction.launch(self._shares(), self.distributed.group)
            self._launched = True
        reduction = self._reduction
        assert reduction is not None
        folded = False
        for side, (key, kind) in enumerate(zip(STATISTIC_KEYS, layout, strict=True)):
            if kind is Side.NONE or (layer, side) not in reduction.means:
                continue  # no rank contributed to this side (or only empty batches)
            reduction.fold_into((layer, side), state[key], beta=beta, alpha=alpha)
            folded = True
        return folded

    def _samples(self) -> int:
        """The samples the output factors of this step come from (``statistics_batch`` of each
        back-propagated forward pass)."""
        capture = self.capture
        return sum(capture._samples(capture._batch_sizes[g]) for g in capture._backwarded)

    def _shares(self) -> dict[Key, Share]:
        r"""This step's increment of every side of every captured layer and this rank's weight
        :math:`w_r / W` of it (``A``: the input rows, ``B``: the samples it contributed; sides
        where :math:`W = 0` are left out), in the order of the layers. One ``all_reduce`` of
        three numbers per layer (the two weights and whether this rank captured the layer)
        whatever was captured, so that a layer captured on some ranks only is refused alike on
        every rank."""
        samples = self._samples()
        like = self.layers[0].weight
        weights = torch.zeros(len(self.layers), 3, dtype=torch.float64, device=like.device)
        increments: dict[Layer, list[Any]] = {}
        for index, layer in enumerate(self.layers):
            capture = self.capture.capture(layer)
            if capture is None:
                continue
            weights[index, 2] = 1.0
            kinds = capture.kinds
            found = self.capture.factor_increments(layer, kinds, bias=self.folds_bias(layer))
            increments[layer] = found
            for side, (kind, increment) in enumerate(zip(kinds, found, strict=True)):
                if kind is Side.NONE or increment is None:
                    continue
                rows = isinstance(increment, RowProducts) and side == 1
                weights[index, side] = float(increment.rows.shape[0]) if rows else float(samples)
        local = weights.tolist()
        all_reduce_coalesced([weights], self.distributed.group)
        totals = weights.tolist()
        world = self.distributed.world_size
        partial = [
            str(layer) for layer, t in zip(self.layers, totals, strict=True) if 0 < t[2] < world
        ]
        if partial:
            raise RuntimeError(
                f"KFAC: the factors of {', '.join(partial)} were captured on some ranks only; "
                "every rank must run the same model's forward and backward pass before step()"
            )
        shares: dict[Key, Share] = {}
        for layer, mine, total in zip(self.layers, local, totals, strict=True):
            if total[2] == 0:
                continue
            capture = self.capture.capture(layer)
            assert capture is not None, "every rank captured the layer (checked above)"
            dtype, device = statistics_dtype(layer.weight.dtype), layer.weight.device
            for side, (kind, size) in enumerate(
                zip(capture.kinds, self.block_shape(layer), strict=True)
            ):
                if total[side] == 0:
                    continue
                weight = mine[side] / total[side]
                increment = increments[layer][side] if weight > 0 else None
                shape = {Side.DENSE: (size, size), Side.DIAGONAL: (size,), Side.SCALAR: ()}[kind]
                shares[(layer, side)] = Share(increment, weight, shape, dtype, device)
        return shares

    def synchronize(self) -> None:
        r"""Fold the factor all-reduce in flight into the factors,
        :math:`S \leftarrow \beta S + \alpha \bar\Delta`, once this rank's handle has completed:
        a local wait, not a collective (a rank may call it alone, as ``state_dict()`` on rank 0).
        Between steps the reduction is then dropped; within the step that launched it, it is
        kept for the blocks still to be folded (a refresh waits before later param groups)."""
        if self._reduction is None:
            return
        self._reduction.wait()
        if not self._launched:
            self._reduction = None

    def step_done(self) -> None:
        # Captures belong to one step; nothing of them is needed afterwards (checkpoints). The
        # reduction stays in flight: it overlaps the next forward and backward pass.
        self.capture.clear()
        self._launched = False

    def in_flight_tensors(self) -> list[Tensor]:
        """The buffers of the factor all-reduce in flight (held outside the optimizer state
        until the next step)."""
        return [] if self._reduction is None else list(self._reduction.buffers)

    def remove_hooks(self) -> None:
        self.capture.remove()

    def state_dict(self) -> dict[str, Any]:
        return {GENERATOR_STATE: self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        generator_state = state.get(GENERATOR_STATE)
        if generator_state is not None:
            self.generator.set_state(generator_state)
