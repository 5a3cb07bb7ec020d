"""The report: figures, and a decision on every claim, from stored results only.

``write_report(DIR)`` looks at every experiment folder under ``DIR`` (one with a stored
``config.json``), loads the rows of the runs of its latest invocation, draws each of the
experiment's figures (PNG and PDF under ``DIR/figures/``, named ``<experiment>-<figure>``),
decides each of its claims, and writes

- ``DIR/claims.json``: a list of ``{"id", "claim", "experiment", "holds", "evidence"}`` with
  ``holds`` true, false or null (undecided);
- ``DIR/report.md``: the claims table, then per experiment its description, run counts and
  failures, run time, settings (the stored resolved config) and figures;
- ``DIR/report.html``: the same, self-contained (figures embedded as base64 PNG).

A claim whose decide function raises is undecided, with the error as its evidence; a figure
function that raises is listed with its error. Neither stops the report.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import inspect
import json
import re
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from matplotlib.figure import Figure

from layerwise.experiments import plots, registry, store
from layerwise.experiments.registry import Claim, Experiment, Verdict

FIGURES = "figures"
VERDICT_WORDS = {True: "holds", False: "does not hold", None: "undecided"}


@dataclass(frozen=True)
class ClaimResult:
    id: str
    statement: str
    experiment: str
    verdict: Verdict

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "claim": self.statement,
            "experiment": self.experiment,
            "holds": self.verdict.holds,
            "evidence": store.to_json(self.verdict.evidence),
        }


@dataclass
class ExperimentSection:
    """What the report says about one stored experiment."""

    name: str
    record: Mapping[str, Any]
    experiment: Experiment | None
    rows: int = 0
    runs_finished: int = 0
    runs_total: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    compute_seconds: float = 0.0
    figures: list[tuple[str, Path]] = field(default_factory=list)  # (name, PNG path)
    figure_errors: list[tuple[str, str]] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    claims: list[ClaimResult] = field(default_factory=list)


def decide(claim: Claim, experiment: str, table: pd.DataFrame) -> ClaimResult:
    """Decide one claim; an exception makes it undecided with the error as evidence."""
    try:
        if table.empty:
            raise ValueError("no stored rows")
        verdict = claim.decide(table)
        holds = verdict.holds
        if holds is not None:
            holds = bool(holds)  # numpy booleans are not JSON
        verdict = Verdict(holds=holds, evidence=verdict.evidence, summary=verdict.summary)
    except Exception as error:
        # Deliberately broad: one broken decision must not hide the others.
        message = f"{type(error).__name__}: {error}"
        verdict = Verdict(
            holds=None,
            evidence={"error": message, "traceback": traceback.format_exc(limit=3)},
            summary=f"undecided: {message}",
        )
    return ClaimResult(claim.id, claim.statement, experiment, verdict)


def draw(
    function: Callable[..., Any], table: pd.DataFrame, figure_dir: Path, name: str
) -> list[Path]:
    """Call a figure function and save what it returns; return the written paths.

    A figure function takes the table (or ``(table, figure_dir)``) and returns a matplotlib
    ``Figure`` (saved here as ``name``.png/.pdf), or the paths of files it wrote itself.
    """
    takes_dir = len(inspect.signature(function).parameters) >= 2
    result = function(table, figure_dir) if takes_dir else function(table)
    if isinstance(result, Figure):
        return plots.save_figure(result, figure_dir, name)
    if isinstance(result, str | Path):
        return [Path(result)]
    if isinstance(result, Sequence):
        return [Path(path) for path in result]
    raise TypeError(f"figure function returned {type(result).__name__}, not a Figure or paths")


def build(out_dir: str | Path) -> list[ExperimentSection]:
    """Load, draw and decide every stored experiment under ``out_dir``."""
    out_dir = Path(out_dir)
    registered = registry.experiments()
    figure_dir = out_dir / FIGURES
    sections = []
    for name in store.stored_experiments(out_dir):
        record = store.read_invocation(out_dir, name) or {}
        section = ExperimentSection(name=name, record=record, experiment=registered.get(name))
        run_ids = set(record.get("run_ids") or store.finished_run_ids(out_dir, name))
        finished = store.finished_run_ids(out_dir, name) & run_ids
        section.runs_total, section.runs_finished = len(run_ids), len(finished)
        section.failures = [
            failure
            for failure in store.read_failures(out_dir, name)
            if failure["run_id"] in run_ids
        ]
        section.compute_seconds = sum(
            float(store.run_metadata(out_dir, name, run_id).get("seconds", 0.0))
            for run_id in finished
        )
        table = store.load(out_dir, name, run_ids)
        section.rows = len(table)
        if section.experiment is not None:
            for figure_name, function in section.experiment.figures.items():
                if table.empty:
                    section.figure_errors.append((figure_name, "no stored rows"))
                    continue
                try:
                    paths = draw(function, table, figure_dir, f"{name}-{figure_name}")
                except Exception as error:
                    # Deliberately broad: a broken figure is reported, the rest goes on.
                    section.figure_errors.append((figure_name, f"{type(error).__name__}: {error}"))
                    continue
                section.figures += [(figure_name, p) for p in paths if p.suffix == ".png"]
            section.claims = [decide(claim, name, table) for claim in section.experiment.claims]
            for table_name, function in section.experiment.tables.items():
                try:
                    section.tables.append((table_name, function(table)))
                except Exception as error:
                    # Deliberately broad, as for figures: reported, the rest goes on.
                    section.figure_errors.append((table_name, f"{type(error).__name__}: {error}"))
        sections.append(section)
    return sections


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def all_claims(sections: Sequence[ExperimentSection]) -> list[ClaimResult]:
    claims = [claim for section in sections for claim in section.claims]
    return sorted(claims, key=lambda claim: (_natural_key(claim.id), claim.experiment))


@dataclass(frozen=True)
class WrittenReport:
    paths: Mapping[str, Path]  # "claims", "markdown", "html"
    claims: Sequence[ClaimResult]
    sections: Sequence[ExperimentSection]


def write_report(out_dir: str | Path) -> WrittenReport:
    """Write ``claims.json``, ``report.md`` and ``report.html`` under ``out_dir``."""
    out_dir = Path(out_dir)
    sections = build(out_dir)
    claims = all_claims(sections)
    generated = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    paths = {
        "claims": out_dir / "claims.json",
        "markdown": out_dir / "report.md",
        "html": out_dir / "report.html",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    paths["claims"].write_text(json.dumps([c.as_json() for c in claims], indent=2) + "\n")
    paths["markdown"].write_text(render_markdown(sections, claims, out_dir, generated))
    paths["html"].write_text(render_html(sections, claims, generated))
    return WrittenReport(paths=paths, claims=claims, sections=sections)


# --------------------------------------------------------------------------------------------
# Rendering


def _evidence_text(evidence: Mapping[str, Any]) -> str:
    shown = {key: value for key, value in evidence.items() if key != "traceback"}
    return json.dumps(store.to_json(shown), separators=(", ", ": "))


def _settings_yaml(record: Mapping[str, Any]) -> str:
    resolved = dict(record.get("resolved") or {})
    # The grid as configured is what a reader wants; the resolved points are only counted.
    if "points" in resolved:
        resolved["points"] = f"{len(resolved['points'])} grid point(s)"
    return yaml.safe_dump(store.to_json(resolved), sort_keys=False, width=100).strip()


def _facts(section: ExperimentSection) -> list[str]:
    record = section.record
    counts = record.get("counts") or {}
    versions = record.get("versions") or {}
    facts = [
        f"runs: {section.runs_finished} of {section.runs_total} finished, "
        f"{len(section.failures)} failed; {section.rows} rows",
        f"run time: {record.get('wall_seconds', 'unknown')} s wall for the latest invocation "
        f"({counts.get('done', 0)} runs executed, {counts.get('skipped', 0)} already finished); "
        f"{section.compute_seconds:.1f} s summed over the stored runs",
        f"started {record.get('started_at')}, finished {record.get('finished_at')}; "
        f"executor {record.get('executor')}, device {record.get('device')}",
        f"config {record.get('source')}; git commit {record.get('git_commit')}",
        "versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()),
    ]
    if record.get("command"):
        facts.append("command: " + " ".join(record["command"]))
    if section.experiment is None:
        facts.append("this experiment is not registered in this build: no figures or claims")
    return facts


def _tally(claims: Sequence[ClaimResult]) -> str:
    counts = {word: 0 for word in VERDICT_WORDS.values()}
    for claim in claims:
        counts[VERDICT_WORDS[claim.verdict.holds]] += 1
    return f"{len(claims)} claims: " + ", ".join(f"{word}: {n}" for word, n in counts.items())


def _markdown_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> list[str]:
    """``frame`` as the lines of a Markdown table (cells as strings)."""
    lines = ["| " + " | ".join(_markdown_cell(str(c)) for c in frame.columns) + " |"]
    lines.append("|" + "---|" * len(frame.columns))
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_markdown_cell(str(v)) for v in row) + " |")
    return lines


def render_markdown(
    sections: Sequence[ExperimentSection],
    claims: Sequence[ClaimResult],
    out_dir: Path,
    generated: str,
) -> str:
    lines = [
        "# layerwise report",
        "",
        f"Generated {generated} from the results stored in this folder.",
        "",
        "## Claims",
        "",
        _tally(claims),
        "",
        "| id | claim | experiment | verdict | evidence |",
        "|---|---|---|---|---|",
    ]
    for claim in claims:
        cells = [
            claim.id,
            claim.statement,
            claim.experiment,
            f"**{VERDICT_WORDS[claim.verdict.holds]}**",
            f"{claim.verdict.summary} `{_evidence_text(claim.verdict.evidence)}`",
        ]
        lines.append("| " + " | ".join(_markdown_cell(cell) for cell in cells) + " |")
    if not claims:
        lines.append("| | no claims decided | | | |")
    lines += ["", "## Experiments", ""]
    for section in sections:
        lines += [f"### {section.name}", ""]
        if section.experiment is not None:
            lines += [section.experiment.description, ""]
        lines += [f"- {fact}" for fact in _facts(section)]
        for failure in section.failures:
            lines.append(f"- failed run `{failure['run_id']}`: {failure.get('error', '')}")
        for figure_name, error in section.figure_errors:
            lines.append(f"- figure `{figure_name}` not drawn: {error}")
        lines += [
            "",
            "Settings (resolved):",
            "",
            "```yaml",
            _settings_yaml(section.record),
            "```",
            "",
        ]
        for figure_name, path in section.figures:
            relative = path.relative_to(out_dir) if path.is_relative_to(out_dir) else path
            lines += [f"![{section.name}: {figure_name}]({relative.as_posix()})", ""]
        for table_name, frame in section.tables:
            lines += [f"{table_name}:", "", *markdown_table(frame), ""]
    return "\n".join(lines) + "\n"


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #ccc; padding: 0.35rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.verdict { font-weight: bold; white-space: nowrap; }
tr.holds td.verdict { color: #1a7f37; }
tr.fails td.verdict { color: #cf222e; }
tr.undecided td.verdict { color: #9a6700; }
code, pre { background: #f6f8fa; font-size: 0.85rem; }
pre { padding: 0.6rem; overflow-x: auto; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; }
"""

