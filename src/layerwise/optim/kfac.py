r"""KFAC (Martens & Grosse, 2015) and EKFAC (George et al., 2018) as compositions.

For every ``nn.Linear`` layer :math:`s = W a + b` of the model the weight and bias form one
block :math:`\bar W = [W \mid b]` of shape ``(d_out, d_in + 1)`` (the bias is the extra input
column; without a bias the block is ``W``). An ``nn.Conv2d`` (one group, numeric zero padding)
is the same with its kernel viewed as ``(out_channels, in_channels * kh * kw)`` and its input
patches as the rows ``a`` (the "expand" factorization of Grosse & Martens, 2016). With the
output factor :math:`B` (d_out x d_out) and the input factor :math:`A` (:math:`\bar d_{in}` x
:math:`\bar d_{in}`) of :mod:`layerwise.optim.kfac_curvature`, the Gauss–Newton / Fisher block
of the layer is approximated by :math:`B \otimes A` for the row-major vec of :math:`\bar W`
(``W.flatten()``), and the step is

.. math::
    D = (B + \lambda_B I)^{-1}\, \nabla_{\bar W} L\, (A + \lambda_A I)^{-1}, \qquad
    \bar W \leftarrow (1 - \eta\,\mathrm{wd})\,\bar W - \eta D.

The composition: :class:`~layerwise.optim.statistics.LayerFactors` x bias-corrected EMA (or the
latest batch) x :class:`~layerwise.optim.transforms.InverseRoot` with ``root=1`` (EKFAC:
:class:`~layerwise.optim.transforms.EigenbasisAdam`), with
:class:`~layerwise.optim.policies.Clipping` and :class:`~layerwise.optim.policies.HeavyBall`.

Scaling convention. The loss is torch's ``mse_loss`` or ``cross_entropy`` with
``reduction="mean"``, :math:`L = \frac1n \sum_i \ell_i` over the batch rows of the model output
``(n, c)``, where :math:`\ell_i = \frac1c \lVert f_i - y_i\rVert^2` for MSE (``mse_loss``
averages over all ``n c`` entries). Both factors are averages over the batch, so for a deep
linear network with MSE and ``curvature="ggn"``, :math:`B \otimes A` *is* the exact
Gauss–Newton block of L for the layer and ``exact=True, lr=1`` takes the exact block Newton
step. The loss scale cancels in :math:`(B \otimes A)^{-1} \nabla`, provided the gradient is the
gradient of that mean loss: a loss module with ``reduction="sum"`` is refused (the step would
be n times too large).

Factors. ``accumulation="ema"``: :math:`S \leftarrow \beta S + (1 - \beta) \Delta` every
``statistics_every`` steps, used bias-corrected, :math:`S / (1 - \beta^k)` after k updates (so
the first step uses the first batch's factors); ``"latest"``: :math:`S = \Delta`, exact
per-batch factors. Inverses are recomputed every ``refresh_every`` steps (Cholesky).

Damping. ``damping_split="none"``: :math:`\lambda_A = \lambda_B = \lambda` (``damping``) on
each factor. ``"pi"``: Martens & Grosse's π-split of a total Tikhonov damping :math:`\lambda`,
:math:`\lambda_A = \pi\sqrt\lambda`, :math:`\lambda_B = \sqrt\lambda/\pi` with
:math:`\pi = \sqrt{(\operatorname{tr} A / \dim A) / (\operatorname{tr} B / \dim B)}`.

A side of size 1 (one output, or one input and no bias) has a scalar factor, folded into the
other side's inverse, so the step still divides by it. ``sides="input"`` preconditions with
:math:`A` only, :math:`D = \nabla (A + \lambda I)^{-1}`; ``"output"`` with :math:`B` only.

EKFAC (:class:`EKFAC`, or ``ekfac=True``): Adam (``betas``, ``eps``) run in the eigenbasis of
:math:`B` and :math:`A`, the KFAC twin of SOAP. Where this departs from George et al.: the
second moments are those of the mini-batch gradient rotated into the basis, not of per-sample
gradients, and a first moment (``betas[0]``) is used.

Layers: ``nn.Linear``, ``nn.Conv2d`` (one group) and the packed in-projection and the
out-projection of a self-attention ``nn.MultiheadAttention``
(:mod:`layerwise.optim.kfac_attention`). Other parameters (norms, embeddings, grouped
convolutions, cross-attention) follow the Adam path of :mod:`layerwise.optim.base`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from torch import nn
from torch.distributed.tensor import DTensor

from layerwise.optim.base import PRECISION_MODE, LayerwiseOptimizer, ModeDefault, adam_path, knobs
from layerwise.optim.kfac_curvature import Curvature, Loss
from layerwise.optim.kfac_damping import DampingSplit
from layerwise.optim.kronecker import AUTO, Accumulation, Sides
from layerwise.optim.parts import Parts
from layerwise.optim.policies import Clipping, FailurePolicy, FirstMoment, HeavyBall
from layerwise.optim.statistics import LayerFactors
from layerwise.optim.transforms import EigenbasisAdam, InverseRoot

#: Torch loss modules KFAC reads its ``loss`` from.
LOSS_MODULES = {nn.MSELoss: Loss.MSE, nn.CrossEntropyLoss: Loss.CROSS_ENTROPY}


def loss_name(loss: str | nn.Module) -> str:
    """The KFAC loss of a name or a torch loss module; a module's reduction must be the mean."""
    if isinstance(loss, nn.Module):
        kind = LOSS_MODULES.get(type(loss))
        if kind is None:
            raise ValueError(
                f"Invalid loss: {type(loss).__name__} (KFAC supports "
                f"{[cls.__name__ for cls in LOSS_MODULES]} or the names {[v.value for v in Loss]})"
            )
        if loss.reduction != "mean":
            raise ValueError(
                f"Invalid loss: {type(loss).__name__}(reduction={loss.reduction!r}); KFAC's "
                "factors are batch averages, so the loss must be the batch mean: pass "
                f"{type(loss).__name__}(reduction='mean') and use it for the training loss "
                "(with 'sum' the step would be batch-size times too large)"
            )
        return kind.value
    return Loss(loss).value


