"""The report: figures, claims decided from the stored table, report.md/html, claims.json;
the header, table of contents, rules, evidence, captions and settings of the page."""

from __future__ import annotations

import base64
import json
import os
import re

import numpy as np
import pandas as pd
import pytest
from experiment_toys import expected_value
from report_dom import claim_rows, find_all, read

from layerwise.experiments.report import VERDICT_WORDS

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


def test_report_md_has_the_header_claims_table_run_time_and_figures(reported):
    out, config, _ = reported
    text = (out / "report.md").read_text()
    assert "On the Concurrence of Layer-wise Preconditioning Methods" in text
    assert "ICML 2025" in text and "Zhang, Moniri" in text
    assert "| Variant | **full** |" in text  # the fixture runs without --quick
    assert f"| Seeds | {len(config.seeds)} seeds per experiment |" in text
    assert "**3 claims: holds: 1, does not hold: 1, undecided: 1**" in text
    assert "**How verdicts are decided.**" in text
    # Machine and code from the stored invocation record.
    record = json.loads((out / "toy" / "config.json").read_text())
    machine = record["machine"]
    assert f"architecture {machine['architecture']}, cpus {os.cpu_count()}" in text
    assert f"torch {record['versions']['torch']}" in text
    commit = record["git_commit"]
    assert f"| Code | layerwise {record['versions']['layerwise']}, commit {commit}" in text
    assert ("+dirty: the source tree had uncommitted changes" in text) == commit.endswith("+dirty")
    rows = re.findall(r"^\| \[(T\d)\]\(#([\w-]+)\) \| (.*?) \| .*? \| \*\*(.*?)\*\* \|", text, re.M)
    assert [(i, verdict) for i, _, _, verdict in rows] == [
        ("T1", "holds"),
        ("T2", "does not hold"),
        ("T3", "undecided"),
    ]
    assert "runs: 24 of 24 finished, 0 failed; 72 stored rows; 3 seeds (full)" in text
    assert re.search(r"run time: [0-9.]+ s wall for the latest invocation", text)
    assert "![Figure 1: toy, values](figures/toy-values.png)" in text
    assert "figure or table broken not drawn: ZeroDivisionError: no figure possible" in text


def test_every_in_page_link_resolves_in_html_and_markdown(reported):
    out, _, written = reported
    page = read((out / "report.html").read_text())
    targets = {link.attrs["href"][1:] for link in page.links}
    assert targets <= set(page.by_id), targets - set(page.by_id)
    # The table of contents: claims, claim details, every experiment section.
    contents = page.by_id["contents"]
    toc = {a.attrs["href"] for a in find_all(contents, "a")}
    assert {"#claims", "#claim-details", "#experiments", "#experiment-toy"} <= toc
    assert {f"#{claim.anchor}" for claim in written.view.claims} <= toc
    text = (out / "report.md").read_text()
    md_targets = set(re.findall(r"\]\(#([\w-]+)\)", text))
    md_anchors = set(re.findall(r'<a id="([\w-]+)"></a>', text))
    assert md_targets and md_targets <= md_anchors, md_targets - md_anchors


def test_each_claim_has_its_rule_summary_evidence_and_figure_link(reported):
    out, config, _ = reported
    page = read((out / "report.html").read_text())
    claims = {a.attrs["data-claim"]: a for a in find_all(page.root, "article", "claim")}
    assert sorted(claims) == ["T1", "T2", "T3"]
    rule = find_all(claims["T1"], "p", "rule")[0].text
    assert "holds when the mean of value over every stored row is below 100.0" in rule
    # A claim registered without a rule says so, visibly.
    missing = find_all(find_all(claims["T3"], "p", "rule")[0], "span", "missing")
    assert [span.text for span in missing] == ["rule not stated"]
    links = {i: find_all(a, "a", "figure-link")[0].attrs["href"] for i, a in claims.items()}
    assert links == {"T1": "#fig-toy-values", "T2": "#fig-toy-saved", "T3": "#fig-toy-values"}
    for claim in claims.values():
        (evidence,) = find_all(claim, "table", "evidence")
        cells = [td.text for td in find_all(evidence, "td")]
        assert cells and not any("{" in cell or "-0.000" in cell for cell in cells)
    # Numbers with four significant digits, integral floats as integers.
    t2 = [td.text for td in find_all(find_all(claims["T2"], "table", "evidence")[0], "td")]
    assert t2 == ["mean_value", f"{independent_mean_value(config):.4g}", "bound", "1"]
    # The error's traceback is for the log; the message is the evidence.
    t3 = [td.text for td in find_all(claims["T3"], "td")]
    assert t3 == ["error", "ZeroDivisionError: no decision possible"]


