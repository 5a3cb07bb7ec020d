"""The one-step methods of the single-index problem: one registry, one constructor signature.

Every entry of :data:`METHODS` pairs the hyperparameter model a config is validated against
with ``first_layer(instance, x1, y1, params) -> W1``: the first layer after the method's one
step from W0 on the batch (x1, y1), shape (S, N, d). The updates ΔW = W1 − W0 are those of
:mod:`.onestep` (sgd, kfac, adam, batchnorm, shampoo, muon); ``rf`` keeps W0 (random features);
``oracle`` replaces W0 by rows along β⋆ with N(0, 1) scales drawn from the seed's ``oracle``
stream (:func:`~layerwise.problems.single_index.data.generator`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pydantic import BaseModel
from torch import Tensor

from . import onestep
from .data import Instance, generator
from .settings import (
    AdamParams,
    BatchNormParams,
    KfacParams,
    MuonParams,
    OracleParams,
    RandomFeaturesParams,
    SgdParams,
    ShampooParams,
)

FirstLayer = Callable[[Instance, Tensor, Tensor, BaseModel], Tensor]


@dataclass(frozen=True)
class Method:
    """A registered algorithm: its hyperparameter model and its one-step first layer."""

    params_model: type[BaseModel]
    first_layer: FirstLayer


def _stepped(update: Callable[..., Tensor], *keywords: str) -> FirstLayer:
    """W0 + update(W0, a, x1, y1, lr=..., <keywords from params>, activation=...)."""

    def first_layer(instance: Instance, x1: Tensor, y1: Tensor, params: BaseModel) -> Tensor:
        options = {name: getattr(params, name) for name in ("lr", *keywords)}
        activation = instance.settings.activation
        return instance.w0 + update(
            instance.w0, instance.a, x1, y1, activation=activation, **options
        )

    return first_layer


def _random_features(instance: Instance, x1: Tensor, y1: Tensor, params: BaseModel) -> Tensor:
    return instance.w0.clone()


def _oracle(instance: Instance, x1: Tensor, y1: Tensor, params: BaseModel) -> Tensor:
    width, dtype = instance.settings.width, instance.w0.dtype
    scales = torch.stack(
        [
            torch.randn(width, generator=generator(seed, "oracle"), dtype=dtype)
            for seed in instance.seeds
        ]
    )
    return onestep.oracle_weights(instance.beta, scales.to(instance.w0.device))


#: algorithm -> its hyperparameter model and its first layer after one step.
METHODS: dict[str, Method] = {
    "sgd": Method(SgdParams, _stepped(onestep.sgd_step)),
    "kfac": Method(KfacParams, _stepped(onestep.kfac_step, "damping")),
    "adam": Method(AdamParams, _stepped(onestep.adam_step)),
    "batchnorm": Method(BatchNormParams, _stepped(onestep.batchnorm_step)),
    "shampoo": Method(ShampooParams, _stepped(onestep.shampoo_step, "damping")),
    "muon": Method(MuonParams, _stepped(onestep.muon_step, "polar")),
    "rf": Method(RandomFeaturesParams, _random_features),
    "oracle": Method(OracleParams, _oracle),
}

#: algorithm -> hyperparameter model (what the problem registers).
METHOD_MODELS: dict[str, type[BaseModel]] = {
    name: method.params_model for name, method in METHODS.items()
}


def first_layer(
    algorithm: str, instance: Instance, x1: Tensor, y1: Tensor, params: BaseModel
) -> Tensor:
    """W1 (S, N, d) of ``algorithm`` with ``params`` after its step on (x1, y1)."""
    try:
        method = METHODS[algorithm]
    except KeyError:
        raise ValueError(
            f"unknown single-index method {algorithm!r}; known: {sorted(METHODS)}"
        ) from None
    return method.first_layer(instance, x1, y1, params)
