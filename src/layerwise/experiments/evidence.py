"""Readable evidence: a claim's numbers (nested dicts of scalars) as rows of a small table.

A verdict's ``evidence`` is JSON-like data made for machines (``claims.json``). The report shows
it to a reader as rows ``(quantity, value)``: nested mappings become rows whose quantity is the
path of keys (``"C2-κx › sgd vs kappa_x"``); a small mapping of scalars is one row
(``"1: 51, 10: 54, 100: 56"``), and so is a *record*, a few named scalars or small mappings
(``"slope 0.962 · points (10: 383, 100: 3509)"``); numbers get :data:`SIGNIFICANT_DIGITS`
significant digits, never a negative zero; booleans read yes/no; long lists are cut to
:data:`LIST_ITEMS` items.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SIGNIFICANT_DIGITS = 4
#: A mapping of at most this many scalars is shown on one row.
INLINE_ITEMS = 8
#: A record (named scalars or small mappings of scalars) of at most this many items is one row.
RECORD_ITEMS = 6
#: A list shows at most this many items, then how many more there are.
LIST_ITEMS = 8
PATH_SEPARATOR = " › "
#: Keys never shown (a decision's traceback is for the log, not for the reader).
HIDDEN_KEYS = frozenset({"traceback"})

# A negative zero as text ("-0", "-0.000", "-0e+00"), not part of a longer number or word.
_NEGATIVE_ZERO = re.compile(r"(?<![\w.])-(0(?:\.0+)?(?:e[+-]?0+)?)(?![\w.])")


@dataclass(frozen=True)
class EvidenceRow:
    quantity: str
    value: str


def format_value(value: Any) -> str:
    """One scalar as a reader wants it (see the module docstring)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, Mapping):
        return inline_mapping(value)
    if isinstance(value, list | tuple):
        return format_list(value)
    return without_negative_zero(str(value))


def format_float(value: float) -> str:
    """``value`` with :data:`SIGNIFICANT_DIGITS` significant digits; integral values as
    integers; no negative zero; ``inf``/``nan`` spelt so."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"  # also -0.0
    if value.is_integer() and abs(value) < 10**SIGNIFICANT_DIGITS * 100:
        return str(int(value))
    return without_negative_zero(f"{value:.{SIGNIFICANT_DIGITS}g}")


def without_negative_zero(text: str) -> str:
    """``text`` with every negative zero (``-0.000``, written by a rounding format) unsigned."""
    return _NEGATIVE_ZERO.sub(r"\1", text)


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, Mapping | list | tuple)


def _is_small_mapping(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) <= INLINE_ITEMS
        and all(_is_scalar(item) for item in value.values())
    )


def _is_record(value: Mapping[str, Any]) -> bool:
    """A few named scalars, perhaps with small mappings; a mapping of mappings only is a
    grouping (one row per group), not a record."""
    items = list(value.values())
    return (
        len(items) <= RECORD_ITEMS
        and any(_is_scalar(item) for item in items)
        and all(_is_scalar(item) or _is_small_mapping(item) for item in items)
    )


def record_text(record: Mapping[str, Any]) -> str:
    """``slope 0.962 · points (10: 383, 100: 3509)``."""
    return " · ".join(
        f"{key} ({inline_mapping(item)})"
        if isinstance(item, Mapping)
        else f"{key} {format_value(item)}"
        for key, item in record.items()
    )


def inline_mapping(mapping: Mapping[str, Any]) -> str:
    if not mapping:
        return "none"
    return ", ".join(f"{key}: {format_value(item)}" for key, item in mapping.items())


def format_list(items: Sequence[Any]) -> str:
    if not items:
        return "none"
    separator = "; " if any(isinstance(item, Mapping) for item in items) else ", "
    shown = separator.join(format_value(item) for item in items[:LIST_ITEMS])
    if len(items) > LIST_ITEMS:
        shown += f"{separator}… ({len(items) - LIST_ITEMS} more)"
    return shown


def evidence_rows(evidence: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[EvidenceRow]:
    """The rows of ``evidence`` (module docstring), in the evidence's own order."""
    rows: list[EvidenceRow] = []
    for key, value in evidence.items():
        if key in HIDDEN_KEYS:
            continue
        path = (*prefix, str(key))
        if _is_small_mapping(value):
            rows.append(EvidenceRow(PATH_SEPARATOR.join(path), inline_mapping(value)))
        elif isinstance(value, Mapping) and _is_record(value):
            rows.append(EvidenceRow(PATH_SEPARATOR.join(path), record_text(value)))
        elif isinstance(value, Mapping):
            rows.extend(evidence_rows(value, path))
        else:
            rows.append(EvidenceRow(PATH_SEPARATOR.join(path), format_value(value)))
    return rows
