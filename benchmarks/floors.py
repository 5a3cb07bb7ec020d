"""Floors: for each optimizer of ours, AdamW's step plus the bare torch products and
decompositions the method cannot avoid at that setting (see :class:`FloorWork`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmarks.candidates import FP32, LR, Candidate, Setting, Trainer


class FloorWork:
    r"""The products and decompositions a method cannot avoid, as bare torch calls on the real
    gradients, run after ``backward`` of an AdamW step (forward, backward and a first-order
    elementwise update are unavoidable too).

    Per step and weight :math:`G` (m x n), with factors of sides of dimension 1 skipped:

    - ``shampoo``: :math:`GG^\top`, :math:`G^\top G`, :math:`P_L G P_R`; per refresh ``eigh``
      of each factor and :math:`Q \operatorname{diag}(s) Q^\top`;
    - ``soap``: the two statistics, :math:`Q_L^\top G Q_R` and :math:`Q_L X Q_R^\top` (momentum
      kept in the eigenbasis, so it needs no rotation of its own); per refresh ``eigh``;
    - ``muon``: 5 Newton–Schulz iterations (``baddbmm`` form into reused buffers, same-shape
      layers batched) in ``dtype``; exact: SVD;
    - ``kfac``: :math:`A^\top A` over the batch with a bias column, :math:`B^\top B` of the
      output gradients, :math:`G_{inv} G A_{inv}`; per refresh Cholesky and
      ``cholesky_inverse`` of each factor.

    ``dtype`` is that of the application's products (bf16 variants): :math:`P_L G P_R`,
    SOAP's rotation back, KFAC's :math:`G_{inv} G A_{inv}`, Newton–Schulz; statistics,
    decompositions and SOAP's rotation into the eigenbasis stay in float32, as in ours.
    """

    def __init__(
        self, method: str, setting: Setting, *, exact: bool, dtype: torch.dtype = torch.float32
    ) -> None:
        self.method = method
        self.every = 1 if exact else setting.refresh_every
        self.exact = exact
        self.dtype = dtype
        generator = torch.Generator().manual_seed(7)
        shapes = setting.weight_shapes()
        if method == "kfac":
            factor_sides = [(m, n + 1) for m, n in shapes]
        else:
            factor_sides = shapes
        self.factors = [[_spd(d, generator) if d > 1 else None for d in s] for s in factor_sides]
        self.applied = [[_spd(d, generator) if d > 1 else None for d in s] for s in factor_sides]
        self.applied_low = [[_cast(f, dtype) for f in pair] for pair in self.applied]
        self.inputs = [torch.randn(setting.batch, n + 1, generator=generator) for _, n in shapes]
        self.output_grads = [torch.randn(setting.batch, m, generator=generator) for m, _ in shapes]

    def __call__(self, model: nn.Module, step: int) -> None:
        grads = [p.grad for p in model.parameters() if p.ndim >= 2]
        refresh = (step - 1) % self.every == 0
        if self.method == "muon" and not self.exact:
            # Same-shape layers as one batch (batched products are a fair lever).
            by_shape: dict[tuple[int, ...], list[Tensor]] = {}
            for grad in grads:
                by_shape.setdefault(tuple(grad.shape), []).append(grad.to(self.dtype))
            for same in by_shape.values():
                _newton_schulz(torch.stack(same))
            return
        for index, grad in enumerate(grads):
            left, right = self.applied[index]
            low_left, low_right = self.applied_low[index]
            match self.method:
                case "shampoo":
                    _products(grad, left is not None, right is not None)
                    _two_sided(low_left, grad.to(self.dtype), low_right)
                case "soap":
                    _products(grad, left is not None, right is not None)
                    _two_sided(_t(left), grad, right)
                    _two_sided(low_left, grad.to(self.dtype), _t(low_right))
                case "muon":  # exact (the amortized floor returned above)
                    u, _, vh = torch.linalg.svd(grad, full_matrices=False)
                    u @ vh
                case "kfac":
                    a, g = self.inputs[index], self.output_grads[index]
                    a.mT @ a
                    g.mT @ g
                    low_grad = grad.to(self.dtype)
                    with_bias = torch.cat([low_grad, low_grad[:, :1]], dim=1)
                    _two_sided(low_left, with_bias, low_right)
            if refresh and self.method != "muon":
                for factor in self.factors[index]:
                    if factor is None:
                        continue
                    if self.method == "kfac":
                        torch.cholesky_inverse(torch.linalg.cholesky(factor))
                    else:
                        values, vectors = torch.linalg.eigh(factor)
                        if self.method == "shampoo":
                            (vectors * values.clamp(min=1e-12).pow(-0.25)) @ vectors.mT


def _spd(d: int, generator: torch.Generator) -> Tensor:
    a = torch.randn(d, d, generator=generator)
    return a @ a.mT / d + torch.eye(d)


def _cast(x: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if x is None else x.to(dtype)


def _t(x: Tensor | None) -> Tensor | None:
    return None if x is None else x.mT


def _products(grad: Tensor, left: bool, right: bool) -> None:
    if left:
        grad @ grad.mT
    if right:
        grad.mT @ grad


def _two_sided(left: Tensor | None, x: Tensor, right: Tensor | None) -> Tensor:
    if left is not None:
        x = left @ x
    if right is not None:
        x = x @ right
    return x


def _newton_schulz(x: Tensor, steps: int = 5) -> Tensor:
    """Quintic Newton–Schulz on a batch ``(k, m, n)`` of matrices (fused multiply-adds)."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    if x.shape[-2] > x.shape[-1]:
        x = x.mT
    x = torch.div(x, torch.linalg.matrix_norm(x, keepdim=True) + 1e-7, out=x.new_empty(x.shape))
    gram = x.new_empty((*x.shape[:-1], x.shape[-2]))
    update = torch.empty_like(gram)
    following = torch.empty_like(x)
    for _ in range(steps):
        torch.bmm(x, x.mT, out=gram)
        torch.baddbmm(gram, gram, gram, beta=b, alpha=c, out=update)
        torch.baddbmm(x, update, x, beta=a, out=following)
        x, following = following, x
    return x


def floor_candidates(setting: Setting, ours: list[Candidate]) -> list[Candidate]:
    """One floor per candidate of ours (AdamW's step plus the bare unavoidable work), except
    Muon in float32 (see below)."""
    floors = []
    for candidate in ours:
        exact = candidate.mode == "exact"
        full_precision = exact or candidate.name.endswith(FP32)
        if candidate.method == "muon" and not exact and full_precision:
            # Muon's float32 Newton–Schulz is its floor (1.0x in every run) and costs 12x
            # AdamW per block: left out to keep the benchmark under 5 minutes.
            continue
        dtype = torch.float32 if full_precision else torch.bfloat16
        work = FloorWork(candidate.method, setting, exact=exact, dtype=dtype)

        def factory(model: nn.Module, batches: list, work: FloorWork = work) -> Trainer:
            optimizer = torch.optim.AdamW(model.parameters(), lr=LR["adamw"])
            return Trainer(model, [optimizer], batches, extra=work)

        floors.append(
            Candidate(
                f"floor {candidate.name.removeprefix('layerwise ')}",
                candidate.method,
                "floor",
                "bare",
                f"torch AdamW step + bare {candidate.method} products and decompositions "
                f"({str(dtype).removeprefix('torch.')}{', every step' if exact else ''})",
                factory,
                candidate.block_steps,
                floor_of=candidate.name,
            )
        )
    return floors
