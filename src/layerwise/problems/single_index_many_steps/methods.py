r"""The step rules of the many-step problem and their norm-matched learning rates.

The network is the one-step problem's ``f(x) = (1/√N) aᵀ σ(W x)`` with a fixed (the
:class:`~layerwise.problems.single_index.onestep.TwoLayerNetwork` module: W is its only
parameter). Each step t works on the loss L̂t(W) = (1/2n) Σi (yi − f(xi))² of batch t:

    sgd      W ← W − ηt N ∇W L̂t(W)
    kfac     W ← W − ηt N ∇W L̂t(W) (Σ̂x,t + λG I)⁻¹   (the problem's layer-wise step, right factor)
    adam     torch.optim.Adam on W
    shampoo, soap, muon   layerwise.optim's Shampoo, SOAP, Muon on W (config ``options``)

**Step sizes (norm-matched first step).** For every method the per-step learning rate ηt is
set once per seed so that its first update has the Frobenius norm of the sgd first update with
step ``lr/T``, ‖ΔW1‖F = (lr/T) N ‖∇W L̂1(W0)‖F; ``lr`` is the config's total step in the one-step
problem's units (lr = 1: the one-step experiments' step, split into T pieces). The first update
of every method here is linear in its learning rate (no weight decay), so ηt comes from one
trial step at learning rate 1 on a copy of the module and optimizer
(:func:`matched_learning_rate`). Later steps keep ηt: the methods then differ in direction and
in how their step norms evolve.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from pydantic import BaseModel
from torch import Tensor

from layerwise import optim
from layerwise.experiments.registry import MethodSpec
from layerwise.problems.single_index.onestep import TwoLayerNetwork, empirical_covariance

from .settings import ManyKfacParams, ManySgdParams, OptimizerParams

#: algorithm -> hyperparameter model (what the problem registers).
METHOD_MODELS: dict[str, type[BaseModel]] = {
    "sgd": ManySgdParams,
    "kfac": ManyKfacParams,
    "adam": OptimizerParams,
    "shampoo": OptimizerParams,
    "soap": OptimizerParams,
    "muon": OptimizerParams,
}

#: A step rule: (model, x, y) -> None, updating the model's W in place.
Stepper = Callable[[TwoLayerNetwork, Tensor, Tensor], None]


def batch_loss(model: TwoLayerNetwork, x: Tensor, y: Tensor) -> Tensor:
    """L̂(W) = (1/2n) Σi (yi − f(xi))² (the one-step problem's loss)."""
    return 0.5 * (y - model(x).squeeze(-1)).pow(2).mean()


def gradient(model: TwoLayerNetwork, x: Tensor, y: Tensor) -> Tensor:
    """∇W L̂(W) on the batch (x, y)."""
    weight = model.first.weight
    (grad,) = torch.autograd.grad(batch_loss(model, x, y), weight)
    return grad


def library_optimizer(
    algorithm: str, model: TwoLayerNetwork, lr: float, options: dict
) -> torch.optim.Optimizer:
    """The torch or ``layerwise.optim`` optimizer of ``algorithm`` on the model's W."""
    match algorithm:
        case "adam":
            return torch.optim.Adam(model.parameters(), lr=lr, **options)
        case "shampoo":
            return optim.Shampoo(model.parameters(), lr=lr, **options)
        case "soap":
            return optim.SOAP(model.parameters(), lr=lr, **options)
        case "muon":
            return optim.Muon(model.parameters(), lr=lr, **options)
        case other:
            raise ValueError(f"unknown optimizer {other!r}; known: adam, shampoo, soap, muon")


def make_stepper(spec: MethodSpec, model: TwoLayerNetwork, lr: float) -> Stepper:
    """The update rule of ``spec`` at per-step learning rate ``lr`` (module docstring)."""
    width = model.first.weight.shape[0]
    params = spec.params
    match spec.name:
        case "sgd" | "kfac":
            damping = params.damping if spec.name == "kfac" else None

            def functional_step(module: TwoLayerNetwork, x: Tensor, y: Tensor) -> None:
                direction = gradient(module, x, y)
                if damping is not None:
                    factor = empirical_covariance(x) + damping * torch.eye(
                        x.shape[-1], dtype=x.dtype, device=x.device
                    )
                    # G (Σ̂x + λI)⁻¹ = ((Σ̂x + λI)⁻¹ Gᵀ)ᵀ, the factor being symmetric.
                    direction = torch.linalg.solve(factor, direction.T).T
                with torch.no_grad():
                    module.first.weight.sub_(lr * width * direction)

            return functional_step
        case "adam" | "shampoo" | "soap" | "muon":
            optimizer = library_optimizer(spec.name, model, lr, dict(params.options))

            def optimizer_step(module: TwoLayerNetwork, x: Tensor, y: Tensor) -> None:
                optimizer.zero_grad()
                batch_loss(module, x, y).backward()
                optimizer.step()

            return optimizer_step
        case other:
            raise ValueError(f"unknown many-step method {other!r}; known: {list(METHOD_MODELS)}")


def matched_learning_rate(
    spec: MethodSpec, model: TwoLayerNetwork, x: Tensor, y: Tensor, target_norm: float
) -> float:
    """ηt such that the method's first update on (x, y) has Frobenius norm ``target_norm``: one
    trial step at learning rate 1 on a copy (first updates are linear in the learning rate)."""
    trial = copy.deepcopy(model)
    start = trial.first.weight.detach().clone()
    make_stepper(spec, trial, 1.0)(trial, x, y)
    moved = float(torch.linalg.matrix_norm(trial.first.weight.detach() - start))
    if not moved > 0 or not math.isfinite(moved):
        raise ValueError(f"{spec.name}: the first update has norm {moved}; cannot match it")
    return target_norm / moved