class KFAC(LayerwiseOptimizer):
    r"""KFAC as a ``torch.optim.Optimizer`` over a model's ``nn.Linear`` / ``nn.Conv2d`` layers.

    The training loop stays ``opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()``
    with ``loss_fn`` the mean-reduced loss named by ``loss``; the hooks it needs are registered
    at construction (:meth:`remove_hooks` removes them).

    Args:
        model: the module whose output ``(batch, outputs)`` the loss is computed on.
        lr: learning rate :math:`\eta`.
        loss: ``"mse"`` or ``"cross_entropy"``, or the loss module (``nn.MSELoss()``,
            ``nn.CrossEntropyLoss()``; its reduction must be ``"mean"``).
        curvature: ``"empirical"`` (the gradients of the training loss, no extra pass; the
            default), ``"mc_fisher"`` (``mc_samples`` extra backward passes with sampled
            targets) or ``"ggn"`` (the exact Gauss–Newton output factor: one extra backward
            pass per model output; the default in exact mode).
        mc_samples: sampled backward passes per statistics step (``mc_fisher``).
        statistics_batch: factors from the first this-many samples of each batch (``"auto"``:
            256, and all in exact mode; ``None``: all). Like Martens & Grosse's curvature
            mini-batch it keeps the factors' cost fixed at large batches; the EMA averages them
            over steps. The samples of a shuffled batch are a uniform subsample.
        seed: seed of the ``mc_fisher`` sampler (its state is part of ``state_dict``).
        accumulation: ``"ema"`` (with ``statistics_decay``, bias-corrected) or ``"latest"``.
        statistics_decay: EMA decay :math:`\beta` of the factors.
        statistics_every, refresh_every: steps between factor updates / inverse recomputations.
        damping: :math:`\lambda` (see ``damping_split``); default 0 in exact mode, 0.1 else (see
            "Defaults" below).
        damping_split: ``"none"`` (λ on each factor) or ``"pi"`` (π-split of a total λ).
        sides: ``"both"``, ``"input"`` (:math:`\nabla (A + \lambda I)^{-1}`) or ``"output"``.
        ekfac: Adam in the Kronecker eigenbasis instead of the inverse factors (:class:`EKFAC`).
        kl_clip: :math:`c` of the KL clip (:class:`~layerwise.optim.policies.Clipping`); 0
            switches it off. Default 1e-2, and off in exact mode and for EKFAC: with stale
            amortized inverses and small damping the unclipped step can diverge.
        max_update_norm: if set, the blocks' steps are scaled so that :math:`\eta \lVert D
            \rVert_F` over the group is at most this.
        momentum, nesterov: heavy-ball momentum on the preconditioned direction (clipping
            scales the final step; the buffer keeps the unclipped directions).
        weight_decay: decoupled weight decay.
        betas, eps, adam_lr_ratio: Adam of the Adam path (at ``lr * adam_lr_ratio``; default
            0.01, i.e. 1e-3 at the default lr; EKFAC: 1.0) and of
            EKFAC in the eigenbasis.
        max_preconditioner_dim: sides longer than this keep a diagonal factor.
        precondition_dtype: precision of the per-step products with the inverses (``"auto"``:
            bf16 for float32 parameters; see :mod:`layerwise.optim.parts`).
        params: parameters or param groups (default: ``model.parameters()``). A layer's bias
            may be in another group than its weight (e.g. without weight decay): it stays
            folded into the weight's block and takes its own group's lr and weight decay. A
            group with ``preconditioned=False`` takes the Adam path (embeddings, heads).
        skip_layers: module names (as in ``model.named_modules()``, or a prefix up to a dot)
            or module types whose parameters take the Adam path instead (an attention module's
            packed in-projection is ``<module>.in_proj``). Layers that cannot be
            preconditioned (grouped convolutions, attention with ``kdim``/``vdim``, decoder
            cross-attention) take it too, with a warning naming them unless they are listed.
        maximize: ascend instead of descend (the gradient is negated), as ``torch.optim``.
        exact: per-batch factors (``accumulation="latest"``), statistics and inverses every
            step, damping 0 unless given, ``ggn`` curvature unless given, full precision; a
            singular factor raises :class:`~layerwise.optim.matrix.DecompositionError` instead
            of keeping the previous inverse.
        process_group, distributed: data-parallel training (``model`` may be the
            ``DistributedDataParallel`` wrapper): the factor increments are averaged across
            the group by an all-reduce that overlaps the next forward and backward pass
            (``state_dict()`` stays local: rank 0 alone may save); ``mc_fisher`` seeds
            ``seed + rank`` (:mod:`layerwise.optim.distributed`).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
        ...                             torch.nn.Linear(8, 3))
        >>> opt = KFAC(model, lr=0.1, loss=torch.nn.CrossEntropyLoss())
        >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        >>> opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward()
        >>> opt.step()
    """

    MODE: ClassVar[dict[str, ModeDefault]] = {
        "precondition_dtype": PRECISION_MODE,
        "accumulation": ModeDefault("ema", "latest"),
        "statistics_every": ModeDefault(1, 1),
        "refresh_every": ModeDefault(10, 1),
        "statistics_batch": ModeDefault(256, None, unset=AUTO),
        "damping": ModeDefault(0.1, 0.0, required=False),
        "kl_clip": ModeDefault(lambda group: 0.0 if group["ekfac"] else 1e-2, 0.0, required=False),
    }
    #: Before it was a group knob, ``statistics_batch`` defaulted to all samples.
    CHANGED_DEFAULTS: ClassVar[dict[str, tuple[Any, Any]]] = {"statistics_batch": (AUTO, None)}

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.1,
        *,
        loss: str | nn.Module,
        curvature: str | None = None,
        mc_samples: int = 1,
        statistics_batch: int | str | None = AUTO,
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
        adam_lr_ratio: float = 0.01,
        max_preconditioner_dim: int = 8192,
        precondition_dtype: str | None = AUTO,
        params: Iterable[Any] | None = None,
        skip_layers: Sequence[str | type] = (),
        maximize: bool = False,
        exact: bool = False,
        process_group: Any = "auto",
        distributed: str = "replicate",
    ) -> None:
        loss = loss_name(loss)
        curvature = Curvature(curvature or (Curvature.GGN if exact else Curvature.EMPIRICAL))
        defaults = knobs({k: v for k, v in locals().items() if k != "skip_layers"})
        if params is None:
            params = [p for p in model.parameters() if p.requires_grad]
        super().__init__(
            params,
            defaults,
            model=model,
            skip_layers=skip_layers,
            process_group=process_group,
            distributed=distributed,
        )
        _refuse_fsdp_curvature_passes(self.param_groups)

    @staticmethod
    def compose(group: dict[str, Any]) -> Parts:
        if Accumulation(group["accumulation"]) is Accumulation.SUM:
            raise ValueError("Invalid accumulation: 'sum' (KFAC factors are averages)")
        beta1, beta2 = group["betas"]
        if group["ekfac"]:
            transform: InverseRoot | EigenbasisAdam = EigenbasisAdam(
                beta2=beta2, epsilon=group["eps"], compute_dtype=group["precondition_dtype"]
            )
        else:
            transform = InverseRoot(
                root=1,
                damping=group["damping"],
                damping_split=group["damping_split"],
                compute_dtype=group["precondition_dtype"],
            )
        return Parts(
            statistics=LayerFactors(
                loss=group["loss"],
                curvature=group["curvature"],
                mc_samples=group["mc_samples"],
                statistics_batch=group["statistics_batch"],
                seed=group["seed"],
            ),
            transform=transform,
            accumulation=group["accumulation"],
            statistics_decay=group["statistics_decay"],
            bias_correction=True,
            statistics_every=group["statistics_every"],
            refresh_every=group["refresh_every"],
            sides=group["sides"],
            max_preconditioner_dim=group["max_preconditioner_dim"],
            # KFAC preconditions the raw gradient (its momentum is the heavy ball on D); EKFAC
            # is Adam in the eigenbasis, first moment included.
            first_moment=FirstMoment(
                beta=beta1 if group["ekfac"] else 0.0,
                nesterov=group["nesterov"] and not group["momentum"],
            ),
            heavy_ball=HeavyBall(momentum=group["momentum"], nesterov=group["nesterov"]),
            clipping=Clipping(kl_clip=group["kl_clip"], max_update_norm=group["max_update_norm"]),
            adam=adam_path(group),
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
            # Exact mode: a singular factor is an error, not a silently kept old inverse.
            failures=FailurePolicy(max_consecutive_failures=0 if group["exact"] else None),
        )


