r"""Methods of deep linear representation learning: sgd, adam, kfac (layer-wise Gauss–Newton).

Model ``f(x) = F G_L ⋯ G_1 x`` with G_1 (k, d), G_2 … G_L (k, k), F (dy, k), and the batch loss
``L̂ = ½ mean_i ‖y_i − f(x_i)‖²``. Forward activations ``a_1 = x``, ``a_{ℓ+1} = G_ℓ a_ℓ`` (rows
of the (n, ·) matrices a_ℓ are samples); back-propagated output Jacobians
``B_ℓ = F G_L ⋯ G_{ℓ+1}`` (dy, k) with ``B_L = F``; residuals ``r_i = f(x_i) − y_i``. Then

    ∇G_ℓ L̂ = B_ℓᵀ rᵀ a_ℓ / n,        ∇F L̂ = rᵀ a_{L+1} / n.

**Exact Kronecker factors.** The per-sample Jacobian of f(x_i) with respect to the row-major
vec of G_ℓ is ``B_ℓ ⊗ a_{ℓ,i}ᵀ`` and B_ℓ does not depend on the sample (the network is
linear), so the Gauss–Newton block of layer ℓ is exactly

    GGN_ℓ = (1/n) Σ_i J_iᵀ J_i = (B_ℓᵀB_ℓ) ⊗ (a_ℓᵀa_ℓ / n) = C_ℓ ⊗ A_ℓ,

and for F (output Jacobian I): ``I ⊗ A_F`` with ``A_F = a_{L+1}ᵀa_{L+1}/n``. (For the mean over
all n·dy entries that ``mse_loss`` takes, both the GGN and the gradient carry an extra 2/dy,
which cancels in the step.) ``kfac`` takes on every layer, from the same current point
(simultaneously, as :class:`layerwise.optim.KFAC` does),

    G_ℓ ← G_ℓ − η C_ℓ⁻¹ ∇G_ℓ L̂ A_ℓ⁻¹,        F ← F − η ∇F L̂ A_F⁻¹,

undamped (A_1 = Σ̂x needs n > d; the other factors are k × k Gram matrices of full-rank
layers). F is updated by its own GGN block rather than by a least-squares head: at η = 1 the
F step *is* the least-squares head at the current features, ``F⁺ = Σ̂yz Σ̂z⁻¹`` (z = G_L⋯G_1 x),
and the method is then exactly the library KFAC on the ``nn.Module`` (``library_kfac``), a
check on all layers. Unlike linrep's stylized kfac nothing is re-orthonormalized: the method
is equivariant to ``G_ℓ → Q_ℓ G_ℓ Q_{ℓ−1}⁻¹`` and with noiseless labels no scale drifts.

The representation is the product ``G_L ⋯ G_1`` (``features``): its row space is compared with
row(G⋆) by linrep's subspace distance. State tensors carry the leading axes (R, S) of linrep's
methods (step-size replicas, seeds), so linrep's driver simulates and tunes these methods.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from layerwise import optim
from layerwise.problems.linrep.algorithms import Method, adam_direction
from layerwise.problems.linrep.data import Batch
from layerwise.problems.linrep.library import step_each


def layer_name(index: int) -> str:
    """State key of G_index (1-based): ``G1`` … ``GL``."""
    return f"G{index}"


def end_to_end(layers: list[Tensor]) -> Tensor:
    """The product ``G_L ⋯ G_1`` (..., k, d) of ``layers = [G_1, …, G_L]``."""
    product = layers[0]
    for layer in layers[1:]:
        product = layer @ product
    return product


def activations(layers: list[Tensor], x: Tensor) -> list[Tensor]:
    """``[a_1, …, a_{L+1}]``: a_1 = x (..., n, d), a_{ℓ+1} = a_ℓ G_ℓᵀ (..., n, k)."""
    values = [x]
    for layer in layers:
        values.append(values[-1] @ layer.mT)
    return values


def output_jacobians(layers: list[Tensor], head: Tensor) -> list[Tensor]:
    """``[B_1, …, B_L]`` with B_L = F and B_{ℓ−1} = B_ℓ G_ℓ, each (..., dy, k)."""
    jacobians = [head]
    for layer in reversed(layers[1:]):
        jacobians.append(jacobians[-1] @ layer)
    return jacobians[::-1]


def gradients(layers: list[Tensor], head: Tensor, batch: Batch) -> tuple[list[Tensor], Tensor]:
    """``([∇G_1, …, ∇G_L], ∇F)`` of ``½ mean_i ‖y_i − F G_L⋯G_1 x_i‖²`` by back-propagation."""
    acts = activations(layers, batch.x)
    residual = acts[-1] @ head.mT - batch.y  # (..., n, dy)
    grad_head = residual.mT @ acts[-1] / batch.n
    delta = residual @ head  # r B_L, the output gradient of G_L, (..., n, k)
    grads = []
    for index in range(len(layers) - 1, -1, -1):
        grads.append(delta.mT @ acts[index] / batch.n)
        if index:
            delta = delta @ layers[index]
    return grads[::-1], grad_head


def kronecker_factors(
    layers: list[Tensor], head: Tensor, batch: Batch
) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
    """``([(C_ℓ, A_ℓ)], A_F)``: the exact GGN blocks are C_ℓ ⊗ A_ℓ and I ⊗ A_F (row-major vec).

    ``C_ℓ = B_ℓᵀB_ℓ`` (..., k, k); ``A_1 = Σ̂x`` (S, d, d), shared by the step-size replicas;
    ``A_ℓ = a_ℓᵀa_ℓ / n`` (..., k, k) for ℓ ≥ 2 and ``A_F = a_{L+1}ᵀa_{L+1} / n``.
    """
    acts = activations(layers, batch.x)
    inputs = [batch.input_cov] + [a.mT @ a / batch.n for a in acts[1:]]
    outputs = [b.mT @ b for b in output_jacobians(layers, head)]
    return list(zip(outputs, inputs[:-1], strict=True)), inputs[-1]


def _solve_spd(matrix: Tensor, rhs: Tensor) -> tuple[Tensor, Tensor]:
    """``matrix⁻¹ rhs`` by Cholesky (batch axes broadcast) and a failure flag per matrix."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    return torch.cholesky_solve(rhs, factor), info != 0


