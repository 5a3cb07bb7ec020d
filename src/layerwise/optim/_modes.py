"""What every optimizer shares about its mode: the exact / amortized switch (``exact=True``)
and the names of the precisions its per-step products may run in."""

from __future__ import annotations

from typing import Any

import torch


def resolve_mode(
    exact: bool, *, amortized: dict[str, Any], exact_values: dict[str, Any], given: dict[str, Any]
) -> dict[str, Any]:
    """Fill the knobs left as ``None`` in ``given`` from the mode's defaults.

    In exact mode an explicitly given value that contradicts the exact setting is refused, so
    ``exact=True`` always means what it says.
    """
    resolved = dict(given)
    for name, exact_value in exact_values.items():
        value = given.get(name)
        if exact and value is not None and value != exact_value:
            raise ValueError(f"exact=True requires {name}={exact_value!r}; got {name}={value!r}")
        if value is None:
            resolved[name] = exact_value if exact else amortized[name]
    return resolved


#: Precisions the per-step products of a preconditioner may run in, by name
#: (``precondition_dtype`` of Shampoo / SOAP / KFAC, ``ns_dtype`` of Muon).
COMPUTE_DTYPES = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def compute_dtype(name: str | None, *, knob: str) -> torch.dtype | None:
    """The dtype called ``name`` (``None``: the parameters' own), or a ValueError naming
    ``knob`` and the choices."""
    if name is None:
        return None
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"Invalid {knob}: {name!r} (one of {sorted(COMPUTE_DTYPES)} or None)")
    return COMPUTE_DTYPES[name]