def test_every_figure_has_its_caption_and_settings_are_folded(reported):
    out, _, written = reported
    (toy,) = written.sections
    page = read((out / "report.html").read_text())
    section = page.by_id["experiment-toy"]
    captions = {
        figure.attrs["id"]: find_all(figure, "figcaption")[0].text
        for figure in find_all(section, "figure")
    }
    assert set(captions) == {"fig-toy-values", "fig-toy-saved"}
    assert captions["fig-toy-values"].endswith(toy.experiment.captions["values"])
    assert captions["fig-toy-saved"].endswith("caption not stated")
    (details,) = find_all(section, "details", "settings")
    assert find_all(details, "summary")[0].text == "Settings"
    assert "kill_marker: ''" in find_all(details, "pre")[0].text
    assert not find_all(section, "pre")[1:]  # no other settings block, nothing unfolded
    text = (out / "report.md").read_text()
    folded = text[text.index("<details><summary>Settings</summary>") :]
    assert "kappa:\n  - 1\n  - 10" in folded and "points: 4 grid point(s)" in folded
    assert "beta_two:\n    method: beta\n    lr: 0.5\n    repeats: 2" in folded
    assert folded.rstrip().endswith("</details>")
    assert text.index("figures/toy-values.png") < text.index("<details><summary>Settings")


def test_html_and_markdown_say_the_same_claims_and_verdicts(reported):
    out, _, written = reported
    html_rows = claim_rows((out / "report.html").read_text())
    text = (out / "report.md").read_text()
    md_rows = re.findall(r"^\| \[([\w-]+)\]\(#[\w-]+\) \| .*? \| \*\*(.*?)\*\* \|", text, re.M)
    expected = [(c.id, VERDICT_WORDS[c.verdict.holds]) for c in written.claims]
    assert html_rows == md_rows == expected


def test_report_html_is_self_contained_escaped_and_has_no_machine_path(reported, tmp_path):
    out, _, _ = reported
    page = (out / "report.html").read_text()
    embedded = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)">', page)
    assert len(embedded) == 2
    on_disk = {
        (out / "figures" / f"{n}.png").read_bytes() for n in ("toy-values", "toy-self-saved")
    }
    assert {base64.b64decode(data) for data in embedded} == on_disk
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # nothing loaded from elsewhere
    assert "cannot be decided &lt;yet&gt;" in page and "<yet>" not in page
    for text in (page, (out / "report.md").read_text()):
        assert str(tmp_path) not in text


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


def test_a_quick_experiment_with_a_rising_loss_is_flagged_in_the_header(reported, register):
    from layerwise.experiments import store
    from layerwise.experiments.registry import Experiment
    from layerwise.experiments.report import write_report

    out, _, _ = reported
    register(Experiment(name="toy-curves", problem="toy", description="curves", run=print))
    rows = [
        dict(method=method, seed=seed, iteration=step, train_loss=loss, distance=1.0 / (step + 1))
        for seed in (0, 1)
        for step in range(3)
        for method, loss in (("up", 1.0 + step), ("down", 1.0 / (step + 1)))
    ]
    store.write_run(out, "toy-curves", "r1", pd.DataFrame(rows), {"seconds": 0.5})
    record = {
        "source": "toy-curves.yaml (--quick)",
        "run_ids": ["r1"],
        "resolved": {"seeds": [0, 1]},
    }
    store.write_invocation(out, "toy-curves", record)
    written = write_report(out)
    header = written.view.header
    assert header.variant == "mixed: 1 full, 1 quick"
    assert header.seeds == "2 to 3 seeds per experiment (each listed below)"
    sentence = (
        "up: median training loss rises from 1 to 3 (iteration 0 to 2) while distance "
        "falls from 1 to 0.3333"
    )
    assert [anomaly.sentence for anomaly in header.anomalies] == [sentence]
    page = read((out / "report.html").read_text())
    assert sentence in page.by_id["anomalies"].text
    assert sentence in page.by_id["experiment-toy-curves"].text
    assert f"{sentence}." in (out / "report.md").read_text()


