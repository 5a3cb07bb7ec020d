"""The report: figures, and a decision on every claim, from stored results only.

``write_report(DIR)`` looks at every experiment folder under ``DIR`` (one with a stored
``config.json``), loads the rows of the runs of its latest invocation, draws each of the
experiment's figures (PNG and PDF under ``DIR/figures/``, named ``<experiment>-<figure>``),
decides each of its claims, flags anomalies (:mod:`layerwise.experiments.anomalies`), and writes

- ``DIR/claims.json``: a list of ``{"id", "claim", "experiment", "holds", "evidence"}`` with
  ``holds`` true, false or null (undecided);
- ``DIR/report.html``: a header (the paper, quick or full, seeds, machine, code version, how
  verdicts are decided, the tally, anomalies), a table of contents, each claim with its rule,
  result, evidence and a link to its figure, then per experiment its facts, figures with
  captions, tables and folded settings; self-contained (figures embedded as base64 PNG);
- ``DIR/report.md``: the same in Markdown, figures linked from ``figures/``.

Both pages are rendered by the Jinja2 templates in ``templates/`` from one view-model
(:mod:`layerwise.experiments.report_view`); every file is written atomically.

A claim whose decide function raises is undecided, with the error as its evidence; a figure
function that raises is listed with its error. Neither stops the report.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import re
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from layerwise.experiments import plots, registry, store
from layerwise.experiments.anomalies import Anomaly, rising_loss
from layerwise.experiments.registry import Claim, Experiment, Verdict
from layerwise.experiments.report_view import (
    NO_CAPTION,
    VERDICT_WORDS,
    ReportView,
    build_view,
    grid_keys,
)

__all__ = ["VERDICT_WORDS", "WrittenReport", "build", "render_html", "render_markdown"]

FIGURES = "figures"
TEMPLATES = "templates"


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
    record: dict[str, Any]
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
    anomalies: list[Anomaly] = field(default_factory=list)


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
        section.anomalies = rising_loss(table, grid_keys(record))
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
    paths: dict[str, Path]  # "claims", "markdown", "html"
    claims: Sequence[ClaimResult]
    sections: Sequence[ExperimentSection]
    view: ReportView


def write_report(out_dir: str | Path) -> WrittenReport:
    """Write ``claims.json``, ``report.md`` and ``report.html`` under ``out_dir`` (each
    atomically: a reader never sees a half-written file)."""
    out_dir = Path(out_dir)
    # Medians and quantiles over diverged (infinite) values are meant: no numpy warning spam.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        sections = build(out_dir)
    claims = all_claims(sections)
    generated = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    view = build_view(sections, claims, out_dir, generated)
    paths = {
        "claims": out_dir / "claims.json",
        "markdown": out_dir / "report.md",
        "html": out_dir / "report.html",
    }
    texts = {
        "claims": json.dumps([c.as_json() for c in claims], indent=2) + "\n",
        "markdown": render_markdown(view),
        "html": render_html(view),
    }
    for kind, path in paths.items():
        data = texts[kind].encode()
        store._atomic_write(path, lambda handle, data=data: handle.write(data))
    return WrittenReport(paths=paths, claims=claims, sections=sections, view=view)


# --------------------------------------------------------------------------------------------
# Rendering: one view-model, two templates


def _markdown_cell(text: Any) -> str:
    """A Markdown table cell: ``|`` escaped, on one line."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _environment(autoescape: bool) -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("layerwise.experiments", TEMPLATES),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,  # a misspelt field fails the report, not the reader
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["cell"] = _markdown_cell
    return environment


def render_html(view: ReportView) -> str:
    """The self-contained HTML page of ``view`` (autoescaped)."""
    template = _environment(autoescape=True).get_template("report.html.j2")
    return template.render(view=view, no_caption=NO_CAPTION)


def render_markdown(view: ReportView) -> str:
    """The Markdown report of ``view``."""
    template = _environment(autoescape=False).get_template("report.md.j2")
    text = template.render(view=view, no_caption=NO_CAPTION)
    return re.sub(r"\n{3,}", "\n\n", text)  # template blocks leave runs of blank lines
