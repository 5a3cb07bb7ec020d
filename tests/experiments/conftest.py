"""Fixtures of the experiment-system tests: a toy problem registered only for a test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

# Worker processes import the toy run function by name; they inherit sys.path from here
# (set before any worker pool or forkserver starts).
sys.path.insert(0, str(Path(__file__).parent))

import experiment_toys

from layerwise.experiments import registry
from layerwise.experiments.registry import Experiment, Problem

TOY_PROBLEM = Problem(
    name="toy",
    settings_model=experiment_toys.ToySettings,
    method_models=experiment_toys.METHOD_MODELS,
)


def make_toy_experiment(name: str = "toy", **fields) -> Experiment:
    return Experiment(
        name=name, problem="toy", description="a toy experiment", run=experiment_toys.run, **fields
    )


@pytest.fixture
def register(monkeypatch):
    """Register experiments of the toy problem for one test (removed afterwards)."""
    registry.load_all()  # the real ones first, so a later load_all cannot interfere

    def add(experiment: Experiment) -> Experiment:
        monkeypatch.setitem(registry._PROBLEMS, "toy", TOY_PROBLEM)
        monkeypatch.setitem(registry._EXPERIMENTS, experiment.name, experiment)
        return experiment

    return add


@pytest.fixture
def toy(register) -> Experiment:
    """The default toy experiment: each method its own run, one seed per run."""
    return register(make_toy_experiment())


_TOY_DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import experiment_toys, slow_toys
from layerwise import cli
from layerwise.experiments import registry
if __name__ == "__main__":  # worker processes import this file as their __main__
    registry.load_all()
    registry.register_problem(registry.Problem(
        name="toy", settings_model=experiment_toys.ToySettings,
        method_models=experiment_toys.METHOD_MODELS))
    registry.register_experiment(registry.Experiment(
        name="toy", problem="toy", description="toy", run={run}))
    sys.exit(cli.main(sys.argv[1:]))
"""


def write_toy_driver(path: Path, run: str = "experiment_toys.run") -> Path:
    """A script at ``path`` that runs the CLI with the toy experiment registered (``run``: its
    run function, by name): for the tests that need the command as a process of its own
    (kill -9, signals)."""
    path.write_text(_TOY_DRIVER.format(tests=str(Path(__file__).parent), run=run))
    return path


TOY_CONFIG = {
    "experiment": "toy",
    "settings": {"d": 4, "k": 2},
    "grid": {"kappa": [1, 10], "scale": [1.0, 2.0]},
    "methods": {"alpha": {}, "beta_two": {"method": "beta", "lr": 0.5, "repeats": 2}},
    "seeds": 3,
    "quick": {"settings": {"d": 3}, "seeds": 2},
}


@pytest.fixture
def write_config(tmp_path):
    """Write a config mapping (default: :data:`TOY_CONFIG` updated by ``changes``) as YAML."""

    def write(changes: dict | None = None, *, text: str | None = None, name: str = "toy") -> Path:
        path = tmp_path / "configs" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        if text is None:
            data = {**TOY_CONFIG, **(changes or {})}
            data = {key: value for key, value in data.items() if value is not None}
            text = yaml.safe_dump(data, sort_keys=False)
        path.write_text(text)
        return path

    return write


# --------------------------------------------------------------------------------------------
# A toy experiment with claims and figures, run and reported (for the report tests)


def mean_value_claim(id: str, bound: float, **fields):
    from layerwise.experiments.registry import Claim, Verdict

    def decide(table):
        mean = float(table["value"].mean())
        return Verdict(
            holds=mean < bound,
            evidence={"mean_value": mean, "bound": bound},
            summary=f"mean value {mean:.4g} vs bound {bound}",
        )

    return Claim(
        id=id,
        statement=f"the mean value is below {bound}",
        decide=decide,
        rule=f"holds when the mean of value over every stored row is below {bound}",
        **fields,
    )


def _broken_decision(table):
    raise ZeroDivisionError("no decision possible")


def values_figure(table):
    from layerwise.experiments import plots

    fig, (ax,) = plots.new_figure()
    plots.median_band(ax, table, x="step", y="value")
    ax.set_xlabel("step")
    ax.set_ylabel("value")
    return fig


def self_saved_figure(table, out_dir):
    from layerwise.experiments import plots

    fig, (ax,) = plots.new_figure()
    ax.plot(table["step"], table["value"], "o")
    return plots.save_figure(fig, out_dir, "toy-self-saved")


def broken_figure(table):
    raise ZeroDivisionError("no figure possible")


#: Captions of the reported toy's figures ("saved" has none: the report must say so).
TOY_CAPTIONS = {"values": "The median value against step: look for the rise with step."}


@pytest.fixture
def reported(register, write_config, tmp_path):
    """A stored and reported toy experiment with claims T1 (holds), T2 (does not, linked to the
    figure "saved"), T3 (raises; no rule, a statement with markup to escape)."""
    from layerwise.experiments.config import load_config
    from layerwise.experiments.executors import InProcessExecutor
    from layerwise.experiments.registry import Claim
    from layerwise.experiments.report import write_report
    from layerwise.experiments.runner import run_experiment

    register(
        make_toy_experiment(
            claims=(
                mean_value_claim("T2", 1.0, figure="saved"),
                mean_value_claim("T1", 100.0),
                Claim(id="T3", statement="cannot be decided <yet>", decide=_broken_decision),
            ),
            figures={"values": values_figure, "saved": self_saved_figure, "broken": broken_figure},
            captions=TOY_CAPTIONS,
        )
    )
    config = load_config(write_config())
    out = tmp_path / "out"
    with InProcessExecutor() as executor:
        run_experiment(config, out, executor, progress=False)
    written = write_report(out)
    return out, config, written
