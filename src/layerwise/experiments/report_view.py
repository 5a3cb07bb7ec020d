"""The report's view-model: plain dataclasses of display text, built once from the stored data
and rendered by both templates (``templates/report.html.j2`` and ``templates/report.md.j2``), so
the HTML page and the Markdown file say the same things.

:func:`build_view` turns what :func:`layerwise.experiments.report.build` loaded and decided
(per experiment: its stored invocation record, runs, figures, tables and claim verdicts) into a
:class:`ReportView`:

- a :class:`Header`: the paper, quick or full, seeds, machine, code version, dates, how verdicts
  are decided, the tally of verdicts and every flagged anomaly;
- one :class:`ClaimView` per claim: its rule in words, readable evidence
  (:mod:`layerwise.experiments.evidence`), the summary sentence and the figure it links to;
- one :class:`SectionView` per experiment: description, facts, figures with captions, tables,
  anomalies and the settings (folded).

Nothing here shows an absolute path of the machine: a stored config path is shown by its file
name, a path inside the output folder relative to it.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

from layerwise.experiments import store
from layerwise.experiments.anomalies import Anomaly
from layerwise.experiments.evidence import (
    EvidenceRow,
    evidence_rows,
    format_float,
    format_value,
    without_negative_zero,
)

if TYPE_CHECKING:
    from layerwise.experiments.report import ClaimResult, ExperimentSection

VERDICT_WORDS = {True: "holds", False: "does not hold", None: "undecided"}
VERDICT_CLASSES = {True: "holds", False: "fails", None: "undecided"}
#: Shown, visibly, for a claim registered without a rule / a figure without a caption.
NO_RULE = "rule not stated"
NO_CAPTION = "caption not stated"
#: How a stored config source marks a ``--quick`` invocation (see ``config.resolve_config``).
QUICK_MARK = "(--quick)"


@dataclass(frozen=True)
class Paper:
    title: str
    authors: str
    venue: str
    reference: str


PAPER = Paper(
    title="On the Concurrence of Layer-wise Preconditioning Methods and Provable Feature Learning",
    authors="Zhang, Moniri, Nagwekar, Rahman, Xue, Hassani, Matni",
    venue="ICML 2025 (PMLR 267)",
    reference="arXiv 2502.01763",
)

HOW_VERDICTS_ARE_DECIDED = (
    "Every verdict is computed by the report from the results stored in this folder only; "
    "nothing is rerun. Each claim is decided by its rule, printed under the claim with its "
    "thresholds (our choices, fixed in the code before looking at results, not the paper's). "
    "A claim holds when its rule is met, does not hold when it is not, and is undecided when "
    "the stored rows cannot decide it (a method or grid point missing, or an error in the "
    "decision; its evidence says which). A claim with several parts holds when every part "
    "the table can decide holds. A claim that does not hold is a finding, reported with its "
    "numbers."
)
QUICK_NOTE = (
    "Quick runs use small sizes and few seeds: their verdicts check that the pipeline works; "
    "they are not evidence for or against the paper."
)


@dataclass(frozen=True)
class Tally:
    holds: int
    fails: int
    undecided: int

    @property
    def total(self) -> int:
        return self.holds + self.fails + self.undecided

    def sentence(self) -> str:
        return (
            f"{self.total} claims: holds: {self.holds}, does not hold: {self.fails}, "
            f"undecided: {self.undecided}"
        )

    def short(self) -> str:
        parts = (
            (self.holds, "holds"),
            (self.fails, "does not hold"),
            (self.undecided, "undecided"),
        )
        return ", ".join(f"{count} {word}" for count, word in parts if count)


@dataclass(frozen=True)
class ExperimentLine:
    """One experiment in the header's overview (and the table of contents)."""

    name: str
    anchor: str
    variant: str
    seeds: str
    runs: str
    claims: str


@dataclass(frozen=True)
class Header:
    title: str
    paper: Paper
    variant: str
    seeds: str
    machine: list[str]
    code: list[str]
    generated: str
    ran: str
    how_verdicts_are_decided: str
    quick_note: str
    tally: Tally
    experiments: list[ExperimentLine]
    anomalies: list[AnomalyView]


