"""Sample sizes given two ways: an absolute ``n`` or ``n_over_d`` (samples per input dimension).

A problem stores one form and derives the other; a config may give either, or both when they
agree (``round(n_over_d · d) == n``). :func:`size_forms` is the ``model_validator(mode="before")``
body both problems share.
"""

from __future__ import annotations

from typing import Any, Literal


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def size_forms(data: Any, d_default: int, stored: Literal["n", "n_over_d"]) -> Any:
    """``data`` (raw settings) with the other size form folded into the ``stored`` one.

    Refuses a non-positive ``n_over_d``, an ``n`` that is not an integer >= 1, and two forms
    that disagree; leaves a bad ``d`` to the field validator of ``d``, which names it."""
    given = "n_over_d" if stored == "n" else "n"
    if not isinstance(data, dict) or given not in data:
        return data
    data = dict(data)
    d = data.get("d", d_default)
    if stored == "n":
        ratio = data.pop("n_over_d")
        if not isinstance(ratio, int | float) or isinstance(ratio, bool) or not ratio > 0:
            raise ValueError(f"n_over_d must be a number > 0, got {ratio!r}")
        size = data.get("n")
    else:
        size = data.pop("n")
        if not _is_int(size) or size < 1:
            raise ValueError(f"n must be an integer >= 1, got {size!r}")
        ratio = data.get("n_over_d")
    if not _is_int(d) or d < 1:
        return data
    if size is not None and ratio is not None and round(ratio * d) != size:
        raise ValueError(
            f"n={size!r} and n_over_d={ratio!r} disagree at d={d} "
            f"(n_over_d gives n={round(ratio * d)}); give one of them"
        )
    # Both given (and agreeing): the stored form is kept as written.
    data.setdefault(stored, round(ratio * d) if stored == "n" else size / d)
    return data