def kfac_directions(
    layers: list[Tensor], head: Tensor, batch: Batch
) -> tuple[list[Tensor], Tensor, Tensor]:
    """``([C_ℓ⁻¹ ∇G_ℓ A_ℓ⁻¹], ∇F A_F⁻¹, failed)``: the layer-wise Gauss–Newton directions."""
    grads, grad_head = gradients(layers, head, batch)
    factors, head_input = kronecker_factors(layers, head, batch)
    failed = torch.zeros(head.shape[:-2], dtype=torch.bool, device=head.device)
    directions = []
    for grad, (output_factor, input_factor) in zip(grads, factors, strict=True):
        right, bad_right = _solve_spd(input_factor, grad.mT)  # A⁻¹ ∇ᵀ = (∇ A⁻¹)ᵀ
        direction, bad_left = _solve_spd(output_factor, right.mT)
        directions.append(direction)
        failed = failed | bad_right | bad_left
    head_direction, bad_head = _solve_spd(head_input, grad_head.mT)
    return directions, head_direction.mT, failed | bad_head


class DeepMethod(Method):
    """State ``G1`` … ``GL`` and ``F`` with leading axes (R, S); ``features`` is G_L ⋯ G_1."""

    def __init__(self, init_layers: list[Tensor], init_head: Tensor, lr: Tensor):
        replicas = lr.shape[0]
        self.lr = lr
        self.depth = len(init_layers)
        initial = {layer_name(i + 1): g for i, g in enumerate(init_layers)} | {"F": init_head}
        self.state = {
            name: value.expand(replicas, *value.shape).clone() for name, value in initial.items()
        }
        self.failed = torch.zeros((replicas, init_head.shape[0]), dtype=torch.bool)
        self.failed = self.failed.to(lr.device)

    @property
    def layers(self) -> list[Tensor]:
        return [self.state[layer_name(i + 1)] for i in range(self.depth)]

    @property
    def features(self) -> Tensor:
        return end_to_end(self.layers)

    def _apply(self, layer_steps: list[Tensor], head_step: Tensor) -> None:
        """Every layer moves by ``−η · step`` from the same current point."""
        for i, step in enumerate(layer_steps):
            self.state[layer_name(i + 1)] = self.state[layer_name(i + 1)] - self.lr * step
        self.state["F"] = self.head - self.lr * head_step


