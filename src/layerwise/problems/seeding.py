"""One way to seed a problem's random streams: a generator per (problem, seed, purpose).

Every random quantity of a problem (the instance, the initialization, each data batch, ...) is
drawn from its own generator, determined by the problem's name, the seed and the *purpose* of
the stream alone. So

- streams are **paired**: for a given seed every method of a run draws the same instance,
  initialization and batches, whatever it does with them, and whatever other streams exist;
- streams are **independent**: adding a stream, or drawing more from one, moves no other;
- a value depends on nothing but its key: not on the order of runs, the worker, nor on which
  seeds share a vectorized run.

The seed of a generator is the first 8 bytes of ``sha256("<problem>:<seed>:<purpose>")``
(little-endian, shifted right by one so it fits torch's signed 64-bit seed): a stable hash,
unlike Python's ``hash``, so streams are the same on every machine and version.
"""

from __future__ import annotations

import hashlib

import torch


def seed_of(problem: str, seed: int, purpose: str) -> int:
    """The 63-bit seed of stream ``purpose`` of ``seed`` in ``problem`` (module docstring)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    for name, value in (("problem", problem), ("purpose", purpose)):
        if not isinstance(value, str) or not value or ":" in value:
            raise ValueError(f"{name} must be a non-empty string without ':', got {value!r}")
    digest = hashlib.sha256(f"{problem}:{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(
    problem: str, seed: int, purpose: str, device: str | torch.device = "cpu"
) -> torch.Generator:
    """A generator on ``device`` for stream ``purpose`` of ``seed`` in ``problem``.

    The problems draw on the CPU (the default) and move the tensors, so that a CUDA run sees
    the same numbers as a CPU run."""
    return torch.Generator(device=device).manual_seed(seed_of(problem, seed, purpose))
