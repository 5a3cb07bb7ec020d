"""The exact / amortized switch shared by every optimizer (``exact=True``)."""

from __future__ import annotations

from typing import Any


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
