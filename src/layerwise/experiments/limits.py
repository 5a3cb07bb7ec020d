"""Input limits: values that validate as their type but cannot be meant, refused before a run.

A pydantic ``float`` accepts ``.inf`` and ``1e300``, an ``int`` accepts ``true``, and nothing
stops a grid point whose arrays would not fit in memory or a seed count that does not fit in a
list. Every check here returns what is wrong in words (the caller names the file and field) so
that :mod:`.config` can refuse the config before anything runs.

- **finite and in range**: every float of a settings or hyperparameter model (nested too) is
  finite and at most :data:`MAX_MAGNITUDE` in absolute value;
- **no bool as a number**: a YAML ``true`` given for a field that is not a bool;
- **memory**: the problem's estimate of the largest working set of one run (its settings'
  ``memory_bytes()``, float64 arrays) must fit in the machine's physical memory;
- **counts**: at most :data:`MAX_SEEDS` seeds and :data:`MAX_RUNS` runs per config.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel

#: The largest absolute value of any float setting or hyperparameter (1e300 is not a step size).
MAX_MAGNITUDE = 1e15

#: The most seeds a config may ask for (seed lists are materialized; runs are planned per seed).
MAX_SEEDS = 100_000

#: The most runs one config may expand into (grid points x method groups x seed groups).
MAX_RUNS = 1_000_000


def value_problems(model: BaseModel, given: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """``(dotted field, message)`` for each unusable value of a validated ``model``.

    ``given`` is what the config wrote (before validation), used to tell a bool that pydantic
    turned into ``1`` from a real ``1``.
    """
    for key, raw in given.items():
        resolved = getattr(model, key, None)
        if _bool_became_number(raw, resolved):
            yield key, f"value {raw!r}: a bool is not a number; write the number itself"
    yield from _float_problems(model.model_dump(mode="python"), "")


def _bool_became_number(raw: Any, resolved: Any) -> bool:
    if isinstance(raw, bool):
        return not isinstance(resolved, bool)
    if isinstance(raw, list | tuple) and isinstance(resolved, list | tuple):
        return len(raw) == len(resolved) and any(
            _bool_became_number(item, value) for item, value in zip(raw, resolved, strict=True)
        )
    return False


def _float_problems(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _float_problems(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _float_problems(item, path)
    elif isinstance(value, float) and not isinstance(value, bool):
        if not math.isfinite(value):
            yield path, f"value {value!r}: must be a finite number"
        elif abs(value) > MAX_MAGNITUDE:
            yield path, f"value {value!r}: absurdly large (|value| > {MAX_MAGNITUDE:g})"


def seed_count_problem(value: Any) -> str | None:
    """Why a ``seeds`` entry is too large to plan, or None (checked before it is expanded)."""
    count = value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(value, list):
        count = len(value)
    if count is not None and count > MAX_SEEDS:
        return f"{count} seeds is more than the limit of {MAX_SEEDS}"
    return None


def run_count_problem(points: int, method_groups: int, seed_groups: int) -> str | None:
    runs = points * method_groups * seed_groups
    if runs > MAX_RUNS:
        return (
            f"{points} grid points x {method_groups} method groups x {seed_groups} seed groups "
            f"= {runs} runs, more than the limit of {MAX_RUNS}"
        )
    return None


def physical_memory_bytes() -> int | None:
    """The machine's physical memory, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def memory_problem(settings: BaseModel) -> str | None:
    """Why one run of ``settings`` would not fit in this machine's memory, or None.

    The estimate is the settings model's ``memory_bytes()`` (each problem's own arrays); a
    model without one is not checked."""
    method = getattr(settings, "memory_bytes", None)
    available = physical_memory_bytes()
    if method is None or available is None:
        return None
    try:
        needed = method()
    except (AttributeError, TypeError, OverflowError):
        return None
    if needed > available:
        return (
            f"one run needs about {needed / 2**30:.3g} GiB (float64 arrays), more than this "
            f"machine's {available / 2**30:.3g} GiB of memory"
        )
    return None
