"""The project's general-purpose optimizers on the ``nn.Module`` version of the model.

The model is ``nn.Sequential(Linear(d, k, bias=False), Linear(k, dy, bias=False))``: the first
weight is G, the second F, in float64. Each step computes ``mse_loss(model(x), y)`` (mean over the
n·dy entries: the scaling :class:`layerwise.optim.KFAC` assumes for ``loss="mse"``, so that its
``exact=True, curvature="ggn"`` step at lr = 1 is the exact layer-wise Gauss–Newton step), calls
``backward`` and ``opt.step()``. Both layers are updated by the optimizer simultaneously (there is
no least-squares head here). One module and one optimizer per (step size, seed): these rows loop
over seeds instead of batching them.

The methods and what they construct (``options`` are the config's, typed below):

- ``library_kfac``: ``KFAC(model, lr, loss="mse", exact=True, curvature="ggn", **options)``;
- ``library_ekfac``: ``EKFAC(model, lr, loss="mse", exact=True, curvature="ggn", **options)``
  (Adam in the eigenbasis of KFAC's per-batch factors);
- ``shampoo``, ``soap``, ``muon``: ``Shampoo/SOAP/Muon(model.parameters(), lr, **options)``
  (the optimizers' own defaults: amortized; ``options: {exact: true}`` for their exact modes).

Options are typed: each optimizer's options model is generated from its constructor's signature
(every keyword argument except those this harness sets itself: the parameters or module, ``lr``,
``loss`` and the data-parallel arguments), with the optimizer's defaults (linrep's where they
differ, for KFAC/EKFAC: exact mode). An unknown option is refused with the closest real one, and
the values are checked by constructing the optimizer once on a small module while the config is
validated, so a bad option never reaches a run.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from torch import Tensor, nn
from torch.nn import functional

from layerwise import optim
from layerwise.experiments.config import did_you_mean
from layerwise.optim.matrix import DecompositionError
from layerwise.problems.linrep.algorithms import Method
from layerwise.problems.linrep.data import Batch
from layerwise.problems.linrep.settings import LibraryParams

#: Constructor arguments this harness sets itself, so they are not options: what is optimized
#: (the module or its parameters), the step size (the method's ``lr``), the loss (linrep's MSE),
#: the layers to skip (none), data-parallel training, and EKFAC's own switch.
HARNESS_ARGUMENTS = frozenset(
    {"self", "params", "model", "lr", "loss", "skip_layers", "process_group", "distributed"}
    | {"ekfac", "kwargs"}
)


def two_layer_model(features: Tensor, head: Tensor) -> nn.Sequential:
    """``x ↦ F G x`` as two bias-free linear layers holding copies of G (k, d) and F (dy, k)."""
    k, d = features.shape
    dy = head.shape[0]
    model = nn.Sequential(nn.Linear(d, k, bias=False), nn.Linear(k, dy, bias=False))
    model = model.to(dtype=features.dtype, device=features.device)
    with torch.no_grad():
        model[0].weight.copy_(features)
        model[1].weight.copy_(head)
    return model


@dataclass(frozen=True)
class LibraryOptimizer:
    """One ``layerwise.optim`` optimizer as linrep constructs it.

    ``takes_module``: the constructor takes the module (KFAC, EKFAC) rather than its parameters.
    ``fixed``: arguments the harness passes and options cannot change (the loss).
    ``defaults``: linrep's defaults where they differ from the optimizer's own; they are the
    defaults of the options model and are passed unless the config sets the option.
    ``signature_of``: the function whose signature lists the options (EKFAC takes KFAC's).
    """

    name: str
    constructor: Callable[..., torch.optim.Optimizer]
    takes_module: bool = False
    fixed: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    signature_of: Callable[..., Any] | None = None

    @cached_property
    def options(self) -> type[BaseModel]:
        """The options model: one field per constructor keyword (type and default from the
        signature, the default overridden by :attr:`defaults`), unknown names refused."""
        signature = inspect.signature(self.signature_of or self.constructor, eval_str=True)
        fields: dict[str, Any] = {}
        for name, parameter in signature.parameters.items():
            if name in HARNESS_ARGUMENTS or parameter.kind is parameter.VAR_KEYWORD:
                continue
            default = self.defaults.get(name, parameter.default)
            fields[name] = (parameter.annotation, default)
        unknown = set(self.defaults) - set(fields)
        if unknown:
            raise ValueError(f"{self.name} defaults name no option: {sorted(unknown)}")
        return create_model(
            f"{self.name}Options",  # the module attribute it is bound to below (pickling)
            __module__=__name__,
            __config__=ConfigDict(extra="forbid", frozen=True),
            __doc__=f"Keyword arguments of {self.name} (its constructor's signature).",
            __validators__={
                "known_names": model_validator(mode="before")(_known_names(self.name, fields)),
                "constructible": model_validator(mode="after")(_constructible(self)),
            },
            **fields,
        )

    def build(self, model: nn.Module, lr: float, options: BaseModel) -> torch.optim.Optimizer:
        """The optimizer over ``model`` at step size ``lr``: linrep's defaults, then the
        options the config set."""
        keywords = {**self.defaults, **options.model_dump(exclude_unset=True)}
        target = model if self.takes_module else model.parameters()
        return self.constructor(target, lr=lr, **self.fixed, **keywords)


def _known_names(optimizer: str, fields: Mapping[str, Any]):
    """A before-validator refusing an option the optimizer does not have, with the closest."""

    def check(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key in data:
                if key not in fields:
                    raise ValueError(
                        f"unknown {optimizer} option {key!r}{did_you_mean(str(key), fields)} "
                        f"({optimizer} options: {', '.join(sorted(fields))})"
                    )
        return data

    return classmethod(check)


def _constructible(optimizer: LibraryOptimizer):
    """An after-validator constructing the optimizer once on a small module, so that a value
    the optimizer refuses (``sides: bth``) is refused with the config, naming the optimizer."""

    def check(self: BaseModel) -> BaseModel:
        features = torch.ones(2, 3, dtype=torch.float64)
        head = torch.ones(2, 2, dtype=torch.float64)
        try:
            optimizer.build(two_layer_model(features, head), 1e-3, self)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{optimizer.name} refuses these options: {error}") from None
        return self

    return check


KFAC = LibraryOptimizer(
    "KFAC",
    optim.KFAC,
    takes_module=True,
    fixed={"loss": "mse"},
    defaults={"exact": True, "curvature": "ggn"},
)
EKFAC = LibraryOptimizer(
    "EKFAC",
    optim.EKFAC,
    takes_module=True,
    fixed={"loss": "mse"},
    # EKFAC's own default of adam_lr_ratio (1.0) differs from KFAC's, whose signature it takes.
    defaults={"exact": True, "curvature": "ggn", "adam_lr_ratio": 1.0},
    signature_of=optim.KFAC.__init__,
)
SHAMPOO = LibraryOptimizer("Shampoo", optim.Shampoo)
SOAP = LibraryOptimizer("SOAP", optim.SOAP)
MUON = LibraryOptimizer("Muon", optim.Muon)

KFACOptions = KFAC.options
EKFACOptions = EKFAC.options
ShampooOptions = SHAMPOO.options
SOAPOptions = SOAP.options
MuonOptions = MUON.options


class LibraryKfacParams(LibraryParams):
    """``KFAC`` on the module, exact mode (per-batch ``ggn`` factors, no damping) by default."""

    optimizer: ClassVar[LibraryOptimizer] = KFAC
    options: KFACOptions = Field(default_factory=KFACOptions)


class LibraryEkfacParams(LibraryParams):
    """``EKFAC`` on the module (Adam in the eigenbasis of KFAC's factors), exact mode."""

    optimizer: ClassVar[LibraryOptimizer] = EKFAC
    options: EKFACOptions = Field(default_factory=EKFACOptions)


class ShampooParams(LibraryParams):
    """``Shampoo`` on the module's parameters (its defaults; ``exact: true`` for exact mode)."""

    optimizer: ClassVar[LibraryOptimizer] = SHAMPOO
    options: ShampooOptions = Field(default_factory=ShampooOptions)


class SoapParams(LibraryParams):
    """``SOAP`` on the module's parameters (its defaults; ``exact: true`` for exact mode)."""

    optimizer: ClassVar[LibraryOptimizer] = SOAP
    options: SOAPOptions = Field(default_factory=SOAPOptions)


class MuonParams(LibraryParams):
    """``Muon`` on the module's parameters (its defaults; ``exact: true`` for exact mode)."""

    optimizer: ClassVar[LibraryOptimizer] = MUON
    options: MuonOptions = Field(default_factory=MuonOptions)


def step_each(
    models: Sequence[nn.Module],
    optimizers: Sequence[torch.optim.Optimizer],
    batch: Batch,
    skip: Tensor | None,
    failed: Tensor,
) -> Iterator[tuple[int, int, nn.Module]]:
    """One step of each (replica r, seed s) module, in row-major order, on ``mse_loss`` of its
    seed's batch; yields ``(r, s, model)`` after each. Modules marked in ``skip`` (R, S) are
    left alone; a failed decomposition marks ``failed[r, s]``."""
    seeds = failed.shape[1]
    for index, (model, optimizer) in enumerate(zip(models, optimizers, strict=True)):
        r, s = divmod(index, seeds)
        if skip is not None and skip[r, s]:
            continue
        optimizer.zero_grad()
        functional.mse_loss(model(batch.x[s]), batch.y[s]).backward()
        try:
            optimizer.step()
        except (DecompositionError, torch.linalg.LinAlgError):
            failed[r, s] = True
        yield r, s, model


class LibraryMethod(Method):
    """A library optimizer per (replica, seed); state tensors mirror the modules' weights."""

    def __init__(self, init_features: Tensor, init_head: Tensor, lr: Tensor, params: LibraryParams):
        super().__init__(init_features, init_head, lr)
        replicas, seeds = self.state["G"].shape[:2]
        self.seeds = seeds
        self.models, self.optimizers = [], []
        for r in range(replicas):
            for s in range(seeds):
                model = two_layer_model(self.state["G"][r, s], self.state["F"][r, s])
                self.models.append(model)
                step_size = float(lr[r].item())
                self.optimizers.append(params.optimizer.build(model, step_size, params.options))
        self._remember_initial()

    def step(self, batch: Batch) -> None:
        failed = torch.zeros_like(self.failed)
        for r, s, model in step_each(self.models, self.optimizers, batch, self._skip, failed):
            self.state["G"][r, s] = model[0].weight.detach()
            self.state["F"][r, s] = model[1].weight.detach()
        self.failed = failed

    _skip: Tensor | None = None

    def restore(self, mask: Tensor) -> None:
        """Diverged replicas keep their initial weights and are not stepped again."""
        super().restore(mask)
        self._skip = mask.clone() if self._skip is None else self._skip | mask


#: The library methods by name (the names of :data:`layerwise.problems.linrep.methods.METHODS`).
LIBRARY_OPTIMIZERS: dict[str, LibraryOptimizer] = {
    "library_kfac": KFAC,
    "library_ekfac": EKFAC,
    "shampoo": SHAMPOO,
    "soap": SOAP,
    "muon": MUON,
}


def make_optimizer(
    algorithm: str, model: nn.Module, lr: float, options: BaseModel | Mapping[str, Any]
) -> torch.optim.Optimizer:
    """The library optimizer of method ``algorithm`` over ``model``; ``options`` the typed
    options, or a mapping validated into them (an unknown option is refused, named)."""
    try:
        optimizer = LIBRARY_OPTIMIZERS[algorithm]
    except KeyError:
        known = sorted(LIBRARY_OPTIMIZERS)
        raise ValueError(f"unknown library optimizer {algorithm!r}; known: {known}") from None
    if not isinstance(options, BaseModel):
        options = optimizer.options.model_validate(dict(options))
    return optimizer.build(model, lr, options)
