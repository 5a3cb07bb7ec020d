"""Smoke test of the distributed benchmark: 2 gloo ranks at tiny sizes, no timing asserts."""

from __future__ import annotations

import json

import pytest

from benchmarks import distributed


def test_quick_run_writes_a_complete_report(tmp_path):
    out = tmp_path / "bench.json"
    distributed.main(["--quick", "--rounds", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert set(rows) == {c.name for c in distributed.candidates()}
    assert rows["torch AdamW"]["ratio_adamw"] == 1.0
    for method in distributed.METHODS:
        for mode in ("replicate", "split"):
            row = rows[f"{method} {mode}"]
            assert row["step_ms"] > 0 and row["ratio_adamw"] > 0
            assert row["state_mib"] > 0
        assert rows[f"{method} split"]["step_over_replicate"] > 0
        assert ("refresh_ms" in rows[f"{method} split"]) == (method != "muon")
    assert rows["kfac local factors"]["step_over_replicate"] > 0
    # The shard keeps each matrix's state on its owner alone (KFAC has no shard row).
    assert "kfac shard" not in rows
    for method in ("shampoo", "soap", "muon"):
        shard, replicate = rows[f"{method} shard"], rows[f"{method} replicate"]
        assert shard["step_over_replicate"] > 0
        assert 0 < shard["state_mib"] < replicate["state_mib"]
    assert {c["check"] for c in report["checks"]} >= {
        "shampoo: split refresh / replicated refresh",
        "kfac: factor all-reduce's share of the step",
    }
    # A period's step times, then each step's wait for KFAC's factor all-reduce (0 for others).
    steps = report["setting"]["refresh_every"]
    period = report["periods_s"]["torch AdamW"][0]
    assert len(period) == 2 * steps and period[steps:] == [0.0] * steps
    assert rows["kfac replicate"]["wait_ms"] > 0
    for method in ("shampoo", "soap", "kfac"):
        split = rows[f"{method} split"]
        assert 0 < split["droppable_mib"] < split["state_mib"]
        assert sum(split["rank_loads"]) == pytest.approx(1.0)
