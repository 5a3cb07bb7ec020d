"""First-order and layer-wise algorithms of linear representation learning (SPEC §2).

Model ``f(x) = F G x`` with G (k, d) the representation and F (dy, k) the head; batch loss
``L̂(F, G) = ½ mean_i ‖y_i − F G x_i‖²`` with gradients

    ∇G L̂ = Fᵀ (F G Σ̂x − Σ̂yx),      ∇F L̂ = (F G Σ̂x − Σ̂yx) Gᵀ.

State tensors carry two leading axes (R, S): R replicas (one per step size of the tuning grid, 1
otherwise) and S seeds; a batch carries only the seed axis and broadcasts over R. The step size
``lr`` is a tensor of shape (R, 1, 1, 1). Each method computes only the statistics it needs:
gradients go through z = G x (n·d·k work); Σ̂x (n·d²) is formed only by dfw and kfac.

Every method exposes ``features`` (G), ``predict(x)`` (evaluation-mode outputs), ``step(batch)``
and ``failed`` ((R, S) bool: a linear solve failed in the last step). The driver replaces
diverged or failed replicas by their initial state (and records them as diverged) so that a
non-finite value never enters a batched linear solve.
"""

from __future__ import annotations

import torch
from torch import Tensor

from layerwise.problems.linrep.data import Batch
from layerwise.problems.linrep.metrics import least_squares_head, orthonormalize_rows
from layerwise.problems.linrep.settings import (
    AdamParams,
    AmdParams,
    BatchnormParams,
    DfwParams,
    KfacParams,
    SgdParams,
)


