"""Experiment registry: name -> problem, run function, claims and figures.

A *problem* (``linrep``, ``single_index``, ``mlp``) declares the settings it understands (a
frozen pydantic model) and the methods it implements (each with a pydantic model of its
hyperparameters). An *experiment* belongs to one problem and declares

- ``run``: one :class:`RunTask` (one grid point, one method group, one seed group) -> tidy rows
  (a ``pandas.DataFrame`` with at least the columns ``seed`` and ``method``);
- ``claims``: functions from the experiment's stored table to a :class:`Verdict`;
- ``figures``: functions from the stored table to matplotlib figures.

Configs (``NAME.yaml``, see :mod:`layerwise.experiments.config`) are validated against the
problem's models before anything runs, so a misspelt field or an impossible value never
reaches a run function.

Problems register themselves when their ``experiments`` module is imported; the modules are
listed in :data:`EXPERIMENT_MODULES` and imported lazily by :func:`load_all`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pydantic import BaseModel

#: Modules whose import registers problems and experiments.
EXPERIMENT_MODULES: tuple[str, ...] = (
    "layerwise.problems.mlp.experiments",
    "layerwise.problems.linrep.experiments",
    "layerwise.problems.deep_linrep.experiments",
    "layerwise.problems.single_index.experiments",
    "layerwise.problems.single_index_many_steps.experiments",
    "layerwise.problems.training.experiments",
)


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """The decision on one claim: ``holds`` is True, False or None (undecided).

    ``evidence`` holds the numbers the decision was made on (JSON-serializable scalars, lists
    or small dicts); ``summary`` is one human sentence with those numbers.
    """

    holds: bool | None
    evidence: Mapping[str, Any]
    summary: str


def combine_parts(parts: Mapping[str, Verdict]) -> Verdict:
    """One verdict from the verdicts of a claim's parts (e.g. ``C2-κx`` and ``C2-κF``).

    A claim decides what the stored data can decide: it does not hold if a decided part does
    not hold; it holds if every decided part holds; it is undecided only when no part could be
    decided. The parts not decided are named, with what they lack, in
    ``evidence["undecided_parts"]`` and in the summary; each part's evidence is under its name.
    """
    decided = {name: part for name, part in parts.items() if part.holds is not None}
    missing = {name: part.summary for name, part in parts.items() if part.holds is None}
    holds = None if not decided else all(bool(part.holds) for part in decided.values())
    evidence: dict[str, Any] = {
        name: {"holds": part.holds, **part.evidence} for name, part in decided.items()
    }
    if missing:
        evidence["undecided_parts"] = missing
    words = {True: "holds", False: "does not hold"}
    summary = "; ".join(
        [f"{name} {words[bool(part.holds)]}: {part.summary}" for name, part in decided.items()]
        + [f"{name} undecided: {reason}" for name, reason in missing.items()]
    )
    return Verdict(holds=holds, evidence=evidence, summary=summary)


@dataclass(frozen=True, kw_only=True)
class Claim:
    """A claim of SPEC.md §5, decided from one experiment's stored table."""

    id: str
    statement: str
    decide: Callable[[pd.DataFrame], Verdict]
    #: How the verdict is decided, in words, with its thresholds (what the report prints under
    #: the claim), e.g. "holds when the fitted slope of log iterations against log κ is below
    #: 0.1 for kfac and above 0.5 for sgd".
    rule: str = ""
    #: The experiment's figure (a key of :attr:`Experiment.figures`) that shows the evidence;
    #: the report links the claim to it. Empty: the experiment's first figure.
    figure: str = ""


@dataclass(frozen=True, kw_only=True)
class MethodSpec:
    """A method of a config: the registered algorithm ``name`` and its validated ``params``.

    In a config, ``methods`` maps a *label* (what tables and figures show, e.g. ``kfac_half``)
    to the hyperparameters; the optional key ``method`` names the algorithm (default: the
    label), so one algorithm can appear under several labels.
    """

    name: str
    params: BaseModel


