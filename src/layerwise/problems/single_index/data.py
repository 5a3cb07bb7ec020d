"""Single-index data: x ~ N(0, Σ), y = σ⋆(⟨β⋆, x⟩) + ε, batched over seeds (SPEC.md §3).

Everything random comes from a ``torch.Generator`` seeded from ``(seed, purpose)``
(:func:`layerwise.problems.seeding.generator`), so a seed's instance (Σ, β⋆), initialization
(W0, a) and batches are identical for every method, and the instance of a seed is the same at
every batch size n. The global RNG is never touched. Tensors carry a leading seed axis S.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from layerwise.problems import seeding

from .settings import (
    CovarianceFamily,
    Link,
    SecondLayer,
    SingleIndexSettings,
    TargetDirection,
)

DTYPE = torch.float64

#: Purposes of the random streams of one seed; each gets its own generator.
PURPOSES = ("covariance", "target", "init", "step", "readout", "validation", "test", "oracle")


def generator(seed: int, purpose: str) -> torch.Generator:
    """The CPU generator of stream ``purpose`` of ``seed`` (:mod:`layerwise.problems.seeding`)."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    return seeding.generator("single_index", seed, purpose)


def link_function(link: Link | str, z: Tensor) -> Tensor:
    """σ⋆(z) for the named link."""
    match Link(link):
        case Link.TANH:
            return torch.tanh(z)
        case Link.RELU:
            return torch.relu(z)
        case Link.HE1_HE2:
            return z + (z * z - 1.0) / math.sqrt(2.0)
        case other:  # pragma: no cover - StrEnum makes this unreachable
            raise ValueError(f"unknown link {other!r}")


def covariance_spectrum(family: CovarianceFamily | str, d: int, kappa: float) -> Tensor:
    """Eigenvalues (d,) of Σ in decreasing order, with λmax/λmin = kappa."""
    match CovarianceFamily(family):
        case CovarianceFamily.LOG_SPACED:
            return torch.logspace(0.0, -math.log10(kappa), d, dtype=DTYPE)
        case CovarianceFamily.SPIKED:
            eigenvalues = torch.ones(d, dtype=DTYPE)
            eigenvalues[0] = kappa
            return eigenvalues
        case CovarianceFamily.POWER_LAW:
            exponent = math.log(kappa) / math.log(d) if d > 1 else 0.0
            return torch.arange(1, d + 1, dtype=DTYPE) ** (-exponent)
        case other:  # pragma: no cover
            raise ValueError(f"unknown covariance family {other!r}")


def haar_orthogonal(d: int, gen: torch.Generator) -> Tensor:
    """A Haar-distributed d×d orthogonal matrix (QR of a Gaussian with the sign fix)."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=DTYPE))
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


@dataclass(frozen=True)
class Instance:
    """Problem instances and initializations for S seeds.

    Shapes: ``eigenvalues`` (S, d) decreasing, ``eigenvectors`` (S, d, d) with Σ = Q diag(λ) Qᵀ,
    ``beta`` (S, d) with βᵀΣβ = 1, ``w0`` (S, N, d) with N(0, 1/d) entries, ``a`` (S, N).
    """

    settings: SingleIndexSettings
    seeds: tuple[int, ...]
    eigenvalues: Tensor
    eigenvectors: Tensor
    beta: Tensor
    w0: Tensor
    a: Tensor

    @property
    def covariance(self) -> Tensor:
        """Σ, (S, d, d)."""
        q = self.eigenvectors
        return (q * self.eigenvalues.unsqueeze(-2)) @ q.transpose(-1, -2)

    @property
    def covariance_sqrt(self) -> Tensor:
        """Σ^{1/2}, (S, d, d)."""
        q = self.eigenvectors
        return (q * self.eigenvalues.sqrt().unsqueeze(-2)) @ q.transpose(-1, -2)

    def to(self, device: str | torch.device) -> Instance:
        return Instance(
            settings=self.settings,
            seeds=self.seeds,
            eigenvalues=self.eigenvalues.to(device),
            eigenvectors=self.eigenvectors.to(device),
            beta=self.beta.to(device),
            w0=self.w0.to(device),
            a=self.a.to(device),
        )


def _target(settings: SingleIndexSettings, q: Tensor, gen: torch.Generator) -> Tensor:
    d = settings.d
    match settings.target:
        case TargetDirection.RANDOM:
            return torch.randn(d, generator=gen, dtype=DTYPE)
        case TargetDirection.ALIGNED:
            return q[:, 0].clone()
        case TargetDirection.ORTHOGONAL:
            top = q[:, : max(1, math.ceil(d / 10))]
            g = torch.randn(d, generator=gen, dtype=DTYPE)
            return g - top @ (top.T @ g)
        case other:  # pragma: no cover
            raise ValueError(f"unknown target {other!r}")


def make_instance(settings: SingleIndexSettings, seeds: tuple[int, ...]) -> Instance:
    """Draw Σ, β⋆, W0 and a for each seed (CPU, float64)."""
    d, width = settings.d, settings.width
    spectrum = covariance_spectrum(settings.covariance, d, settings.kappa)
    eigenvectors, betas, w0s, heads = [], [], [], []
    for seed in seeds:
        q = (
            haar_orthogonal(d, generator(seed, "covariance"))
            if settings.rotated
            else torch.eye(d, dtype=DTYPE)
        )
        beta = _target(settings, q, generator(seed, "target"))
        sigma_norm = torch.sqrt(((q.T @ beta) ** 2 * spectrum).sum())
        init = generator(seed, "init")
        w0 = torch.randn(width, d, generator=init, dtype=DTYPE) / math.sqrt(d)
        if settings.second_layer == SecondLayer.GAUSSIAN:
            a = torch.randn(width, generator=init, dtype=DTYPE) / math.sqrt(width)
        else:
            signs = torch.randint(0, 2, (width,), generator=init).to(DTYPE) * 2 - 1
            a = signs / math.sqrt(width)
        eigenvectors.append(q)
        betas.append(beta / sigma_norm)
        w0s.append(w0)
        heads.append(a)
    return Instance(
        settings=settings,
        seeds=tuple(seeds),
        eigenvalues=spectrum.expand(len(seeds), d).clone(),
        eigenvectors=torch.stack(eigenvectors),
        beta=torch.stack(betas),
        w0=torch.stack(w0s),
        a=torch.stack(heads),
    )


def sample(instance: Instance, purpose: str, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Draw ``size`` samples per seed from the stream ``purpose``.

    Returns ``(x, y, clean)`` of shapes (S, size, d), (S, size), (S, size) where
    ``clean = σ⋆(⟨β⋆, x⟩)`` is the noiseless target (for the excess risk).
    """
    settings = instance.settings
    d = settings.d
    device = instance.beta.device
    z, noise = [], []
    for seed in instance.seeds:
        gen = generator(seed, purpose)
        z.append(torch.randn(size, d, generator=gen, dtype=DTYPE))
        noise.append(torch.randn(size, generator=gen, dtype=DTYPE))
    x = torch.stack(z).to(device) @ instance.covariance_sqrt
    clean = link_function(settings.link, torch.einsum("snd,sd->sn", x, instance.beta))
    y = clean + settings.noise_std * torch.stack(noise).to(device)
    return x, y, clean
