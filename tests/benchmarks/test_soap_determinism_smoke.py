"""Smoke test of the SOAP determinism benchmark: tiny sizes, no peers, nothing about time."""

from __future__ import annotations

import json

from benchmarks import soap_determinism


def test_quick_run_writes_a_complete_report(tmp_path):
    out = tmp_path / "soap.json"
    soap_determinism.main(["--quick", "--no-peers", "--rounds", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert set(rows) == {name for name, *_ in soap_determinism.candidates(peers=False)[0]}
    for row in rows.values():
        assert row["finite"] and row["relative_change"] >= 0 and row["split_gap"] >= 0
    # The round-off bases are what the stable ones remove: orders of magnitude apart.
    assert rows["SOAP, round-off bases"]["relative_change"] > 1e3 * rows["SOAP"]["relative_change"]
    assert [row["n"] for row in report["refresh"]] == [64]
    assert report["refresh"][0]["stable_over_eigh"] > 0
