"""Smoke test of the optimizer-step benchmark: tiny sizes, every code path, no timing asserts."""

from __future__ import annotations

import json

import torch
from benchmarks.candidates import Setting, build_mlp, make_batches
from benchmarks.floors import FloorWork
from benchmarks.timing import Block, Canary, Timed, paired_ratio

from benchmarks import optimizer_step


def test_quick_run_writes_a_complete_report(tmp_path):
    out = tmp_path / "bench.json"
    optimizer_step.main(["--quick", "--no-peers", "--json", str(out)])
    report = json.loads(out.read_text())
    sections = {s["section"] for s in report["sections"]}
    assert sections == {"main", "width", "batch"}
    main = next(s for s in report["sections"] if s["section"] == "main")
    rows = {row["name"]: row for row in main["rows"]}
    for name in ("torch AdamW", "layerwise Shampoo", "layerwise SOAP", "layerwise Muon"):
        assert rows[name]["error"] is None, rows[name]
        assert rows[name]["median_ms"] > 0
        assert rows[name]["state_mib"] > 0
    assert rows["torch AdamW"]["ratio_adamw"] == 1.0
    with_floor = [
        "layerwise Shampoo",
        "layerwise Shampoo fp32",
        "layerwise SOAP",
        "layerwise SOAP fp32",
        "layerwise Muon",
        "layerwise KFAC",
        "layerwise KFAC fp32",
    ]
    for name in with_floor:
        assert rows[name]["error"] is None, rows[name]
        assert rows[name]["floor"] == "floor " + name.removeprefix("layerwise ")
        assert rows[name]["ratio_floor"] > 0
    assert "floor" not in rows["layerwise Muon fp32"]  # float32 Muon is its own floor (README)
    batch = next(s for s in report["sections"] if s["section"] == "batch")
    batch_rows = {row["name"]: row for row in batch["rows"]}
    assert batch_rows["layerwise KFAC"]["median_ms"] > 0
    profile = main["profiles"]["layerwise Shampoo"]
    assert {"statistics", "decompositions", "application", "optimizer_step"} <= set(profile)
    assert (
        "layerwise Muon" in main["profiles"]
        and "statistics" not in main["profiles"]["layerwise Muon"]
    )


def test_paired_ratio_uses_rounds_where_both_blocks_were_kept():
    mine, theirs = Timed("a"), Timed("b")
    mine.kept = [Block(1, 0, [2.0]), Block(2, 2, [9.0]), Block(3, 4, [3.0])]
    theirs.kept = [Block(1, 1, [1.0]), Block(3, 5, [1.0])]
    assert paired_ratio(mine, theirs) == 2.5  # rounds 1 and 3: ratios 2 and 3


def test_canary_marks_only_outliers_slow():
    canary = Canary()
    canary.times = [1.0, 1.1, 0.9, 5.0, 1.0]
    assert canary.slow() == [False, False, False, True, False]


def test_floor_work_runs_for_every_method():
    setting = Setting(width=8, batch=4, refresh_every=2)
    model = build_mlp(setting, seed=0)
    x, y = make_batches(setting, seed=0)[0]
    import torch.nn.functional as F

    F.cross_entropy(model(x), y).backward()
    for method in ("shampoo", "soap", "muon", "kfac"):
        for exact, dtype in (
            (False, torch.float32),
            (False, torch.bfloat16),
            (True, torch.float32),
        ):
            work = FloorWork(method, setting, exact=exact, dtype=dtype)
            work(model, 1)
            work(model, 2)
