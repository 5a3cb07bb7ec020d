"""Problem instances and data streams of linear representation learning (SPEC §2).

Train task and transfer task (s ∈ {train, transfer}):

    y = F⋆ˢ G⋆ x + ε,   x = (Σxˢ)^{1/2} u,   u uniform on {±1}^d (or N(0, I)),   ε ~ N(0, σε² I)

Shapes carry a leading seed axis S: G⋆ (S, k, d), F⋆ (S, dy, k), Σx (S, d, d), a batch
x (S, n, d), y (S, n, dy). Every random draw comes from a ``torch.Generator`` seeded from
(seed, purpose) only (:func:`layerwise.problems.seeding.generator`), so for a given seed every
method sees the same instance, initialization and data stream, whichever other seeds share the
batch; the global RNG is never used.
Draws are made on the CPU in float64 and then moved to the device, so results do not depend on
the device's RNG.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from layerwise.problems import seeding
from layerwise.problems.linrep.settings import LinrepSettings

DTYPE = torch.float64


def seeded_generator(seed: int, purpose: str) -> torch.Generator:
    """The CPU generator of stream ``purpose`` of ``seed`` (:mod:`layerwise.problems.seeding`)."""
    return seeding.generator("linrep", seed, purpose)


def haar_orthogonal(rows: int, cols: int, generator: torch.Generator) -> Tensor:
    """A (rows, cols) matrix with orthonormal columns, Haar distributed (rows >= cols).

    QR of a Gaussian matrix with the signs of R's diagonal moved into Q (Mezzadri 2007).
    """
    gaussian = torch.randn(rows, cols, generator=generator, dtype=DTYPE)
    q, r = torch.linalg.qr(gaussian)
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def log_spaced(high_over_low: float, count: int) -> Tensor:
    """``count`` values log-spaced from 1 down to 1/high_over_low (1 if count == 1)."""
    return torch.logspace(0.0, -torch.log10(torch.tensor(high_over_low)).item(), count, dtype=DTYPE)


@dataclass(frozen=True)
class Task:
    """One task's ground truth over seeds: head F⋆ (S, dy, k), Σx and Σx^{1/2} (S, d, d)."""

    head: Tensor
    input_cov: Tensor
    input_cov_sqrt: Tensor


@dataclass(frozen=True)
class Instance:
    """The problem instance and initialization of each seed (stacked on axis 0)."""

    seeds: tuple[int, ...]
    features: Tensor  # G⋆, (S, k, d), orthonormal rows
    train: Task
    transfer: Task
    init_features: Tensor  # G0, (S, k, d), Haar-orthonormal rows
    init_head: Tensor  # F0, (S, dy, k), i.i.d. N(0, 1/k)


def _task(settings: LinrepSettings, kappa_x: float, generator: torch.Generator) -> Task:
    d, k, dy = settings.d, settings.k, settings.dy
    left = haar_orthogonal(dy, k, generator)
    right = haar_orthogonal(k, k, generator)
    head = left @ torch.diag(log_spaced(settings.kappa_f, k)) @ right.T
    eigenvalues = log_spaced(kappa_x, d)
    basis = (
        haar_orthogonal(d, d, generator)
        if settings.basis == "rotated"
        else torch.eye(d, dtype=DTYPE)
    )
    cov = basis @ torch.diag(eigenvalues) @ basis.T
    cov_sqrt = basis @ torch.diag(eigenvalues.sqrt()) @ basis.T
    return Task(head=head, input_cov=cov, input_cov_sqrt=cov_sqrt)


