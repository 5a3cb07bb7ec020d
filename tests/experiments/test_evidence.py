"""Readable evidence: nested dicts as rows, numbers with four significant digits, no -0.000."""

from __future__ import annotations

import math

import numpy as np
import pytest

from layerwise.experiments.evidence import (
    EvidenceRow,
    evidence_rows,
    format_float,
    format_value,
    without_negative_zero,
)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.020308925454132327, "0.02031"),
        (-7.331332131059296e-16, "-7.331e-16"),
        (-0.0, "0"),
        (51.0, "51"),
        (915.5, "915.5"),
        (123456.0, "123456"),
        (1.5e9, "1.5e+09"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (math.nan, "nan"),
    ],
)
def test_format_float(value, text):
    assert format_float(value) == text


def test_format_value_of_booleans_none_numpy_and_lists():
    assert [format_value(v) for v in (True, False, None, np.float64(0.125), np.int64(3))] == [
        "yes",
        "no",
        "—",
        "0.125",
        "3",
    ]
    assert format_value(list(range(11))) == "0, 1, 2, 3, 4, 5, 6, 7, … (3 more)"
    assert format_value([{"a": 1}, {"a": 2.5}]) == "a: 1; a: 2.5"
    assert format_value([]) == "none"


def test_negative_zero_is_unsigned_in_text_but_real_negatives_stay():
    text = "slopes a: -0.000, b: -0.034, c: -0, d: x-0.0, e: -0.0005, f: -0e+00"
    assert without_negative_zero(text) == (
        "slopes a: 0.000, b: -0.034, c: 0, d: x-0.0, e: -0.0005, f: 0e+00"
    )


def test_nested_evidence_becomes_rows_with_paths():
    evidence = {
        "C2-κx": {
            "holds": True,
            "sgd vs kappa_x": {"slope": 0.9619845942467834, "points": {"10": 383.0, "100": 3509.0}},
        },
        "threshold": "|slope| <= 0.1",
        "missing": ["a", "b"],
        "big": {str(i): i for i in range(9)},  # too many for one row: one row per key
        # Groups of small mappings (no scalar of its own): one row per group.
        "pairs": {"a vs b": {"ours": 1.0, "holds": True}, "c vs d": {"ours": 2.5}},
        "traceback": "Traceback (most recent call last): ...",
    }
    rows = evidence_rows(evidence)
    assert rows[:4] == [
        EvidenceRow("C2-κx › holds", "yes"),
        # A record: named scalars and small mappings on one row.
        EvidenceRow("C2-κx › sgd vs kappa_x", "slope 0.962 · points (10: 383, 100: 3509)"),
        EvidenceRow("threshold", "|slope| <= 0.1"),
        EvidenceRow("missing", "a, b"),
    ]
    assert rows[4:13] == [EvidenceRow(f"big › {i}", str(i)) for i in range(9)]
    assert rows[13:] == [
        EvidenceRow("pairs › a vs b", "ours: 1, holds: yes"),
        EvidenceRow("pairs › c vs d", "ours: 2.5"),
    ]
    assert not any("{" in row.value or "traceback" in row.quantity for row in rows)