# Records in the page whether every embedded figure decoded (read by the browser test).
_IMAGE_CHECK = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; });
  var check = document.getElementById("image-check");
  check.setAttribute("data-loaded", String(loaded.length));
  check.setAttribute("data-total", String(images.length));
  check.textContent = loaded.length + " of " + images.length + " figures loaded";
});
"""

_ROW_CLASS = {True: "holds", False: "fails", None: "undecided"}


def render_html(
    sections: Sequence[ExperimentSection], claims: Sequence[ClaimResult], generated: str
) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>layerwise report</title>",
        f"<style>{_STYLE}</style>",
        f"<script>{_IMAGE_CHECK}</script>",
        "</head><body>",
        "<h1>layerwise report</h1>",
        f"<p>Generated {e(generated)} from the stored results. "
        '<span id="image-check" data-loaded="" data-total=""></span></p>',
        "<h2>Claims</h2>",
        f"<p>{e(_tally(claims))}</p>",
        '<table id="claims"><thead><tr><th>id</th><th>claim</th><th>experiment</th>'
        "<th>verdict</th><th>evidence</th></tr></thead><tbody>",
    ]
    for claim in claims:
        holds = claim.verdict.holds
        parts.append(
            f'<tr class="{_ROW_CLASS[holds]}"><td>{e(claim.id)}</td><td>{e(claim.statement)}</td>'
            f"<td>{e(claim.experiment)}</td>"
            f'<td class="verdict">{e(VERDICT_WORDS[holds])}</td>'
            f"<td>{e(claim.verdict.summary)}<details><summary>numbers</summary><code>"
            f"{e(_evidence_text(claim.verdict.evidence))}</code></details></td></tr>"
        )
    parts.append("</tbody></table>")
    if not claims:
        parts.append("<p>No claims were decided.</p>")
    parts.append("<h2>Experiments</h2>")
    for section in sections:
        parts.append(f'<section id="{e(section.name)}"><h3>{e(section.name)}</h3>')
        if section.experiment is not None:
            parts.append(f"<p>{e(section.experiment.description)}</p>")
        items = [e(fact) for fact in _facts(section)]
        items += [
            f"failed run <code>{e(f['run_id'])}</code>: {e(str(f.get('error', '')))}"
            for f in section.failures
        ]
        items += [
            f"figure <code>{e(name)}</code> not drawn: {e(error)}"
            for name, error in section.figure_errors
        ]
        parts.append("<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>")
        parts.append(f"<p>Settings (resolved):</p><pre>{e(_settings_yaml(section.record))}</pre>")
        for figure_name, path in section.figures:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img alt="{e(section.name)}: {e(figure_name)}" '
                f'src="data:image/png;base64,{data}"><figcaption>{e(figure_name)}</figcaption>'
                "</figure>"
            )
        for table_name, frame in section.tables:
            parts.append(f"<p>{e(table_name)}:</p>" + frame.to_html(index=False, border=0))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
