"""The registry of linrep methods: name -> hyperparameter model, constructor and family.

Every method is a :class:`~layerwise.problems.linrep.algorithms.Method` built by one signature,
``constructor(init_features, init_head, lr, params)``: G (S, k, d) and F (S, dy, k) per seed,
the step sizes ``lr`` (R, 1, 1, 1) and the validated hyperparameters. The *family* says what
kind of method it is, so that claims and figures select methods by kind instead of by lists of
names:

- ``first_order``: gradient-based steps of the paper's comparison (sgd, amd, adam, batchnorm);
- ``layerwise``: the paper's layer-wise preconditioned updates (kfac, dfw);
- ``second_order``: full (F, G) Gauss–Newton and Newton, one run per damping value of the
  method's ``damping`` grid (:attr:`LinrepMethod.damping_grid`);
- ``library``: an optimizer of :mod:`layerwise.optim` on the ``nn.Module`` version of the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel
from torch import Tensor

from layerwise.problems.linrep.algorithms import Adam, Amd, Batchnorm, Dfw, Kfac, Method, Sgd
from layerwise.problems.linrep.library import (
    LibraryEkfacParams,
    LibraryKfacParams,
    LibraryMethod,
    MuonParams,
    ShampooParams,
    SoapParams,
)
from layerwise.problems.linrep.second_order import GaussNewton, Newton
from layerwise.problems.linrep.settings import (
    AdamParams,
    AmdParams,
    BatchnormParams,
    DfwParams,
    KfacParams,
    SecondOrderParams,
    SgdParams,
)

Family = Literal["first_order", "layerwise", "second_order", "library"]

#: ``(init_features, init_head, lr, params) -> Method``: how every linrep method is built.
Constructor = Callable[[Tensor, Tensor, Tensor, BaseModel], Method]


@dataclass(frozen=True)
class LinrepMethod:
    """One registered method: its hyperparameters, its constructor and its family.

    ``damping_grid``: the params hold a grid of damping values (``damping``), each its own run;
    the constructor gets params narrowed to one value (:func:`at_damping`).
    """

    params: type[BaseModel]
    constructor: Constructor
    family: Family

    @property
    def damping_grid(self) -> bool:
        return self.family == "second_order"


METHODS: dict[str, LinrepMethod] = {
    "sgd": LinrepMethod(SgdParams, Sgd, "first_order"),
    "amd": LinrepMethod(AmdParams, Amd, "first_order"),
    "adam": LinrepMethod(AdamParams, Adam, "first_order"),
    "batchnorm": LinrepMethod(BatchnormParams, Batchnorm, "first_order"),
    "dfw": LinrepMethod(DfwParams, Dfw, "layerwise"),
    "kfac": LinrepMethod(KfacParams, Kfac, "layerwise"),
    "gauss_newton": LinrepMethod(SecondOrderParams, GaussNewton, "second_order"),
    "newton": LinrepMethod(SecondOrderParams, Newton, "second_order"),
    "library_kfac": LinrepMethod(LibraryKfacParams, LibraryMethod, "library"),
    "library_ekfac": LinrepMethod(LibraryEkfacParams, LibraryMethod, "library"),
    "shampoo": LinrepMethod(ShampooParams, LibraryMethod, "library"),
    "soap": LinrepMethod(SoapParams, LibraryMethod, "library"),
    "muon": LinrepMethod(MuonParams, LibraryMethod, "library"),
}

#: What the experiment system validates configs against (``Problem.method_models``).
METHOD_MODELS: dict[str, type[BaseModel]] = {name: m.params for name, m in METHODS.items()}


def method(name: str) -> LinrepMethod:
    """The registered method ``name``; unknown names are refused with the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown linrep method {name!r}; known: {sorted(METHODS)}") from None


def of_family(family: Family) -> tuple[str, ...]:
    """The names of the methods of one family (e.g. ``second_order``)."""
    return tuple(name for name, entry in METHODS.items() if entry.family == family)


def at_damping(params: BaseModel, damping: float) -> BaseModel:
    """``params`` with its damping grid narrowed to the one value this run uses."""
    return params.model_copy(update={"damping": (float(damping),)})