def _refuse_fsdp_curvature_passes(param_groups: list[dict[str, Any]]) -> None:
    """FSDP2 frees each layer's unsharded weight after the backward pass, so the extra
    backward passes of ``curvature="ggn"`` / ``"mc_fisher"`` cannot run through the sharded
    model: refused at construction, with what works instead."""
    for group in param_groups:
        sharded = any(isinstance(p, DTensor) for p in group["params"])
        if sharded and Curvature(group["curvature"]) is not Curvature.EMPIRICAL:
            raise ValueError(
                f"KFAC curvature={group['curvature']!r} is not supported under FSDP2 "
                "(fully_shard): its extra backward pass needs the unsharded weights; use "
                "curvature='empirical', or DistributedDataParallel for 'ggn' / 'mc_fisher'"
            )


class EKFAC(KFAC):
    """EKFAC: :class:`KFAC`'s factors, Adam in their eigenbasis (module docstring); takes
    KFAC's arguments, with Adam-like defaults (``lr=1e-3``, no KL clip)."""

    def __init__(self, model: nn.Module, lr: float = 1e-3, **kwargs: Any) -> None:
        kwargs.setdefault("adam_lr_ratio", 1.0)  # EKFAC's lr is already Adam's
        if kwargs.pop("ekfac", True) is not True:
            raise ValueError("EKFAC is KFAC with ekfac=True")
        super().__init__(model, lr, ekfac=True, **kwargs)


__all__ = ["EKFAC", "KFAC", "Curvature", "DampingSplit", "Loss", "Sides"]