def test_the_report_prints_no_numpy_warning_on_diverged_rows(reported, register, recwarn):
    """Quantiles over infinite losses (a diverged seed) are meant: no RuntimeWarning spam."""
    from layerwise.experiments import plots, store
    from layerwise.experiments.registry import Experiment
    from layerwise.experiments.report import write_report

    def quartile_figure(table):
        table["train_loss"].quantile(0.75)  # numpy warns on inf - inf outside np.errstate
        return plots.new_figure()[0]

    out, _, _ = reported
    register(
        Experiment(
            name="toy-diverged",
            problem="toy",
            description="diverged",
            run=print,
            figures={"quartile": quartile_figure},
        )
    )
    rows = pd.DataFrame({"method": "a", "seed": [0, 1, 2], "train_loss": [np.inf, np.inf, 1.0]})
    store.write_run(out, "toy-diverged", "r1", rows, {"seconds": 0.1})
    store.write_invocation(out, "toy-diverged", {"source": "toy.yaml", "run_ids": ["r1"]})
    written = write_report(out)
    assert [name for name, _ in written.sections[-1].figures] == ["quartile"]
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_every_registered_claim_states_its_rule_and_every_figure_its_caption():
    from layerwise.experiments import registry

    experiments = registry.experiments()
    no_rule = [
        f"{name}: {claim.id}"
        for name, experiment in experiments.items()
        for claim in experiment.claims
        if not claim.rule.strip()
    ]
    assert not no_rule, f"claims without a rule (Claim.rule): {no_rule}"
    bad_figure = [
        f"{name}: {claim.id} -> {claim.figure!r}"
        for name, experiment in experiments.items()
        for claim in experiment.claims
        if claim.figure and claim.figure not in experiment.figures
    ]
    assert not bad_figure, f"claims naming a figure their experiment lacks: {bad_figure}"
    no_caption = [
        f"{name}: {figure}"
        for name, experiment in experiments.items()
        for figure in experiment.figures
        if not experiment.captions.get(figure, "").strip()
    ]
    assert not no_caption, f"figures without a caption (Experiment.captions): {no_caption}"


def test_several_commits_are_counted_in_the_header_and_dirty_is_explained():
    from layerwise.experiments.report_view import _code_lines

    def record(commit):
        return {"versions": {"layerwise": "0.1.0"}, "git_commit": commit}

    one = "a" * 40
    assert _code_lines([record(one), record(one)]) == [f"layerwise 0.1.0, commit {one}"]
    lines = _code_lines([record(one), record("b" * 40 + "+dirty"), record(one)])
    assert lines[0] == (
        "layerwise 0.1.0; 2 commits: aaaaaaaaaaaa (2 experiments), bbbbbbbbbbbb+dirty "
        "(1 experiment)"
    )
    assert lines[2].startswith("+dirty: the source tree had uncommitted changes")
    assert _code_lines([{}]) == ["layerwise unknown version"]


def test_machine_paths_in_free_text_are_made_relative_or_cut_to_the_file_name(tmp_path):
    from layerwise.experiments.report_view import display_source, without_machine_paths

    out = tmp_path / "out"
    assert without_machine_paths(f"OSError: {out}/toy/runs/a.parquet", out) == (
        "OSError: ./toy/runs/a.parquet"
    )
    assert without_machine_paths("in /usr/lib/python3/x.py, line 3", out) == "in x.py, line 3"
    kept = "n/d = 8, 1/ε, ms / step, https://example.org/a/b"
    assert without_machine_paths(kept, out) == kept
    assert display_source("/opt/pkg/configs/linrep-kappa.yaml (--quick)", out) == (
        "linrep-kappa.yaml (--quick)"
    )
    assert display_source(f"{out}/configs/mine.yaml", out) == "configs/mine.yaml"
