"""Smoke test of the KFAC-defaults study: ``--quick`` covers every model and configuration."""

from __future__ import annotations

import json
import math

from benchmarks import kfac_defaults


def test_quick_run_reports_every_model_and_configuration(tmp_path):
    out = tmp_path / "kfac_defaults.json"
    kfac_defaults.main(["--quick", "--json", str(out)])
    report = json.loads(out.read_text())
    assert set(report["models"]) == {"cnn", "transformer", "mlp"}
    for name, entry in report["models"].items():
        expected = {c.name for c in kfac_defaults.configs(name)}
        rows = {row["config"]["name"]: row for row in entry["rows"]}
        assert set(rows) == expected
        assert kfac_defaults.kfac_name(*kfac_defaults.OLD_DEFAULTS) in rows
        for row in rows.values():
            summary = row["summary"]
            assert summary["seeds"] == len(row["runs"]) >= 1
            for run in row["runs"]:
                assert run["steps"] == report["steps"]
                assert all(math.isfinite(v) for v in run["train_curve"])
            for key in ("val_loss", "val_accuracy", "final_train_loss", "max_window_loss"):
                assert math.isfinite(summary[key]), (name, row["config"], key)
            assert 0 <= summary["val_accuracy"] <= 1
    names = {r["config"] for r in report["ranking"]}
    assert kfac_defaults.kfac_name(*kfac_defaults.OLD_DEFAULTS) in names
    assert all(math.isfinite(r["score"]) for r in report["ranking"])
    plan = kfac_defaults.diagnostic_plan(1)
    assert len(report["diagnostics"]) == len(plan)
    for row, (section, _, model, config, _) in zip(report["diagnostics"], plan, strict=True):
        assert (row["section"], row["model"], row["config"]["name"]) == (
            section,
            model,
            config.name,
        )
        for key in ("val_loss", "val_accuracy", "final_train_loss", "max_window_loss"):
            assert math.isfinite(row["summary"][key]), (row["model"], row["config"], key)


def test_quick_defaults_section_has_curves_for_every_model_and_a_figure(tmp_path):
    out, figure = tmp_path / "defaults.json", tmp_path / "curves.png"
    kfac_defaults.main(
        ["--quick", "--sections", "defaults", "--json", str(out), "--figure", str(figure)]
    )
    rows = json.loads(out.read_text())["defaults"]
    plan = kfac_defaults.defaults_plan()
    assert [(r["model"], r["config"]["name"]) for r in rows] == [(m, c.name) for m, c in plan]
    for row in rows:
        assert all(math.isfinite(v) for run in row["runs"] for v in run["train_curve"])
    assert figure.stat().st_size > 10_000
