r"""KFAC (Martens & Grosse, 2015) on the per-layer Kronecker abstraction.

For every ``nn.Linear`` layer :math:`s = W a + b` of the model the weight and bias form one
block :math:`\bar W = [W \mid b]` of shape ``(d_out, d_in + 1)`` (the bias is the extra input
column; without a bias the block is ``W``). An ``nn.Conv2d`` (one group, numeric zero padding)
is the same with its kernel viewed as ``(out_channels, in_channels * kh * kw)`` and its input
patches as the rows ``a`` (the "expand" factorization of Grosse & Martens, 2016). With the
output factor :math:`B` (d_out x d_out) and the input factor :math:`A` (:math:`\bar d_{in}` x
:math:`\bar d_{in}`) of :mod:`layerwise.optim.kfac_curvature`, the Gauss–Newton / Fisher block
of the layer is
approximated by :math:`B \otimes A` for the row-major vec of :math:`\bar W`
(``W.flatten()``), and the step is

.. math::
    D = (B + \lambda_B I)^{-1}\, \nabla_{\bar W} L\, (A + \lambda_A I)^{-1}, \qquad
    \bar W \leftarrow (1 - \eta\,\mathrm{wd})\,\bar W - \eta D.

Scaling convention. The loss is torch's ``mse_loss`` or ``cross_entropy`` with
``reduction="mean"``, :math:`L = \frac1n \sum_i \ell_i` over the batch rows of the model output
``(n, c)``, where :math:`\ell_i = \frac1c \lVert f_i - y_i\rVert^2` for MSE (``mse_loss``
averages over all ``n c`` entries). Both factors are averages over the batch, so for a deep
linear network with MSE and ``curvature="ggn"``, :math:`B \otimes A` *is* the exact
Gauss–Newton block of L for the layer and ``exact=True, lr=1`` takes the exact block Newton
step. The loss scale cancels in :math:`(B \otimes A)^{-1} \nabla`, provided the gradient is the
gradient of that mean loss: with ``reduction="sum"`` (not supported) the step would be n times
too large.

Factors. ``accumulation="ema"``: :math:`S \leftarrow \beta S + (1 - \beta) \Delta` every
``statistics_every`` steps, used bias-corrected, :math:`S / (1 - \beta^k)` after k updates (so
the first step uses the first batch's factors); ``"latest"``: :math:`S = \Delta`, exact
per-batch factors. Inverses are recomputed every ``refresh_every`` steps (Cholesky).

Damping. ``damping_split="none"``: :math:`\lambda_A = \lambda_B = \lambda` (``damping``) on
each factor. ``"pi"``: Martens & Grosse's π-split of a total Tikhonov damping :math:`\lambda`,
:math:`\lambda_A = \pi\sqrt\lambda`, :math:`\lambda_B = \sqrt\lambda/\pi` with
:math:`\pi = \sqrt{(\operatorname{tr} A / \dim A) / (\operatorname{tr} B / \dim B)}`.

A side of size 1 (one output, or one input and no bias) has a scalar factor; for the
inverse-root application it is folded into the other side's inverse, so the step still divides
by it. ``sides="input"`` preconditions with :math:`A` only, :math:`D = \nabla (A +
\lambda I)^{-1}`; ``"output"`` with :math:`B` only.

EKFAC (``ekfac=True``): Adam (``betas``, ``eps``) run in the eigenbasis of :math:`B` and
:math:`A` (:class:`~layerwise.optim.kronecker.EigenbasisAdam`, the KFAC twin of SOAP). Where this
departs from George et al. (2018): the second moments are those of the mini-batch gradient
rotated into the basis, not of per-sample gradients, and a first moment (``betas[0]``) is used.

Other parameters (anything that is not the weight or bias of such a layer: norms, embeddings,
grouped convolutions) follow the Adam path of :mod:`layerwise.optim.base`.
"""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from layerwise.optim import kronecker
from layerwise.optim._modes import compute_dtype, resolve_mode
from layerwise.optim.base import (
    STEP,
    Block,
    LayerwiseOptimizer,
    Update,
    check_hyperparameters,
)
from layerwise.optim.kfac_curvature import (
    Curvature,
    CurvatureCapture,
    FactorKind,
    FactorNeeds,
    Layer,
    Loss,
    RowProducts,
    accumulate_row_products,
    input_width,
    output_width,
    supports,
)
from layerwise.optim.kfac_damping import DampingSplit, clip_scale, ema_correction, split_damping
from layerwise.optim.kronecker import (
    Accumulation,
    EigenbasisAdam,
    InverseRoot,
    KroneckerConfig,
    SideKind,
)
from layerwise.optim.matrix import DecompositionError