@dataclass(frozen=True)
class AnomalyView:
    experiment: str
    experiment_anchor: str
    sentence: str


@dataclass(frozen=True)
class FigureView:
    anchor: str
    number: int
    experiment: str
    name: str
    caption: str
    #: Relative to the output folder (the Markdown links it).
    relative_path: str
    #: The PNG, base64 (the HTML embeds it).
    png_base64: str


@dataclass(frozen=True)
class ClaimView:
    id: str
    anchor: str
    statement: str
    experiment: str
    experiment_anchor: str
    verdict: str
    verdict_class: str
    rule: str
    rule_stated: bool
    summary: str
    evidence: list[EvidenceRow]
    figure: FigureView | None
    #: Why there is no figure to link (when ``figure`` is None).
    figure_missing: str


@dataclass(frozen=True)
class TableView:
    name: str
    columns: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class SectionView:
    name: str
    anchor: str
    description: str
    registered: bool
    facts: list[str]
    problems: list[str]
    figures: list[FigureView]
    tables: list[TableView]
    claims: list[ClaimView]
    anomalies: list[AnomalyView]
    settings: str


@dataclass(frozen=True)
class ReportView:
    header: Header
    claims: list[ClaimView]
    sections: list[SectionView]


def anchor(*parts: str) -> str:
    """An HTML id from ``parts``: lower case, runs of other characters as one ``-``."""
    text = "-".join(parts).lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


# --------------------------------------------------------------------------------------------
# Paths shown without the machine's folders


def display_path(text: str, out_dir: Path) -> str:
    """``text`` if it is not an absolute path; else relative to ``out_dir`` (``.`` for the
    folder itself), or the file name."""
    path = Path(text)
    if not path.is_absolute():
        return text
    out_dir = out_dir.resolve()
    resolved = path.resolve()
    if resolved == out_dir:
        return "."
    if resolved.is_relative_to(out_dir):
        return resolved.relative_to(out_dir).as_posix()
    return path.name


def display_source(source: str | None, out_dir: Path) -> str:
    """A stored config source (``PATH`` or ``PATH (--quick)``) without the machine's folders."""
    if not source:
        return "unknown"
    path, mark, rest = source.partition(f" {QUICK_MARK}")
    return display_path(path, out_dir) + (f" {QUICK_MARK}{rest}" if mark else "")


# An absolute path of two or more parts (not a URL, not "n/d" or "1/ε" inside a word).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.@+-]+/)+([\w.@+-]+)")


def without_machine_paths(text: str, out_dir: Path) -> str:
    """Free text (an error message) with the output folder's absolute path replaced by ``.``
    and any other absolute path by its last part."""
    for folder in sorted({str(out_dir.resolve()), str(out_dir.absolute())}, key=len, reverse=True):
        text = text.replace(folder + "/", "./").replace(folder, ".")
    return _ABSOLUTE_PATH.sub(r"\1", text)


# --------------------------------------------------------------------------------------------
# Facts of one experiment


def variant_of(record: Mapping[str, Any]) -> str:
    """``quick`` or ``full`` from a stored invocation record (``unknown`` without one)."""
    source = record.get("source")
    if not source:
        return "unknown"
    return "quick" if str(source).endswith(QUICK_MARK) else "full"


def seed_count(record: Mapping[str, Any]) -> int | None:
    seeds = (record.get("resolved") or {}).get("seeds")
    return len(seeds) if isinstance(seeds, list) else None


def _seconds(value: Any) -> str:
    return f"{format_float(float(value))} s" if isinstance(value, int | float) else "unknown"