@dataclass(frozen=True, kw_only=True)
class RunTask:
    """One unit of work: a resolved grid point, the methods to run, the seeds.

    ``settings`` is the validated problem-settings model for this grid point (fixed settings
    merged with this point's grid values); ``methods`` maps method label -> :class:`MethodSpec`;
    ``seeds`` are run together (paired: every method sees the same
    instance, initialization and data stream for a given seed).
    """

    experiment: str
    settings: BaseModel
    methods: Mapping[str, MethodSpec]
    seeds: tuple[int, ...]
    device: str = "cpu"
    #: Show progress inside the run (``layerwise.experiments.progress``); not part of the id.
    progress: bool = False


@dataclass(frozen=True, kw_only=True)
class Problem:
    """A problem family: its settings model and its methods' hyperparameter models.

    ``check_method``: optional ``(settings, algorithm, params) -> None`` that raises
    ``ValueError`` when a method cannot run on a grid point's settings (e.g. an undamped
    inverse with n <= d); configs call it for every point x method before anything runs.
    """

    name: str
    settings_model: type[BaseModel]
    method_models: Mapping[str, type[BaseModel]]
    check_method: Callable[[BaseModel, str, BaseModel], None] | None = None


@dataclass(frozen=True, kw_only=True)
class Experiment:
    """A registered experiment.

    ``seeds_per_run``: how many seeds one :class:`RunTask` carries (problems vectorized over
    seeds use more than one). ``split_methods``: if True each method is its own run; if False
    one run carries all methods of the config (so they can share data and initialization).
    ``timing_columns`` names columns that hold wall-clock measurements (e.g. seconds per
    iteration): they vary between identical invocations; every other column is deterministic
    (the same command and seeds give identical values on the same machine).
    ``figures`` maps a figure name to a function ``(table) -> matplotlib Figure`` (the report
    saves it as ``<experiment>-<name>`` PNG and PDF), or ``(table, out_dir) -> paths`` for a
    function that writes its own files (see :func:`layerwise.experiments.report.draw`).
    ``tables`` maps a table name to a function ``(table) -> DataFrame`` of display strings
    that the report shows under the experiment's figures. ``captions`` maps a figure name to
    its one-sentence caption.
    """

    name: str
    problem: str
    description: str
    run: Callable[[RunTask], pd.DataFrame]
    claims: tuple[Claim, ...] = ()
    figures: Mapping[str, Callable[[pd.DataFrame], Any]] = field(default_factory=dict)
    tables: Mapping[str, Callable[[pd.DataFrame], pd.DataFrame]] = field(default_factory=dict)
    #: One-sentence caption per figure name (what is plotted and what to look for).
    captions: Mapping[str, str] = field(default_factory=dict)
    seeds_per_run: int = 1
    split_methods: bool = True
    timing_columns: tuple[str, ...] = ()


_PROBLEMS: dict[str, Problem] = {}
_EXPERIMENTS: dict[str, Experiment] = {}


def register_problem(problem: Problem) -> Problem:
    if problem.name in _PROBLEMS and _PROBLEMS[problem.name] is not problem:
        raise ValueError(f"problem {problem.name!r} is already registered")
    _PROBLEMS[problem.name] = problem
    return problem


def register_experiment(experiment: Experiment) -> Experiment:
    if experiment.name in _EXPERIMENTS and _EXPERIMENTS[experiment.name] is not experiment:
        raise ValueError(f"experiment {experiment.name!r} is already registered")
    if experiment.problem not in _PROBLEMS:
        raise ValueError(
            f"experiment {experiment.name!r} names unknown problem {experiment.problem!r}"
        )
    _EXPERIMENTS[experiment.name] = experiment
    return experiment


def load_all() -> None:
    """Import every module of :data:`EXPERIMENT_MODULES` (each registers its experiments)."""
    for module in EXPERIMENT_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            # A problem package that does not exist yet is simply absent from the registry;
            # any other missing import is a real error.
            if error.name is None or not module.startswith(error.name):
                raise


def problem(name: str) -> Problem:
    load_all()
    try:
        return _PROBLEMS[name]
    except KeyError:
        raise KeyError(f"unknown problem {name!r}; known: {sorted(_PROBLEMS)}") from None


def experiment(name: str) -> Experiment:
    load_all()
    try:
        return _EXPERIMENTS[name]
    except KeyError:
        raise KeyError(f"unknown experiment {name!r}; known: {sorted(_EXPERIMENTS)}") from None


def experiments() -> dict[str, Experiment]:
    load_all()
    return dict(_EXPERIMENTS)
