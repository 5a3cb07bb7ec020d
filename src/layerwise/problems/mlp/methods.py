"""The methods of the ``mlp`` problem: one registry, one constructor signature.

Every entry of :data:`METHODS` pairs the hyperparameter model a config is validated against with
``build(model, params) -> torch.optim.Optimizer``. The constructor takes the model, not its
parameters, because KFAC must see the layers' activations; the others take
``model.parameters()``. KFAC is told the loss is the mean squared error (``loss="mse"``), the
loss the training loop minimizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pydantic import BaseModel

from layerwise import optim

from .settings import AdamWParams, KFACParams, LayerwiseParams, SGDParams

Build = Callable[[torch.nn.Module, BaseModel], torch.optim.Optimizer]


@dataclass(frozen=True)
class Method:
    """A registered algorithm: its hyperparameter model and its optimizer constructor."""

    params_model: type[BaseModel]
    build: Build


def _on_parameters(optimizer_class) -> Build:
    # Shampoo, SOAP, Muon: the torch.optim contract, on the parameters.
    return lambda net, p: optimizer_class(net.parameters(), lr=p.lr, exact=p.exact)


def _kfac(net: torch.nn.Module, p: BaseModel) -> torch.optim.Optimizer:
    return optim.KFAC(net, lr=p.lr, curvature=p.curvature, loss="mse", exact=p.exact)


#: algorithm -> its hyperparameter model and optimizer constructor.
METHODS: dict[str, Method] = {
    "sgd": Method(
        SGDParams,
        lambda net, p: torch.optim.SGD(net.parameters(), lr=p.lr, momentum=p.momentum),
    ),
    "adamw": Method(
        AdamWParams,
        lambda net, p: torch.optim.AdamW(net.parameters(), lr=p.lr, weight_decay=p.weight_decay),
    ),
    "shampoo": Method(LayerwiseParams, _on_parameters(optim.Shampoo)),
    "soap": Method(LayerwiseParams, _on_parameters(optim.SOAP)),
    "muon": Method(LayerwiseParams, _on_parameters(optim.Muon)),
    "kfac": Method(KFACParams, _kfac),
}

#: algorithm -> hyperparameter model (what the problem registers).
METHOD_MODELS: dict[str, type[BaseModel]] = {
    name: method.params_model for name, method in METHODS.items()
}


def build_optimizer(net: torch.nn.Module, algorithm: str, params: BaseModel):
    """The optimizer of ``algorithm`` with ``params`` on ``net``."""
    try:
        method = METHODS[algorithm]
    except KeyError:
        raise ValueError(f"unknown mlp method {algorithm!r}; known: {sorted(METHODS)}") from None
    return method.build(net, params)