def section_facts(section: ExperimentSection, out_dir: Path) -> list[str]:
    record = section.record
    counts = record.get("counts") or {}
    versions = record.get("versions") or {}
    facts = [
        f"runs: {section.runs_finished} of {section.runs_total} finished, "
        f"{len(section.failures)} failed; {section.rows} stored rows; "
        f"{_plural(seed_count(record), 'seed')} ({variant_of(record)})",
        f"run time: {_seconds(record.get('wall_seconds'))} wall for the latest invocation "
        f"({counts.get('done', 0)} runs executed, {counts.get('skipped', 0)} already finished); "
        f"{format_float(round(section.compute_seconds, 1))} s summed over the stored runs",
        f"started {record.get('started_at', 'unknown')}, finished "
        f"{record.get('finished_at') or 'not finished'}; executor "
        f"{_executor(record.get('executor'))}, device {record.get('device', 'unknown')}",
        f"config {display_source(record.get('source'), out_dir)}; code {_code(record)}",
    ]
    if versions:
        facts.append(
            "versions: " + ", ".join(f"{name} {version}" for name, version in versions.items())
        )
    if record.get("command"):
        command = " ".join(display_path(str(arg), out_dir) for arg in record["command"])
        facts.append(f"command: {command}")
    return facts


def _plural(count: int | None, word: str) -> str:
    if count is None:
        return f"{word}s: unknown"
    return f"{count} {word}" + ("" if count == 1 else "s")


def _executor(executor: Any) -> str:
    if isinstance(executor, Mapping):
        name = executor.get("name", "unknown")
        details = ", ".join(f"{k} {v}" for k, v in executor.items() if k != "name")
        return f"{name} ({details})" if details else str(name)
    return str(executor) if executor else "unknown"


def _code(record: Mapping[str, Any]) -> str:
    version = (record.get("versions") or {}).get("layerwise") or "unknown version"
    commit = record.get("git_commit")
    return f"layerwise {version}, commit {commit}" if commit else f"layerwise {version}"


def settings_yaml(record: Mapping[str, Any]) -> str:
    """The stored resolved config as YAML (the grid as configured; its points only counted)."""
    resolved = dict(record.get("resolved") or {})
    if "points" in resolved:
        resolved["points"] = f"{len(resolved['points'])} grid point(s)"
    if not resolved:
        return "# no stored settings"
    return yaml.safe_dump(
        store.to_json(resolved), sort_keys=False, width=100, allow_unicode=True
    ).strip()


def grid_keys(record: Mapping[str, Any]) -> list[str]:
    grid = (record.get("resolved") or {}).get("grid") or {}
    grids = grid if isinstance(grid, list) else [grid]
    return list(dict.fromkeys(key for one in grids if isinstance(one, Mapping) for key in one))


# --------------------------------------------------------------------------------------------
# Building the view


def table_view(name: str, frame: pd.DataFrame) -> TableView:
    return TableView(
        name=name,
        columns=[str(column) for column in frame.columns],
        rows=[[format_value(value) for value in row] for row in frame.itertuples(index=False)],
    )


def _figure_views(section: ExperimentSection, out_dir: Path, first_number: int) -> list[FigureView]:
    captions = section.experiment.captions if section.experiment is not None else {}
    views, seen = [], set()
    for name, path in section.figures:
        identifier = anchor("fig", section.name, name)
        while identifier in seen:  # a figure function that wrote several PNGs
            identifier += "-more"
        seen.add(identifier)
        relative = path.relative_to(out_dir) if path.is_relative_to(out_dir) else Path(path.name)
        views.append(
            FigureView(
                anchor=identifier,
                number=first_number + len(views),
                experiment=section.name,
                name=name,
                caption=captions.get(name, ""),
                relative_path=relative.as_posix(),
                png_base64=base64.b64encode(path.read_bytes()).decode("ascii"),
            )
        )
    return views


