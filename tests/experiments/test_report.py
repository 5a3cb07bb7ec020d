"""The report: figures, claims decided from the stored table, report.md/html, claims.json."""

from __future__ import annotations

import base64
import json
import re

import pytest
from experiment_toys import expected_value

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def independent_mean_value(config) -> float:
    """The mean of `value` over every row the config produces, from the closed form."""
    values = [
        expected_value(point.settings, seed, spec.name, spec.params, step)
        for point in config.points
        for spec in config.methods.values()
        for seed in config.seeds
        for step in range(3)
    ]
    return sum(values) / len(values)


def test_claims_json_decides_each_claim_from_the_stored_table(reported):
    out, config, _ = reported
    claims = json.loads((out / "claims.json").read_text())
    assert [claim["id"] for claim in claims] == ["T1", "T2", "T3"]
    for claim in claims:
        assert set(claim) == {"id", "claim", "experiment", "holds", "evidence"}
        assert claim["experiment"] == "toy"
    mean = independent_mean_value(config)
    assert 1.0 < mean < 100.0  # between the two bounds: T1 holds, T2 does not
    t1, t2, t3 = claims
    assert (t1["holds"], t2["holds"], t3["holds"]) == (True, False, None)
    assert t1["evidence"]["mean_value"] == pytest.approx(mean, rel=1e-12)
    assert t2["evidence"] == {"mean_value": t1["evidence"]["mean_value"], "bound": 1.0}
    assert t3["evidence"]["error"] == "ZeroDivisionError: no decision possible"


def test_figures_are_written_as_png_and_pdf_and_broken_ones_are_listed(reported):
    out, _, written = reported
    figures = out / "figures"
    for name in ("toy-values", "toy-self-saved"):
        assert (figures / f"{name}.png").read_bytes().startswith(PNG_SIGNATURE)
        assert (figures / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    (section,) = written.sections
    assert section.figure_errors == [("broken", "ZeroDivisionError: no figure possible")]


def test_report_md_has_the_claims_table_settings_run_time_and_figures(reported):
    out, _, _ = reported
    text = (out / "report.md").read_text()
    assert "3 claims: holds: 1, does not hold: 1, undecided: 1" in text
    assert "| T1 | the mean value is below 100.0 | toy | **holds** |" in text
    assert "| T2 | the mean value is below 1.0 | toy | **does not hold** |" in text
    assert "| T3 | cannot be decided | toy | **undecided** | undecided: ZeroDivisionError" in text
    assert "runs: 24 of 24 finished, 0 failed; 72 rows" in text
    assert re.search(r"run time: [0-9.]+ s wall for the latest invocation", text)
    settings = text[text.index("Settings (resolved):") :]
    assert "kill_marker: ''" in settings  # defaults are shown
    assert "kappa:\n  - 1\n  - 10" in settings and "points: 4 grid point(s)" in settings
    assert "beta_two:\n    method: beta\n    lr: 0.5\n    repeats: 2" in settings
    assert "![toy: values](figures/toy-values.png)" in text
    assert "figure `broken` not drawn: ZeroDivisionError: no figure possible" in text


def test_report_html_is_self_contained_with_every_figure_embedded(reported):
    out, _, _ = reported
    page = (out / "report.html").read_text()
    embedded = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)">', page)
    assert len(embedded) == 2
    on_disk = {
        (out / "figures" / f"{n}.png").read_bytes() for n in ("toy-values", "toy-self-saved")
    }
    assert {base64.b64decode(data) for data in embedded} == on_disk
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing loaded from elsewhere
    rows = re.findall(r'<tr class="(holds|fails|undecided)"><td>(T\d)</td>', page)
    assert rows == [("holds", "T1"), ("fails", "T2"), ("undecided", "T3")]
    assert '<table id="claims">' in page


def test_report_uses_the_runs_of_the_latest_invocation(reported, write_config):
    from layerwise.experiments.config import load_config
    from layerwise.experiments.executors import InProcessExecutor
    from layerwise.experiments.report import write_report
    from layerwise.experiments.runner import run_experiment

    out, _, _ = reported
    fewer = load_config(write_config(), overrides=["seeds=1", "grid.scale=[1.0]"])
    with InProcessExecutor() as executor:
        run_experiment(fewer, out, executor, progress=False)
    claims = {claim.id: claim for claim in write_report(out).claims}
    assert claims["T1"].verdict.evidence["mean_value"] == pytest.approx(
        independent_mean_value(fewer), rel=1e-12
    )