# State keys of KFAC (besides those of the shell and of the Kronecker preconditioner).
STATISTICS_UPDATES = "statistics_updates"
SCALAR_STATISTICS = ("left_scalar_statistic", "right_scalar_statistic")
#: ``state_dict()`` entry holding the ``mc_fisher`` sampler's generator state.
GENERATOR_STATE = "kfac_generator_state"

_STATISTIC_KEYS = (kronecker.LEFT_STATISTIC, kronecker.RIGHT_STATISTIC)
_PRECONDITIONER_KEYS = (kronecker.LEFT_PRECONDITIONER, kronecker.RIGHT_PRECONDITIONER)


class Sides(enum.StrEnum):
    """Which factors precondition: both, the input factor A only, the output factor B only."""

    BOTH = "both"
    INPUT = "input"
    OUTPUT = "output"


class KFAC(LayerwiseOptimizer):
    r"""KFAC as a ``torch.optim.Optimizer`` over a model's ``nn.Linear`` / ``nn.Conv2d`` layers.

    The training loop stays ``opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()``
    with ``loss_fn`` the mean-reduced loss named by ``loss``; the hooks it needs are registered
    at construction (:meth:`remove_hooks` removes them). One forward and one backward pass of the
    model per step (the factors come from the last one).

    Args:
        model: the module whose output ``(batch, outputs)`` the loss is computed on.
        lr: learning rate :math:`\eta`.
        loss: ``"mse"`` or ``"cross_entropy"`` (``reduction="mean"``).
        curvature: ``"ggn"`` (exact Gauss–Newton output factor; ``outputs`` extra backward
            passes per statistics step, for small output dimension), ``"mc_fisher"``
            (``mc_samples`` extra backward passes with sampled targets) or ``"empirical"``
            (the gradients of the training loss; no extra pass).
        mc_samples: sampled backward passes per statistics step (``mc_fisher``).
        statistics_batch: estimate the factors from the first this-many samples of each batch
            (``None``: all; exact mode: ``None``): at large batches the factor products cost
            as at this batch (the samples of a shuffled batch are a uniform subsample).
        seed: seed of the ``mc_fisher`` sampler (its state is part of ``state_dict``).
        accumulation: ``"ema"`` (with ``statistics_decay``, bias-corrected) or ``"latest"``.
        statistics_decay: EMA decay :math:`\beta` of the factors.
        statistics_every, refresh_every: steps between factor updates / inverse recomputations.
        damping: :math:`\lambda` (see ``damping_split``); default 0 in exact mode, 1e-3 else.
        damping_split: ``"none"`` (λ on each factor) or ``"pi"`` (π-split of a total λ).
        sides: ``"both"``, ``"input"`` (:math:`\nabla (A + \lambda I)^{-1}`) or ``"output"``.
        ekfac: Adam in the Kronecker eigenbasis instead of the inverse factors.
        kl_clip: :math:`c`; per param group the Kronecker blocks' steps are scaled by
            :math:`\nu = \min(1, \sqrt{c / (\eta^2 \sum_{\text{layers}} \langle D, \nabla
            \rangle)})` (Ba et al., 2017); 0 switches it off. Default 1e-3, and off in exact
            mode and for EKFAC: with stale amortized inverses and small damping the unclipped
            step can diverge.
        max_update_norm: if set, the same blocks' steps are scaled so that
            :math:`\eta \lVert D \rVert_F` over the group is at most this.
        momentum, nesterov: heavy-ball momentum on the preconditioned direction (clipping
            scales the final step; the buffer keeps the unclipped directions).
        weight_decay: decoupled weight decay.
        betas, eps, adam_lr_ratio: Adam of the Adam path (at ``lr * adam_lr_ratio``) and of
            EKFAC in the eigenbasis.
        max_preconditioner_dim: sides longer than this keep a diagonal factor.
        precondition_dtype: precision of the per-step products that apply the preconditioner
            (``None``: the parameters' dtype; ``"bfloat16"``: several times faster where bf16
            matrix units exist, the direction then carries bf16 round-off, ~4e-3 relative;
            statistics and decompositions stay in the parameters' dtype). Exact mode: ``None``.
        params: parameters or param groups (default: ``model.parameters()``); a layer's
            weight and bias must be in the same group.
        exact: per-batch factors (``accumulation="latest"``), statistics and inverses every
            step, damping 0 unless given; a singular factor raises
            :class:`~layerwise.optim.matrix.DecompositionError` instead of keeping the previous
            inverse.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
        ...                             torch.nn.Linear(8, 3))
        >>> opt = KFAC(model, lr=0.1, loss="cross_entropy", curvature="ggn")
        >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        >>> opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward()
        >>> opt.step()
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.1,
        *,
        loss: str,
        curvature: str = "ggn",
        mc_samples: int = 1,
        statistics_batch: int | None = None,
        seed: int = 0,
        accumulation: str | None = None,
        statistics_decay: float = 0.95,
        statistics_every: int | None = None,
        refresh_every: int | None = None,
        damping: float | None = None,
        damping_split: str = "none",
        sides: str = "both",
        ekfac: bool = False,
        kl_clip: float | None = None,
        max_update_norm: float | None = None,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        adam_lr_ratio: float = 1.0,
        max_preconditioner_dim: int = 8192,
        precondition_dtype: str | None = None,
        params: Iterable[Any] | None = None,
        exact: bool = False,
    ) -> None:
        mode = resolve_mode(
            exact,
            amortized={
                "accumulation": "ema",
                "statistics_every": 1,
                "refresh_every": 10,
                "precondition_dtype": None,
            },
            exact_values={
                "accumulation": "latest",
                "statistics_every": 1,
                "refresh_every": 1,
                "precondition_dtype": None,
            },
            given={
                "accumulation": accumulation,
                "statistics_every": statistics_every,
                "refresh_every": refresh_every,
                "precondition_dtype": precondition_dtype,
            },
        )
        if damping is None:
            damping = 0.0 if exact else 1e-3
        if damping < 0:
            raise ValueError(f"Invalid damping: {damping!r}")
        if Accumulation(mode["accumulation"]) is Accumulation.SUM:
            raise ValueError("Invalid accumulation: 'sum' (KFAC factors are averages)")
        if not (isinstance(mc_samples, int) and mc_samples >= 1):
            raise ValueError(f"Invalid mc_samples: {mc_samples!r}")
        if statistics_batch is not None:
            if exact:
                raise ValueError(
                    f"exact=True requires statistics_batch=None; got {statistics_batch!r}"
                )
            if not (isinstance(statistics_batch, int) and statistics_batch >= 1):
                raise ValueError(f"Invalid statistics_batch: {statistics_batch!r}")
        if not 0.0 <= statistics_decay < 1.0:
            raise ValueError(f"Invalid statistics_decay: {statistics_decay!r}")
        if kl_clip is None:
            kl_clip = 0.0 if exact or ekfac else 1e-3
        if not kl_clip >= 0:
            raise ValueError(f"Invalid kl_clip: {kl_clip!r}")
        if max_update_norm is not None and not max_update_norm > 0:
            raise ValueError(f"Invalid max_update_norm: {max_update_norm!r}")
        check_hyperparameters(momentum=momentum)

        self._model = model
        self._layers = [m for m in model.modules() if supports(m) and m.weight.requires_grad]
        self._layer_of: dict[nn.Parameter, Layer] = {}
        for layer in self._layers:
            if layer.weight in self._layer_of:
                raise ValueError("KFAC: a weight shared between layers is not supported")
            self._layer_of[layer.weight] = layer

        defaults = dict(
            lr=lr,
            loss=Loss(loss),
            curvature=Curvature(curvature),
            accumulation=Accumulation(mode["accumulation"]),
            statistics_decay=statistics_decay,
            statistics_every=mode["statistics_every"],
            refresh_every=mode["refresh_every"],
            damping=damping,
            damping_split=DampingSplit(damping_split),
            sides=Sides(sides),
            ekfac=ekfac,
            kl_clip=kl_clip,
            max_update_norm=max_update_norm,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            betas=betas,
            eps=eps,
            adam_lr_ratio=adam_lr_ratio,
            max_preconditioner_dim=max_preconditioner_dim,
            precondition_dtype=mode["precondition_dtype"],
            exact=exact,
        )
        if params is None:
            params = [p for p in model.parameters() if p.requires_grad]
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["loss"] != defaults["loss"] or group["curvature"] != defaults["curvature"]:
                raise ValueError("KFAC: loss and curvature are per model, not per param group")
        self._check_layer_groups()
        #: Per param-group index, the factor by which the last step's KFAC directions were
        #: scaled by ``kl_clip`` / ``max_update_norm`` (groups without clipping are absent).
        self.last_update_scales: dict[int, float] = {}

        device = next(iter(model.parameters())).device
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(seed)
        self._capture = CurvatureCapture(
            model,
            self._layers,
            curvature=defaults["curvature"],
            loss=defaults["loss"],
            mc_samples=mc_samples,
            statistics_batch=statistics_batch,
            generator=self._generator,
            needs=self._factor_needs,
        )

    # -- hooks and layers ------------------------------------------------------------------
    def remove_hooks(self) -> None:
        """Remove the module hooks (the optimizer cannot take KFAC steps afterwards)."""
        self._capture.remove()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "_layers"):  # not during torch.optim.Optimizer.__init__
            self._check_layer_groups()

    def _check_layer_groups(self) -> None:
        self._group_index: dict[nn.Parameter, int] = {}
        for index, group in enumerate(self.param_groups):
            for p in group["params"]:
                self._group_index[p] = index
        for layer in self._layers:
            bias = layer.bias
            if bias is not None and bias.requires_grad:
                weight_group = self._group_index.get(layer.weight)
                if weight_group != self._group_index.get(bias):
                    raise ValueError(
                        f"KFAC: weight and bias of {layer} must be in the same param group"
                    )

    @staticmethod
    def _folds_bias(layer: Layer) -> bool:
        return layer.bias is not None and layer.bias.requires_grad

    def _block_shape(self, layer: Layer) -> tuple[int, int]:
        return output_width(layer), input_width(layer) + int(self._folds_bias(layer))

    def _factor_kinds(self, group: dict[str, Any], layer: Layer) -> FactorNeeds:
        """How each side of the layer's block is stored, (output, input); None: unused."""
        config = self.kronecker_config(group)
        shape = self._block_shape(layer)
        active = {
            Sides.BOTH: (True, True),
            Sides.INPUT: (False, True),
            Sides.OUTPUT: (True, False),
        }[Sides(group["sides"])]
        kinds: list[FactorKind | None] = []
        for side_kind, is_active in zip(config.side_kinds(shape), active, strict=True):
            match side_kind:
                case _ if not is_active:
                    kinds.append(None)
                case SideKind.DENSE:
                    kinds.append(FactorKind.DENSE)
                case SideKind.DIAGONAL:
                    kinds.append(FactorKind.DIAGONAL)
                case _:
                    # A side of size 1: its scalar only matters for the inverse (EKFAC's Adam
                    # normalizes the scale on its own).
                    scalar = isinstance(config.transform, InverseRoot)
                    kinds.append(FactorKind.SCALAR if scalar else None)
        return kinds[0], kinds[1]

    def _factor_needs(self, layer: Layer) -> FactorNeeds:
        """Asked by the hooks at each forward pass: the factors the next step will use."""
        index = self._group_index.get(layer.weight)
        if index is None:
            return None, None
        group = self.param_groups[index]
        state = self.state.get(layer.weight)
        steps_done = state.get(STEP, 0) if state else 0
        if steps_done % group["statistics_every"] != 0:
            return None, None
        return self._factor_kinds(group, layer)

    # -- the shell's hooks -----------------------------------------------------------------
    def kronecker_config(self, group: dict[str, Any]) -> KroneckerConfig:
        transform: InverseRoot | EigenbasisAdam
        dtype = compute_dtype(group["precondition_dtype"], knob="precondition_dtype")
        if group["ekfac"]:
            transform = EigenbasisAdam(
                beta2=group["betas"][1], epsilon=group["eps"], compute_dtype=dtype
            )
        else:
            transform = InverseRoot(root=1, damping=group["damping"], compute_dtype=dtype)
        return KroneckerConfig(
            transform=transform,
            accumulation=group["accumulation"],
            decay=group["statistics_decay"] if group["accumulation"] == Accumulation.EMA else 0.0,
            max_preconditioner_dim=group["max_preconditioner_dim"],
            # Exact mode: a singular factor is an error, not a silently kept old inverse.
            max_consecutive_failures=0 if group["exact"] else None,
        )

    def first_moment_beta(self, group: dict[str, Any]) -> float:
        # KFAC preconditions the raw gradient (its momentum is the heavy ball on D); EKFAC is
        # Adam in the eigenbasis, first moment included.
        return group["betas"][0] if group["ekfac"] else 0.0

    def blocks(self, group: dict[str, Any]) -> list[Block]:
        blocks: list[Block] = []
        folded: set[nn.Parameter] = set()
        for p in group["params"]:
            layer = self._layer_of.get(p)
            if layer is None or p.grad is None:
                continue
            params: tuple[nn.Parameter, ...] = (p,)
            if self._folds_bias(layer):
                assert layer.bias is not None
                if layer.bias.grad is None:
                    raise RuntimeError(f"KFAC: {layer} has a weight gradient but no bias gradient")
                params = (p, layer.bias)
                folded.add(layer.bias)
            blocks.append(Block(params, kronecker=True))
        for p in group["params"]:
            if p.grad is not None and p not in self._layer_of and p not in folded:
                blocks.append(Block((p,), kronecker=False))
        return blocks

    def _init_state(
        self,
        state: dict[str, Any],
        block: Block,
        config: KroneckerConfig | None,
        grad: Tensor,
    ) -> None:
        super()._init_state(state, block, config, grad)
        if not block.kronecker:
            return
        group = self.param_groups[self._group_index[block.key]]
        kinds = self._factor_kinds(group, self._layer_of[block.key])
        state[STATISTICS_UPDATES] = 0
        for side, kind in enumerate(kinds):
            if kind is None:
                state.pop(_STATISTIC_KEYS[side], None)
                state.pop(_PRECONDITIONER_KEYS[side], None)
            elif kind is FactorKind.SCALAR:
                state[SCALAR_STATISTICS[side]] = grad.new_zeros(())

    def accumulate_statistics(
        self,
        group: dict[str, Any],
        block: Block,
        config: KroneckerConfig,
        grad: Tensor,
        state: dict[str, Any],
    ) -> None:
        layer = self._layer_of[block.key]
        kinds = self._factor_kinds(group, layer)
        increments = self._capture.factor_increments(layer, kinds, bias=self._folds_bias(layer))
        state[STATISTICS_UPDATES] += 1
        beta, alpha = kronecker.accumulation_weights(config)
        for side, (kind, increment) in enumerate(zip(kinds, increments, strict=True)):
            if kind is None or increment is None:
                continue
            # A scalar side has its own key, with the same accumulation rule.
            key = SCALAR_STATISTICS[side] if kind is FactorKind.SCALAR else _STATISTIC_KEYS[side]
            if isinstance(increment, RowProducts):
                accumulate_row_products(state[key], increment, beta=beta, alpha=alpha)
            else:
                kronecker.accumulate_increment(config, state[key], increment)

    def refresh(
        self, group: dict[str, Any], block: Block, config: KroneckerConfig, state: dict[str, Any]
    ) -> None:
        if not isinstance(config.transform, InverseRoot):
            kronecker.refresh(config, state)
            return
        kinds = self._factor_kinds(group, self._layer_of[block.key])
        # (S / c + λ)⁻¹ = c (S + c λ)⁻¹ with c the EMA bias correction.
        correction = 1.0
        if config.accumulation is Accumulation.EMA:
            correction = ema_correction(config.decay, state[STATISTICS_UPDATES])
        dampings = self._split_damping(group, state, kinds)
        folded = 1.0
        for side, kind in enumerate(kinds):
            if kind is FactorKind.SCALAR:
                value = float(state[SCALAR_STATISTICS[side]]) + correction * dampings[side]
                if not (math.isfinite(value) and value > 0):
                    self._scalar_failure(config, state, value)
                    return
                folded *= correction / value
        # A scalar side's inverse is folded into the first side that has a preconditioner.
        present = [side for side, key in enumerate(_PRECONDITIONER_KEYS) if key in state]
        scales = [correction if side in present else 1.0 for side in range(2)]
        if present:
            scales[present[0]] *= folded
        kronecker.refresh(
            config,
            state,
            damping=(correction * dampings[0], correction * dampings[1]),
            scales=(scales[0], scales[1]),
        )

    def _split_damping(
        self, group: dict[str, Any], state: dict[str, Any], kinds: FactorNeeds
    ) -> tuple[float, float]:
        damping = group["damping"]
        if group["damping_split"] == DampingSplit.NONE or None in kinds or damping == 0:
            return damping, damping
        means = []
        for side, kind in enumerate(kinds):
            if kind is FactorKind.SCALAR:
                means.append(float(state[SCALAR_STATISTICS[side]]))
            else:
                statistic = state[_STATISTIC_KEYS[side]]
                diagonal = statistic.diagonal() if statistic.ndim == 2 else statistic
                means.append(float(diagonal.mean()))
        return split_damping(damping, group["damping_split"], means[0], means[1])

    @staticmethod
    def _scalar_failure(config: KroneckerConfig, state: dict[str, Any], value: float) -> None:
        """The failure policy of :func:`kronecker.refresh` for a scalar (size-1) factor."""
        state[kronecker.FAILED_REFRESHES] += 1
        state[kronecker.CONSECUTIVE_FAILURES] += 1
        limit = config.max_consecutive_failures
        message = f"scalar KFAC factor {value:.3g} is not positive: add damping"
        if limit is not None and state[kronecker.CONSECUTIVE_FAILURES] > limit:
            raise DecompositionError(message)
        warnings.warn(f"{message}; keeping the previous inverse", RuntimeWarning, stacklevel=4)

    def update_scales(self, updates: list[Update]) -> list[float]:
        scales: dict[int, float] = {}
        for index, group in enumerate(self.param_groups):
            if not group["kl_clip"] and group["max_update_norm"] is None:
                continue
            mine = [(b, d) for g, b, d in updates if g is group and b.kronecker]
            # KFAC's own directions carry no factor; another one would scale ⟨D, ∇⟩ and ‖D‖.
            if not mine:
                continue
            scale = clip_scale(
                group["lr"],
                kl_clip=group["kl_clip"],
                max_update_norm=group["max_update_norm"],
                inner=sum(_inner(b, d.tensor) * float(d.factor) for b, d in mine)
                if group["kl_clip"]
                else 0.0,
                squared_norm=sum(
                    float(d.tensor.square().sum()) * float(d.factor) ** 2 for _, d in mine
                )
                if group["max_update_norm"] is not None
                else 0.0,
            )
            scales[index] = scale
        self.last_update_scales = scales
        by_group = {id(group): i for i, group in enumerate(self.param_groups)}
        return [scales.get(by_group[id(g)], 1.0) if b.kronecker else 1.0 for g, b, _ in updates]

    # -- the step and checkpoints ----------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Any = None) -> float | None:  # type: ignore[override]
        try:
            return super().step(closure)
        finally:
            # Captures belong to one step; nothing of them is needed afterwards (checkpoints).
            self._capture.clear()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state[GENERATOR_STATE] = self._generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        generator_state = state_dict.pop(GENERATOR_STATE, None)
        super().load_state_dict(state_dict)
        if generator_state is not None:
            self._generator.set_state(generator_state)
        self._check_layer_groups()


def _inner(block: Block, direction: Tensor) -> float:
    """⟨D, ∇⟩ of a block, parameter by parameter (no concatenated copy of the gradient)."""
    pieces = block.split(direction)
    return sum(
        float(torch.vdot(piece.reshape(-1), p.grad.reshape(-1).to(piece.dtype)))
        for piece, p in zip(pieces, block.params, strict=True)
    )


__all__ = ["KFAC", "Curvature", "DampingSplit", "Loss", "Sides"]