def _claim_view(
    result: ClaimResult, section: ExperimentSection, figures: Sequence[FigureView], out_dir: Path
) -> ClaimView:
    claim = next(
        (c for c in (section.experiment.claims if section.experiment else ()) if c.id == result.id),
        None,
    )
    rule = claim.rule.strip() if claim is not None else ""
    wanted = (claim.figure if claim is not None else "") or next(
        iter(section.experiment.figures if section.experiment else {}), ""
    )
    figure = next((f for f in figures if f.name == wanted), None)
    missing = ""
    if figure is None:
        errors = dict(section.figure_errors)
        if not wanted:
            missing = "this experiment has no figure"
        elif wanted in errors:
            missing = f"figure {wanted} not drawn: {without_machine_paths(errors[wanted], out_dir)}"
        else:
            missing = f"figure {wanted} not drawn"
    holds = result.verdict.holds
    return ClaimView(
        id=result.id,
        anchor=anchor("claim", result.id, result.experiment),
        statement=result.statement,
        experiment=result.experiment,
        experiment_anchor=anchor("experiment", result.experiment),
        verdict=VERDICT_WORDS[holds],
        verdict_class=VERDICT_CLASSES[holds],
        rule=rule or NO_RULE,
        rule_stated=bool(rule),
        summary=without_machine_paths(without_negative_zero(result.verdict.summary), out_dir),
        evidence=[
            EvidenceRow(row.quantity, without_machine_paths(row.value, out_dir))
            for row in evidence_rows(result.verdict.evidence)
        ],
        figure=figure,
        figure_missing=missing,
    )


def _anomaly_views(section: ExperimentSection, found: Sequence[Anomaly]) -> list[AnomalyView]:
    return [
        AnomalyView(
            experiment=section.name,
            experiment_anchor=anchor("experiment", section.name),
            sentence=anomaly.sentence(),
        )
        for anomaly in found
    ]


def build_view(
    sections: Sequence[ExperimentSection],
    claims: Sequence[ClaimResult],
    out_dir: Path,
    generated: str,
) -> ReportView:
    """The view of a built report (see the module docstring); ``claims`` in report order."""
    out_dir = Path(out_dir)
    section_views, claim_views = [], {}
    number = 1
    for section in sections:
        figures = _figure_views(section, out_dir, number)
        number += len(figures)
        section_claims = [
            _claim_view(result, section, figures, out_dir) for result in section.claims
        ]
        claim_views.update({(c.id, c.experiment): c for c in section_claims})
        problems = [
            f"failed run {failure['run_id']}: "
            + without_machine_paths(str(failure.get("error", "")), out_dir)
            for failure in section.failures
        ]
        problems += [
            f"figure or table {name} not drawn: {without_machine_paths(error, out_dir)}"
            for name, error in section.figure_errors
        ]
        if section.experiment is None:
            problems.append("this experiment is not registered in this build: no figures or claims")
        section_views.append(
            SectionView(
                name=section.name,
                anchor=anchor("experiment", section.name),
                description=section.experiment.description if section.experiment else "",
                registered=section.experiment is not None,
                facts=section_facts(section, out_dir),
                problems=problems,
                figures=figures,
                tables=[table_view(name, frame) for name, frame in section.tables],
                claims=section_claims,
                anomalies=_anomaly_views(section, section.anomalies),
                settings=settings_yaml(section.record),
            )
        )
    ordered = [claim_views[(c.id, c.experiment)] for c in claims]
    header = _header(sections, section_views, ordered, out_dir, generated)
    return ReportView(header=header, claims=ordered, sections=section_views)


# --------------------------------------------------------------------------------------------
# The header


def _distinct(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(value for value in values if value))


def _overall_variant(records: Sequence[Mapping[str, Any]]) -> str:
    variants = _distinct([variant_of(record) for record in records])
    if not variants:
        return "no stored experiments"
    if len(variants) == 1:
        return variants[0]
    counts = {variant: sum(variant_of(r) == variant for r in records) for variant in variants}
    return "mixed: " + ", ".join(f"{count} {variant}" for variant, count in counts.items())


def _seeds_summary(records: Sequence[Mapping[str, Any]]) -> str:
    counts = [count for record in records if (count := seed_count(record)) is not None]
    if not counts:
        return "unknown"
    if min(counts) == max(counts):
        return f"{_plural(counts[0], 'seed')} per experiment"
    return f"{min(counts)} to {max(counts)} seeds per experiment (each listed below)"


