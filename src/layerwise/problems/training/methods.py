r"""Optimizers of the training workloads, the shared schedule, and optimizer-state memory.

:func:`build_optimizers` returns the optimizers that together update a model (one, or two for
torch's Muon, which handles only matrices and leaves the rest to a torch AdamW beside it).

- ``sgd``: ``torch.optim.SGD`` with heavy-ball momentum; ``adamw``: ``torch.optim.AdamW``.
- ours, ``from layerwise.optim import Shampoo, SOAP, Muon, KFAC, EKFAC``, at their defaults;
  KFAC and EKFAC take the model and ``loss=nn.CrossEntropyLoss()``. The embeddings and the LM
  head (:func:`~layerwise.problems.training.models.adam_parameters`) form a group with
  ``preconditioned=False`` (the Adam path); for Muon the Adam path runs at
  ``lr * adam_lr_ratio``.
- peers, imported only when asked for (never dependencies): ``torch_muon``
  (``torch.optim.Muon`` on the 2-D weights outside the Adam set, weight decay 0 like ours; every
  other parameter, convolution kernels included, on a torch AdamW at ``lr * adam_lr_ratio``
  with betas (0.9, 0.95), like our Adam path); ``heavyball_soap`` (heavyball's SOAP, eager, with
  our SOAP's betas (0.95, 0.95), shampoo_beta 0.95 and refresh every 10 steps, no
  preconditioner schedule); ``pytorch_optimizer_shampoo`` (pytorch-optimizer's Shampoo with
  its preconditioner recomputed every 10 steps). A peer that cannot be imported raises
  :class:`PeerUnavailable`, which the run records as a row, not a failure.

Schedule (:func:`lr_multiplier`): :math:`m(t) = (t+1)/t_w` during warm-up
(:math:`t < t_w = \lfloor \text{warmup\_fraction}\cdot T \rfloor`), then
:math:`f + (1 - f)\tfrac12(1 + \cos(\pi (t - t_w)/(T - t_w)))`, applied with
``torch.optim.lr_scheduler.LambdaLR`` to every param group of every optimizer.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from .models import adam_parameters
from .settings import TrainingSettings

#: Steps between preconditioner refreshes of the peers (our optimizers' default is also 10).
PEER_REFRESH_EVERY = 10


class PeerUnavailable(RuntimeError):
    """A peer library is not installed (or lacks the optimizer)."""


def lr_multiplier(step: int, settings: TrainingSettings) -> float:
    """:math:`m(t)` of the module docstring at step ``t`` (0-based)."""
    total = settings.steps
    warmup = math.floor(settings.warmup_fraction * total)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    f = settings.final_lr_fraction
    return f + (1 - f) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    adam = adam_parameters(model)
    named = list(model.named_parameters())
    return [p for n, p in named if n not in adam], [p for n, p in named if n in adam]


def _our_groups(model: nn.Module) -> list[dict[str, Any]]:
    main, adam = _split(model)
    groups: list[dict[str, Any]] = [{"params": main}]
    if adam:
        groups.append({"params": adam, "preconditioned": False})
    return groups


def _torch_muon(model: nn.Module, lr: float, params: BaseModel) -> list[torch.optim.Optimizer]:
    muon = getattr(torch.optim, "Muon", None)
    if muon is None:
        raise PeerUnavailable(f"torch {torch.__version__} has no torch.optim.Muon")
    main, adam = _split(model)
    matrices = [p for p in main if p.ndim == 2]
    rest = [p for p in main if p.ndim != 2] + adam
    return [
        muon(matrices, lr=lr, weight_decay=0.0),
        torch.optim.AdamW(rest, lr=lr * params.adam_lr_ratio, betas=(0.9, 0.95), weight_decay=0.0),
    ]


def _heavyball_soap(model: nn.Module, lr: float) -> list[torch.optim.Optimizer]:
    try:
        import heavyball
    except ImportError as error:
        raise PeerUnavailable(f"heavyball: {error}") from error
    # heavyball compiles its step functions by default; these runs measure eager steps, as ours.
    heavyball.utils.compile_mode = heavyball.utils.compile_mode_recommended_to_none = None
    # The schedule changes the lr every step, which heavyball supports and warns about.
    warnings.filterwarnings("ignore", message="Learning rate changed between steps")
    return [
        heavyball.SOAP(
            model.parameters(),
            lr=lr,
            betas=(0.95, 0.95),
            shampoo_beta=0.95,
            precondition_frequency=PEER_REFRESH_EVERY,
            use_precond_schedule=False,
        )
    ]


def _pytorch_optimizer_shampoo(model: nn.Module, lr: float) -> list[torch.optim.Optimizer]:
    try:
        import pytorch_optimizer
    except ImportError as error:
        raise PeerUnavailable(f"pytorch-optimizer: {error}") from error
    return [
        pytorch_optimizer.Shampoo(
            model.parameters(), lr=lr, preconditioning_compute_steps=PEER_REFRESH_EVERY
        )
    ]


def build_optimizers(
    model: nn.Module, algorithm: str, lr: float, params: BaseModel
) -> list[torch.optim.Optimizer]:
    """The optimizers of ``algorithm`` at peak learning rate ``lr`` (module docstring)."""
    match algorithm:
        case "sgd":
            return [torch.optim.SGD(model.parameters(), lr=lr, momentum=params.momentum)]
        case "adamw":
            return [torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=params.weight_decay)]
        case "shampoo" | "soap" | "muon":
            from layerwise import optim

            cls = {"shampoo": optim.Shampoo, "soap": optim.SOAP, "muon": optim.Muon}[algorithm]
            extra = {"adam_lr_ratio": params.adam_lr_ratio} if algorithm == "muon" else {}
            return [cls(_our_groups(model), lr=lr, **extra)]
        case "kfac" | "ekfac":
            from layerwise import optim

            cls = optim.KFAC if algorithm == "kfac" else optim.EKFAC
            return [cls(model, lr=lr, loss=nn.CrossEntropyLoss(), params=_our_groups(model))]
        case "torch_muon":
            return _torch_muon(model, lr, params)
        case "heavyball_soap":
            return _heavyball_soap(model, lr)
        case "pytorch_optimizer_shampoo":
            return _pytorch_optimizer_shampoo(model, lr)
        case other:
            raise ValueError(f"unknown algorithm {other!r}")


def schedulers(
    optimizers: list[torch.optim.Optimizer], settings: TrainingSettings
) -> list[torch.optim.lr_scheduler.LambdaLR]:
    return [
        torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_multiplier(step, settings))
        for opt in optimizers
    ]
