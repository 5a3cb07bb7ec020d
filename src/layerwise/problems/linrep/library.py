"""The project's general-purpose optimizers on the ``nn.Module`` version of the model.

The model is ``nn.Sequential(Linear(d, k, bias=False), Linear(k, dy, bias=False))``: the first
weight is G, the second F, in float64. Each step computes ``mse_loss(model(x), y)`` (mean over the
n·dy entries: the scaling :class:`layerwise.optim.KFAC` assumes for ``loss="mse"``, so that its
``exact=True, curvature="ggn"`` step at lr = 1 is the exact layer-wise Gauss–Newton step), calls
``backward`` and ``opt.step()``. Both layers are updated by the optimizer simultaneously (there is
no least-squares head here). One module and one optimizer per (step size, seed): these rows loop
over seeds instead of batching them.

``library_kfac`` is ``KFAC(model, lr, loss="mse", curvature="ggn", exact=True, **options)``;
``shampoo``, ``soap`` and ``muon`` are ``Shampoo/SOAP/Muon(model.parameters(), lr, **options)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional

from layerwise import optim
from layerwise.optim.matrix import DecompositionError
from layerwise.problems.linrep.algorithms import Method
from layerwise.problems.linrep.data import Batch
from layerwise.problems.linrep.settings import LibraryParams

LIBRARY_ALGORITHMS = ("library_kfac", "shampoo", "soap", "muon")


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


def make_optimizer(
    algorithm: str, model: nn.Module, lr: float, options: dict
) -> torch.optim.Optimizer:
    """The library optimizer named by ``algorithm`` for ``model``."""
    match algorithm:
        case "library_kfac":
            settings = {"loss": "mse", "curvature": "ggn", "exact": True, **options}
            return optim.KFAC(model, lr=lr, **settings)
        case "shampoo":
            return optim.Shampoo(model.parameters(), lr=lr, **options)
        case "soap":
            return optim.SOAP(model.parameters(), lr=lr, **options)
        case "muon":
            return optim.Muon(model.parameters(), lr=lr, **options)
        case _:
            raise ValueError(
                f"unknown library optimizer {algorithm!r}; known: {LIBRARY_ALGORITHMS}"
            )


class LibraryMethod(Method):
    """A library optimizer per (replica, seed); state tensors mirror the modules' weights."""

    def __init__(
        self,
        algorithm: str,
        params: LibraryParams,
        init_features: Tensor,
        init_head: Tensor,
        lr: Tensor,
    ):
        super().__init__(init_features, init_head, lr)
        replicas, seeds = self.state["G"].shape[:2]
        self.seeds = seeds
        self.models, self.optimizers = [], []
        for r in range(replicas):
            for s in range(seeds):
                model = two_layer_model(self.state["G"][r, s], self.state["F"][r, s])
                self.models.append(model)
                step_size = float(lr[r].item())
                self.optimizers.append(make_optimizer(algorithm, model, step_size, params.options))
        self._remember_initial()

    def step(self, batch: Batch) -> None:
        failed = torch.zeros_like(self.failed)
        for index, (model, optimizer) in enumerate(zip(self.models, self.optimizers, strict=True)):
            r, s = divmod(index, self.seeds)
            if self._skip is not None and self._skip[r, s]:
                continue
            optimizer.zero_grad()
            functional.mse_loss(model(batch.x[s]), batch.y[s]).backward()
            try:
                optimizer.step()
            except (DecompositionError, torch.linalg.LinAlgError):
                failed[r, s] = True
            self.state["G"][r, s] = model[0].weight.detach()
            self.state["F"][r, s] = model[1].weight.detach()
        self.failed = failed

    _skip: Tensor | None = None

    def restore(self, mask: Tensor) -> None:
        """Diverged replicas keep their initial weights and are not stepped again."""
        super().restore(mask)
        self._skip = mask.clone() if self._skip is None else self._skip | mask