def _machine(records: Sequence[Mapping[str, Any]]) -> list[str]:
    machines = _distinct(
        [
            ", ".join(
                f"{key} {value}"
                for key, value in (record.get("machine") or {}).items()
                if value is not None
            )
            for record in records
        ]
    )
    torch = _distinct([str((r.get("versions") or {}).get("torch") or "") for r in records])
    python = _distinct([str((r.get("versions") or {}).get("python") or "") for r in records])
    devices = _distinct([str(r.get("device") or "") for r in records])
    executors = _distinct([_executor(r.get("executor")) for r in records if r.get("executor")])
    lines = machines or ["platform and CPU count not recorded (runs stored before they were)"]
    lines.append(
        f"torch {', '.join(torch) or 'unknown'}; python {', '.join(python) or 'unknown'}; "
        f"device {', '.join(devices) or 'unknown'}; executor {', '.join(executors) or 'unknown'}"
    )
    return lines


#: Hex digits of a commit shown in the header when several commits ran the experiments.
SHORT_COMMIT = 12


def _code_lines(records: Sequence[Mapping[str, Any]]) -> list[str]:
    codes = [_code(record) for record in records]
    distinct = _distinct(codes)
    if not distinct:
        return ["code version not recorded"]
    if len(distinct) == 1:
        lines = distinct
    else:
        # One line: each commit shortened, with how many experiments it ran (sections: in full).
        versions = _distinct([str((r.get("versions") or {}).get("layerwise")) for r in records])
        commits = [str(r.get("git_commit") or "unknown") for r in records]
        counted = {commit: commits.count(commit) for commit in _distinct(commits)}
        shown = ", ".join(
            f"{_short(commit)} ({count} experiment{'s' if count > 1 else ''})"
            for commit, count in counted.items()
        )
        lines = [
            f"layerwise {', '.join(versions)}; {len(counted)} commits: {shown}",
            "the experiments were run by different code versions (each section names its own)",
        ]
    if any("+dirty" in code for code in distinct):
        lines.append(
            "+dirty: the source tree had uncommitted changes when the runs were made, so the "
            "commit alone does not reproduce them exactly"
        )
    return lines


def _short(commit: str) -> str:
    head, plus, rest = commit.partition("+")
    return head[:SHORT_COMMIT] + plus + rest


def _ran(records: Sequence[Mapping[str, Any]]) -> str:
    started = sorted(str(r["started_at"]) for r in records if r.get("started_at"))
    finished = sorted(str(r["finished_at"]) for r in records if r.get("finished_at"))
    if not started:
        return "unknown"
    return f"{started[0]} to {finished[-1] if finished else 'not finished'}"


def _tally(claims: Sequence[ClaimView]) -> Tally:
    count = {word: sum(c.verdict == word for c in claims) for word in VERDICT_WORDS.values()}
    return Tally(count["holds"], count["does not hold"], count["undecided"])


def _header(
    sections: Sequence[ExperimentSection],
    views: Sequence[SectionView],
    claims: Sequence[ClaimView],
    out_dir: Path,
    generated: str,
) -> Header:
    records = [section.record for section in sections]
    variant = _overall_variant(records)
    lines = [
        ExperimentLine(
            name=view.name,
            anchor=view.anchor,
            variant=variant_of(section.record),
            seeds=format_value(seed_count(section.record)),
            runs=f"{section.runs_finished}/{section.runs_total}"
            + (f", {len(section.failures)} failed" if section.failures else ""),
            claims=_tally(view.claims).short() if view.claims else "none",
        )
        for section, view in zip(sections, views, strict=True)
    ]
    return Header(
        title="layerwise report",
        paper=PAPER,
        variant=variant,
        seeds=_seeds_summary(records),
        machine=_machine(records),
        code=_code_lines(records),
        generated=generated,
        ran=_ran(records),
        how_verdicts_are_decided=HOW_VERDICTS_ARE_DECIDED,
        quick_note=QUICK_NOTE if "quick" in variant else "",
        tally=_tally(claims),
        experiments=lines,
        anomalies=[anomaly for view in views for anomaly in view.anomalies],
    )