class Sgd(DeepMethod):
    """Simultaneous gradient steps ``G_ℓ ← G_ℓ − η ∇G_ℓ L̂``, ``F ← F − η ∇F L̂``."""

    def __init__(self, init_layers, init_head, lr, params=None):
        super().__init__(init_layers, init_head, lr)
        self._remember_initial()

    def step(self, batch: Batch) -> None:
        grads, grad_head = gradients(self.layers, self.head, batch)
        self._apply(grads, grad_head)


class Kfac(DeepMethod):
    """Layer-wise Gauss–Newton with exact per-batch factors on every layer (module docstring)."""

    def __init__(self, init_layers, init_head, lr, params=None):
        super().__init__(init_layers, init_head, lr)
        self._remember_initial()

    def step(self, batch: Batch) -> None:
        directions, head_direction, failed = kfac_directions(self.layers, self.head, batch)
        self.failed = failed
        self._apply(directions, head_direction)


class Adam(DeepMethod):
    """Adam with bias correction on every entry of every layer, jointly (linrep's update)."""

    def __init__(self, init_layers, init_head, lr, params):
        super().__init__(init_layers, init_head, lr)
        self.params = params
        for name in list(self.state):
            self.state["m" + name] = torch.zeros_like(self.state[name])
            self.state["v" + name] = torch.zeros_like(self.state[name])
        self.count = 0
        self._remember_initial()

    def _moment_step(self, name: str, grad: Tensor) -> Tensor:
        return adam_direction(self.state, name, grad, self.count, self.params)

    def step(self, batch: Batch) -> None:
        self.count += 1
        grads, grad_head = gradients(self.layers, self.head, batch)
        steps = [self._moment_step(layer_name(i + 1), g) for i, g in enumerate(grads)]
        self._apply(steps, self._moment_step("F", grad_head))


def deep_linear_model(layers: list[Tensor], head: Tensor) -> nn.Sequential:
    """``x ↦ F G_L ⋯ G_1 x`` as bias-free ``nn.Linear`` layers holding copies of the weights."""
    weights = [*layers, head]
    modules = [nn.Linear(w.shape[1], w.shape[0], bias=False) for w in weights]
    model = nn.Sequential(*modules).to(dtype=head.dtype, device=head.device)
    with torch.no_grad():
        for module, weight in zip(modules, weights, strict=True):
            module.weight.copy_(weight)
    return model


class LibraryKfac(DeepMethod):
    """``layerwise.optim.KFAC(model, lr, loss="mse", curvature="ggn", exact=True)`` on
    :func:`deep_linear_model`, one module and optimizer per (step size, seed); each step
    minimizes ``mse_loss(model(x), y)`` (mean over n·dy entries, the scaling KFAC assumes)."""

    def __init__(self, init_layers, init_head, lr, params=None):
        super().__init__(init_layers, init_head, lr)
        replicas, self.seeds = self.head.shape[:2]
        self.models, self.optimizers = [], []
        self._skip = torch.zeros((replicas, self.seeds), dtype=torch.bool)
        for r in range(replicas):
            for s in range(self.seeds):
                model = deep_linear_model([g[r, s] for g in self.layers], self.head[r, s])
                self.models.append(model)
                optimizer = optim.KFAC(
                    model, lr=float(lr[r]), loss="mse", curvature="ggn", exact=True
                )
                self.optimizers.append(optimizer)
        self._remember_initial()

    def step(self, batch: Batch) -> None:
        failed = torch.zeros_like(self.failed)
        names = [layer_name(i + 1) for i in range(self.depth)] + ["F"]
        for r, s, model in step_each(self.models, self.optimizers, batch, self._skip, failed):
            for name, module in zip(names, model, strict=True):
                self.state[name][r, s] = module.weight.detach()
        self.failed = failed

    def restore(self, mask: Tensor) -> None:
        """Diverged replicas keep their initial weights and are not stepped again."""
        super().restore(mask)
        self._skip |= mask.cpu()


METHODS: dict[str, type[DeepMethod]] = {
    "sgd": Sgd,
    "adam": Adam,
    "kfac": Kfac,
    "library_kfac": LibraryKfac,
}