def make_instance(
    settings: LinrepSettings, seeds: tuple[int, ...], device: str = "cpu"
) -> Instance:
    """Draw G⋆, both tasks and (G0, F0) for each seed."""
    parts: dict[str, list[Tensor]] = {
        name: [] for name in ("g", "fh", "fc", "fs", "th", "tc", "ts", "g0", "f0")
    }
    kappa_transfer = settings.kappa_x_transfer or settings.kappa_x
    for seed in seeds:
        gen = seeded_generator(seed, "instance")
        parts["g"].append(haar_orthogonal(settings.d, settings.k, gen).T)
        train = _task(settings, settings.kappa_x, gen)
        transfer = _task(settings, kappa_transfer, gen)
        parts["fh"].append(train.head)
        parts["fc"].append(train.input_cov)
        parts["fs"].append(train.input_cov_sqrt)
        parts["th"].append(transfer.head)
        parts["tc"].append(transfer.input_cov)
        parts["ts"].append(transfer.input_cov_sqrt)
        gen = seeded_generator(seed, "init")
        parts["g0"].append(haar_orthogonal(settings.d, settings.k, gen).T)
        f0 = torch.randn(settings.dy, settings.k, generator=gen, dtype=DTYPE)
        parts["f0"].append(f0 / settings.k**0.5)
    s = {name: torch.stack(values).to(device) for name, values in parts.items()}
    return Instance(
        seeds=tuple(seeds),
        features=s["g"],
        train=Task(head=s["fh"], input_cov=s["fc"], input_cov_sqrt=s["fs"]),
        transfer=Task(head=s["th"], input_cov=s["tc"], input_cov_sqrt=s["ts"]),
        init_features=s["g0"],
        init_head=s["f0"],
    )


@dataclass
class Batch:
    """A batch x (S, n, d), y (S, n, dy) with lazily computed (and cached) moments.

    ``input_cov`` = Σ̂x = xᵀx/n (S, d, d), ``cross_cov`` = Σ̂yx = yᵀx/n (S, dy, d): computed
    only by the methods that need them.
    """

    x: Tensor
    y: Tensor

    @property
    def n(self) -> int:
        return self.x.shape[-2]

    @cached_property
    def input_cov(self) -> Tensor:
        return self.x.mT @ self.x / self.n

    @cached_property
    def cross_cov(self) -> Tensor:
        return self.y.mT @ self.x / self.n

    def halves(self) -> tuple[Batch, Batch]:
        """The first and second half of the samples (for sample splitting)."""
        half = self.n // 2
        return Batch(self.x[..., :half, :], self.y[..., :half, :]), Batch(
            self.x[..., half : 2 * half, :], self.y[..., half : 2 * half, :]
        )


def draw_samples(
    settings: LinrepSettings,
    instance: Instance,
    task: Task,
    count: int,
    generators: list[torch.Generator],
) -> Batch:
    """``count`` samples of ``task`` for each seed, each seed from its own generator."""
    shape = (count, settings.d)
    if settings.inputs == "rademacher":
        u = [torch.randint(0, 2, shape, generator=g, dtype=DTYPE) * 2.0 - 1.0 for g in generators]
    else:
        u = [torch.randn(shape, generator=g, dtype=DTYPE) for g in generators]
    noise = [
        torch.randn(count, settings.dy, generator=g, dtype=DTYPE)
        if settings.noise_std > 0
        else None
        for g in generators
    ]
    device = instance.features.device
    x = torch.stack(u).to(device) @ task.input_cov_sqrt  # Σ^{1/2} is symmetric
    y = x @ (task.head @ instance.features).mT
    if settings.noise_std > 0:
        y = y + settings.noise_std * torch.stack(noise).to(device)
    return Batch(x, y)


class BatchStream:
    """The training data stream: a fresh batch of n samples per step (or one fixed data set)."""

    def __init__(self, settings: LinrepSettings, instance: Instance):
        self._settings = settings
        self._instance = instance
        self._generators = [seeded_generator(seed, "train") for seed in instance.seeds]
        self._fixed: Batch | None = None

    def next(self) -> Batch:
        if self._settings.data == "fixed":
            if self._fixed is None:
                self._fixed = self._draw()
            return self._fixed
        return self._draw()

    def _draw(self) -> Batch:
        return draw_samples(
            self._settings, self._instance, self._instance.train, self._settings.n, self._generators
        )


def heldout_set(settings: LinrepSettings, instance: Instance) -> Batch:
    """Held-out samples of the train task (their own generator purpose)."""
    gens = [seeded_generator(seed, "heldout") for seed in instance.seeds]
    return draw_samples(settings, instance, instance.train, settings.n_heldout, gens)


def transfer_set(settings: LinrepSettings, instance: Instance) -> Batch:
    """max(n_transfer) samples of the transfer task; a size m uses the first m (nested)."""
    gens = [seeded_generator(seed, "transfer") for seed in instance.seeds]
    count = max(settings.transfer_sizes)
    return draw_samples(settings, instance, instance.transfer, count, gens)