def gradients(features: Tensor, head: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
    """``(∇G L̂, ∇F L̂)`` for G (..., k, d), F (..., dy, k), computed through z = G x."""
    z = batch.x @ features.mT  # (..., n, k)
    residual = z @ head.mT - batch.y  # (..., n, dy)
    grad_head = residual.mT @ z / batch.n
    grad_features = (residual @ head).mT @ batch.x / batch.n
    return grad_features, grad_head


def _eye(size: int, like: Tensor) -> Tensor:
    return torch.eye(size, dtype=like.dtype, device=like.device)


class Method:
    """Common state handling: tensors in ``self.state`` all have leading axes (R, S)."""

    def __init__(self, init_features: Tensor, init_head: Tensor, lr: Tensor):
        replicas = lr.shape[0]
        self.lr = lr
        self.state: dict[str, Tensor] = {
            "G": init_features.expand(replicas, *init_features.shape).clone(),
            "F": init_head.expand(replicas, *init_head.shape).clone(),
        }
        self.failed = torch.zeros(self.state["G"].shape[:2], dtype=torch.bool, device=lr.device)

    def _remember_initial(self) -> None:
        self.initial = {name: value.clone() for name, value in self.state.items()}

    @property
    def features(self) -> Tensor:
        return self.state["G"]

    @property
    def head(self) -> Tensor:
        return self.state["F"]

    def predict(self, x: Tensor) -> Tensor:
        """Outputs (R, S, n, dy) for inputs x (S, n, d)."""
        return x @ (self.head @ self.features).mT

    def restore(self, mask: Tensor) -> None:
        """Put the replicas where ``mask`` (R, S) is True back to their initial state."""
        for name, value in self.state.items():
            value[mask] = self.initial[name][mask]

    def step(self, batch: Batch) -> None:
        raise NotImplementedError


class Sgd(Method):
    """Joint simultaneous gradient step: ``G ← G − η ∇G L̂``, ``F ← F − η ∇F L̂``."""

    def __init__(self, init_features, init_head, lr, params: SgdParams):
        super().__init__(init_features, init_head, lr)
        self._remember_initial()

    def step(self, batch: Batch) -> None:
        grad_g, grad_f = gradients(self.features, self.head, batch)
        self.state["G"] = self.features - self.lr * grad_g
        self.state["F"] = self.head - self.lr * grad_f


class Amd(Method):
    """Alternating minimization–descent: least-squares head, gradient step on G, QR.

    ``F ← argmin_F L̂(F, G)`` on the batch, then ``G ← qr_rows(G − η Fᵀ(F G Σ̂x − Σ̂yx))``.
    """

    def __init__(self, init_features, init_head, lr, params: AmdParams):
        super().__init__(init_features, init_head, lr)
        self._remember_initial()

    def step(self, batch: Batch) -> None:
        self.state["F"] = least_squares_head(self.features, batch)
        grad_g, _ = gradients(self.features, self.head, batch)
        self.state["G"] = orthonormalize_rows(self.features - self.lr * grad_g)


class Dfw(Method):
    """De-biased, feature-whitened update (sample splitting), SPEC §2.

    Split the batch into halves (1, 2): ``F ← argmin_F L̂₁(F, G)``, then
    ``G ← qr_rows(G − η Fᵀ(F G Σ̂x₂ − Σ̂yx₂) Σ̂x₂⁻¹) = qr_rows(G − η Fᵀ(F G − Ŵ₂))`` with the OLS
    map ``Ŵ₂ = Σ̂yx₂ Σ̂x₂⁻¹`` of the second half (computed once per seed, shared by replicas).
    """

    def __init__(self, init_features, init_head, lr, params: DfwParams):
        super().__init__(init_features, init_head, lr)
        self._remember_initial()

    def step(self, batch: Batch) -> None:
        first, second = batch.halves()
        self.state["F"] = least_squares_head(self.features, first)
        ols_t, info = torch.linalg.solve_ex(second.input_cov, second.cross_cov.mT)
        self.failed = (info != 0).expand_as(self.failed)
        direction = self.head.mT @ (self.head @ self.features - ols_t.mT)
        self.state["G"] = orthonormalize_rows(self.features - self.lr * direction)


class Kfac(Method):
    """The stylized KFAC update (the paper's Eq. 5; SPEC §1–2):

        G⁺ = G − ηG (FᵀF + λF I)⁻¹ Fᵀ (F G Σ̂x − Σ̂yx) (Σ̂x + λG I)⁻¹,
        F⁺ = argmin_F L̂(F, G⁺)                                  (head = least_squares, ηF = 1)
        F⁺ = F − ηF (F G⁺Σ̂xG⁺ᵀ − Σ̂yx G⁺ᵀ)(G⁺Σ̂xG⁺ᵀ)⁻¹            (head = preconditioned)

    The right factor is applied as ``(F G Σ̂x − Σ̂yx)(Σ̂x + λG)⁻¹ = F G P − W`` with
    ``P = Σ̂x(Σ̂x + λG)⁻¹`` and ``W = Σ̂yx(Σ̂x + λG)⁻¹`` formed once per seed. With
    ``orthonormalize`` the rows of G⁺ are re-orthonormalized (QR): the row-space trajectory is
    unchanged (SPEC fact 3) but the scale of G cannot drift under label noise. The QR factor is
    moved into F (``G⁺ = RᵀQᵀ → (F Rᵀ, Qᵀ)``), a gauge change, so a preconditioned head step
    gives the same row spaces with or without orthonormalization.
    """

    def __init__(self, init_features, init_head, lr, params: KfacParams):
        super().__init__(init_features, init_head, lr)
        self.params = params
        self._remember_initial()

    def step(self, batch: Batch) -> None:
        p = self.params
        cov = batch.input_cov
        d = cov.shape[-1]
        damped = cov + p.damping_g * _eye(d, cov) if p.damping_g else cov
        # One solve gives both W = Σ̂yx(Σ̂x+λ)⁻¹ and, when damped, P = Σ̂x(Σ̂x+λ)⁻¹ (symmetric).
        rhs = torch.cat([batch.cross_cov.mT, cov], dim=-1) if p.damping_g else batch.cross_cov.mT
        solved, info = torch.linalg.solve_ex(damped, rhs)
        dy = batch.cross_cov.shape[-2]
        ols = solved[..., :dy].mT
        g, f = self.features, self.head
        right = f @ (g @ solved[..., dy:] if p.damping_g else g) - ols
        left = f.mT @ f
        if p.damping_f:
            left = left + p.damping_f * _eye(left.shape[-1], left)
        direction, info_left = torch.linalg.solve_ex(left, f.mT @ right)
        new_g = g - self.lr * direction
        if p.orthonormalize:
            # G⁺ = Rᵀ Qᵀ: keep Qᵀ and move Rᵀ into the head so that F G⁺ is unchanged; the
            # preconditioned head step is then equivariant too (the LS head ignores F).
            q, r = torch.linalg.qr(new_g.mT)
            new_g, f = q.mT, f @ r.mT
        self.state["G"] = new_g
        if p.head == "least_squares":
            self.state["F"] = least_squares_head(new_g, batch)
        else:
            _, grad_f = gradients(new_g, f, batch)
            z = batch.x @ new_g.mT
            gram = z.mT @ z / batch.n
            step_f, info_head = torch.linalg.solve_ex(gram, grad_f.mT)
            self.state["F"] = f - p.lr_head * step_f.mT
            info_left = info_left | info_head
        self.failed = (info != 0) | (info_left != 0)


def adam_direction(
    state: dict[str, Tensor], name: str, grad: Tensor, count: int, params: AdamParams
) -> Tensor:
    """``m̂ / (√v̂ + ε)`` for ``state[name]`` after its moments ``state["m" + name]`` and
    ``state["v" + name]`` take in ``grad`` (in place); ``count``: steps taken, this one included."""
    m = state["m" + name].mul_(params.beta1).add_(grad, alpha=1 - params.beta1)
    v = state["v" + name].mul_(params.beta2).addcmul_(grad, grad, value=1 - params.beta2)
    m_hat = m / (1 - params.beta1**count)
    v_hat = v / (1 - params.beta2**count)
    return m_hat / (v_hat.sqrt() + params.eps)


class Adam(Method):
    """Adam (Kingma & Ba 2015) with bias correction, per entry:

        m ← β1 m + (1−β1) g,  v ← β2 v + (1−β2) g²,  θ ← θ − η m̂ / (√v̂ + ε)

    on G and F jointly (``head = joint``), or on G after ``F ← argmin_F L̂(F, G)``
    (``head = least_squares``). G is not re-orthonormalized (Adam is not equivariant).
    """

    def __init__(self, init_features, init_head, lr, params: AdamParams):
        super().__init__(init_features, init_head, lr)
        self.params = params
        for name in ("G", "F"):
            self.state["m" + name] = torch.zeros_like(self.state[name])
            self.state["v" + name] = torch.zeros_like(self.state[name])
        self.count = 0
        self._remember_initial()

    def _adam(self, name: str, grad: Tensor) -> None:
        direction = adam_direction(self.state, name, grad, self.count, self.params)
        self.state[name] = self.state[name] - self.lr * direction

    def step(self, batch: Batch) -> None:
        self.count += 1
        if self.params.head == "least_squares":
            self.state["F"] = least_squares_head(self.features, batch)
        grad_g, grad_f = gradients(self.features, self.head, batch)
        self._adam("G", grad_g)
        if self.params.head == "joint":
            self._adam("F", grad_f)


class Batchnorm(Method):
    """SGD on the network ``f(x) = F · BN(G x)`` (BN without affine parameters):

        BN(z) = (z − μ) / √(σ² + ε_bn)   per feature,

    with μ, σ² the batch mean and (biased) variance in training and running averages
    (``μ̄ ← (1−m) μ̄ + m μ``, ``σ̄² ← (1−m) σ̄² + m σ²·n/(n−1)``) in evaluation (``predict``).
    BN rescales and centres the features, so row(G) is still the learned representation; the
    affine parameters are left out because F absorbs the scale and the data are centred.

    Gradients in closed form (checked against autograd in the tests): with ẑ = BN(z), s the
    batch standard deviation, r = ẑ Fᵀ − y and ĝ = r F / n,

        ∇F = rᵀ ẑ / n,   ∇z = (ĝ − mean(ĝ) − ẑ ⊙ mean(ĝ ⊙ ẑ)) / s,   ∇G = ∇zᵀ x.
    """

    def __init__(self, init_features, init_head, lr, params: BatchnormParams):
        super().__init__(init_features, init_head, lr)
        self.params = params
        shape = (*self.state["G"].shape[:2], 1, self.state["G"].shape[2])
        self.state["mean"] = torch.zeros(shape, dtype=lr.dtype, device=lr.device)
        self.state["var"] = torch.ones(shape, dtype=lr.dtype, device=lr.device)
        self._remember_initial()

    def _normalize(self, z: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        return (z - mean) / torch.sqrt(var + self.params.bn_eps)

    def predict(self, x: Tensor) -> Tensor:
        z = x @ self.features.mT
        return self._normalize(z, self.state["mean"], self.state["var"]) @ self.head.mT

    def gradients(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(∇G, ∇F, batch mean, batch variance)`` of the batch-statistics loss."""
        g, f = self.features, self.head
        z = batch.x @ g.mT  # (R, S, n, k)
        mean = z.mean(-2, keepdim=True)
        var = z.var(-2, unbiased=False, keepdim=True)
        std = torch.sqrt(var + self.params.bn_eps)
        normalized = (z - mean) / std
        residual = normalized @ f.mT - batch.y
        grad_f = residual.mT @ normalized / batch.n
        grad_normalized = residual @ f / batch.n
        grad_z = (
            grad_normalized
            - grad_normalized.mean(-2, keepdim=True)
            - normalized * (grad_normalized * normalized).mean(-2, keepdim=True)
        ) / std
        grad_g = grad_z.mT @ batch.x
        return grad_g, grad_f, mean, var

    def step(self, batch: Batch) -> None:
        grad_g, grad_f, mean, var = self.gradients(batch)
        m, n = self.params.momentum, batch.n
        self.state["mean"] = (1 - m) * self.state["mean"] + m * mean
        self.state["var"] = (1 - m) * self.state["var"] + m * var * n / max(n - 1, 1)
        self.state["G"] = self.features - self.lr * grad_g
        self.state["F"] = self.head - self.lr * grad_f
