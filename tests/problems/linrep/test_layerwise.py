"""The method registry, typed library options, EKFAC, and the C14/C18 decisions."""

from __future__ import annotations

import inspect
from importlib import resources

import numpy as np
import pandas as pd
import pydantic
import pytest
import yaml

from layerwise import cli, optim
from layerwise.problems.linrep import claims
from layerwise.problems.linrep.claims import SLOPE_FLAT, SLOPE_LINEAR
from layerwise.problems.linrep.data import BatchStream, make_instance
from layerwise.problems.linrep.driver import build_method, simulate
from layerwise.problems.linrep.library import (
    EKFAC,
    HARNESS_ARGUMENTS,
    LIBRARY_OPTIMIZERS,
    LibraryEkfacParams,
)
from layerwise.problems.linrep.methods import METHOD_MODELS, METHODS, of_family
from layerwise.problems.linrep.metrics import squared_loss
from layerwise.problems.linrep.settings import LinrepSettings


def _linrep_configs() -> dict[str, dict]:
    folder = resources.files("layerwise") / "configs"
    configs = {}
    for path in folder.iterdir():
        if path.name.startswith("linrep-") and path.name.endswith(".yaml"):
            configs[path.name] = yaml.safe_load(path.read_text())
    return configs


def test_registry_covers_every_method_of_every_linrep_config():
    configs = _linrep_configs()
    assert "linrep-layerwise.yaml" in configs and len(configs) >= 7
    for name, config in configs.items():
        blocks = [config["methods"], config.get("quick", {}).get("methods", {})]
        for methods in blocks:
            for label, params in methods.items():
                algorithm = (params or {}).get("method", label)
                if methods is blocks[1] and label in config["methods"]:
                    continue  # a quick override of a method of the main block
                assert algorithm in METHODS, (name, label)
    assert set(METHOD_MODELS) == set(METHODS)


def test_every_registered_method_is_built_by_the_one_signature_and_steps():
    settings = LinrepSettings(d=6, k=2, dy=3, n=20, kappa_x=1, iterations=3)
    instance = make_instance(settings, (0,))
    for name, entry in METHODS.items():
        method = build_method(name, entry.params(lr=0.01), instance, [0.01], damping=1e-3)
        trace = simulate(settings, instance, method)
        assert trace.steps == 3 and not trace.diverged.any(), name
    assert set(of_family("second_order")) == {"gauss_newton", "newton"}
    assert "library_ekfac" in of_family("library") and "kfac" in of_family("layerwise")


@pytest.mark.parametrize("algorithm", sorted(LIBRARY_OPTIMIZERS))
def test_typed_options_are_the_constructor_keywords_and_each_is_accepted(algorithm):
    params_model = METHOD_MODELS[algorithm]
    optimizer = LIBRARY_OPTIMIZERS[algorithm]
    options = optimizer.options
    signature = inspect.signature(optimizer.signature_of or optimizer.constructor)
    expected = {
        name
        for name, parameter in signature.parameters.items()
        if name not in HARNESS_ARGUMENTS and parameter.kind is not parameter.VAR_KEYWORD
    }
    assert set(options.model_fields) == expected
    for name, info in options.model_fields.items():
        # Every real option, given explicitly at its default, passes the config validation
        # (which constructs the optimizer once) and is what the optimizer receives.
        value = info.default
        params = params_model(lr=0.1, options={name: value})
        assert getattr(params.options, name) == value


@pytest.mark.parametrize(
    ("algorithm", "misspelt", "meant", "name"),
    [
        ("shampoo", "statistcs_decay", "statistics_decay", "Shampoo"),
        ("soap", "betas2", "betas", "SOAP"),
        ("muon", "nesterv", "nesterov", "Muon"),
        ("library_kfac", "dampng", "damping", "KFAC"),
        ("library_ekfac", "exakt", "exact", "EKFAC"),
    ],
)
def test_typed_options_refuse_a_misspelt_option_naming_the_closest(
    algorithm, misspelt, meant, name
):
    with pytest.raises(pydantic.ValidationError) as error:
        METHOD_MODELS[algorithm](options={misspelt: 1})
    text = str(error.value)
    assert f"unknown {name} option {misspelt!r}; did you mean {meant!r}?" in text


def test_typed_options_refuse_a_value_the_optimizer_refuses():
    with pytest.raises(pydantic.ValidationError, match="Shampoo refuses these options"):
        METHOD_MODELS["shampoo"](options={"sides": "bth"})
    with pytest.raises(pydantic.ValidationError, match=r"options\.betas"):
        METHOD_MODELS["soap"](options={"betas": "high"})


def test_a_misspelt_library_option_is_refused_by_run_before_anything_is_written(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    argv = ["run", "linrep-layerwise", "--quick", "--out", str(out)]
    argv += ["--set", "methods.Shampoo.options.statistcs_decay=0.9"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "methods.Shampoo.options" in err
    assert "unknown Shampoo option 'statistcs_decay'; did you mean 'statistics_decay'?" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_ekfac_method_is_the_library_ekfac_in_exact_mode_and_decreases_the_loss():
    settings = LinrepSettings(d=8, k=2, dy=3, n=40, kappa_x=10, kappa_f=3, iterations=60)
    instance = make_instance(settings, (0, 1))
    params = LibraryEkfacParams(lr=0.03)
    assert params.options.exact and params.options.curvature == "ggn"
    method = build_method("library_ekfac", params, instance, [0.03])
    assert isinstance(method.optimizers[0], optim.EKFAC)
    batch = BatchStream(settings, instance).next()

    def losses() -> np.ndarray:
        return squared_loss(method.predict(batch.x), batch.y).numpy()

    before = losses()
    trace = simulate(settings, instance, method)
    assert not trace.diverged.any()
    assert np.all(losses() < 0.2 * before), (before, losses())
    # From about 0.95 to about 0.1 in 60 steps (the subspace is learned, not just the loss).
    assert np.all(trace.distance[-1] < 0.25 * trace.distance[0])
    assert EKFAC.defaults["adam_lr_ratio"] == 1.0


# Synthetic tables for the C14/C18 decisions: iterations to eps = a·κ^slope per κ sweep.
KAPPAS_X = (1.0, 10.0, 100.0, 1000.0)
KAPPAS_F = (1.0, 3.0, 10.0)


def _rows(label, algorithm, mode, slope_x, slope_f, *, base=50.0, budget=10**6, censor=()):
    rows = []
    points = [(kx, 1.0, kx**slope_x) for kx in KAPPAS_X]
    points += [(1.0, kf, kf**slope_f) for kf in KAPPAS_F[1:]]
    for kappa_x, kappa_f, factor in points:
        for seed in range(3):
            iterations = min(round(base * factor) + seed, budget)
            censored = iterations >= budget or (kappa_x, kappa_f) in censor
            rows.append(
                {
                    "seed": seed,
                    "method": label,
                    "algorithm": algorithm,
                    "mode": mode,
                    "kappa_x": kappa_x,
                    "kappa_f": kappa_f,
                    "iterations_to_eps": budget if censored else iterations,
                    "censored": censored,
                    "lr": 0.01,
                    "lr_tuned": True,
                    "budget": budget,
                }
            )
    return rows


def _table(slopes: dict[str, tuple[float, float]], **kwargs) -> pd.DataFrame:
    specs = {
        "Shampoo_exact": ("shampoo", "exact"),
        "SOAP_exact": ("soap", "exact"),
        "Muon_exact": ("muon", "exact"),
        "Shampoo": ("shampoo", "amortized"),
        "SOAP": ("soap", "amortized"),
        "Muon": ("muon", "amortized"),
        "EKFAC": ("library_ekfac", "exact"),
        "sgd": ("sgd", "paper"),
        "kfac": ("kfac", "paper"),
    }
    rows = []
    for label, (slope_x, slope_f) in slopes.items():
        algorithm, mode = specs[label]
        rows += _rows(label, algorithm, mode, slope_x, slope_f, **kwargs.get(label, {}))
    return pd.DataFrame(rows)


FLAT = (0.0, 0.0)
SGD = (1.0, 2.0)
ALL = ("Shampoo_exact", "SOAP_exact", "Muon_exact", "Shampoo", "SOAP", "Muon", "EKFAC")


def test_c14_and_c18_hold_on_kappa_free_slopes():
    table = _table(dict.fromkeys(ALL, FLAT) | {"sgd": SGD, "kfac": FLAT})
    c14, c18 = claims.decide_c14(table), claims.decide_c18(table)
    assert c14.holds is True and c18.holds is True
    part = c14.evidence["C14 Muon_exact"]["kappa_x"]
    assert part["class"] == claims.KAPPA_FREE and abs(part["slope"]) <= SLOPE_FLAT
    assert c14.evidence["not_deciding"]["anchor sgd"]["kappa_x"]["class"] == claims.SGD_LIKE
    assert "C14 Shampoo (amortized)" in c14.evidence["not_deciding"]


def test_c14_does_not_hold_when_one_exact_method_slows_like_sgd():
    table = _table(dict.fromkeys(ALL, FLAT) | {"Muon_exact": SGD})
    verdict = claims.decide_c14(table)
    assert verdict.holds is False
    sweep = verdict.evidence["C14 Muon_exact"]["kappa_x"]
    assert sweep["class"] == claims.SGD_LIKE and sweep["slope"] == pytest.approx(1.0, 0.05)
    # A slope between C1's and C2's thresholds is its own class: not κ-free either.
    between = _table(dict.fromkeys(ALL, FLAT) | {"SOAP_exact": (0.4, 0.0)})
    verdict = claims.decide_c18(between)
    assert verdict.holds is False
    assert verdict.evidence["C18 SOAP_exact"]["kappa_x"]["class"] == claims.SLOWER
    assert SLOPE_LINEAR > 0.4


def test_amortized_modes_do_not_decide_c14_but_decide_c18():
    table = _table(dict.fromkeys(ALL, FLAT) | {"SOAP": SGD})
    assert claims.decide_c14(table).holds is True
    assert claims.decide_c18(table).holds is False


def test_missing_or_never_converging_methods_are_undecided():
    assert claims.decide_c14(_table({"sgd": SGD})).holds is None
    assert claims.decide_c18(_table({"kfac": FLAT})).holds is None
    # Never reaching eps (censored at every κ: a flat line at the budget) is not κ-free.
    never = _table({"Muon_exact": FLAT}, Muon_exact={"base": 2e6})
    verdict = claims.decide_c14(never)
    assert verdict.holds is None
    assert "does not reach ε" in verdict.summary
    # Censored at the largest κ with a flat lower bound: undecided; a rising one: not κ-free.
    late = _table({"Muon_exact": FLAT}, Muon_exact={"censor": {(1000.0, 1.0), (100.0, 1.0)}})
    assert claims.decide_c14(late).holds is False
    # Censored at the largest κ only, with medians just under the budget elsewhere: the slope
    # is a lower bound that is still flat, so the κ(Σx) sweep is undecided.
    near = _table(
        {"Muon_exact": FLAT}, Muon_exact={"base": 4900.0, "budget": 5000, "censor": {(1000.0, 1.0)}}
    )
    verdict = claims.classify_kappa_free(near, "Muon_exact")
    assert verdict.holds is None
    assert verdict.evidence["kappa_x"]["class"] == claims.UNDECIDED
    assert "lower bound" in verdict.evidence["kappa_x"]["why"]
    assert verdict.evidence["kappa_f"]["class"] == claims.KAPPA_FREE


def test_layerwise_figure_has_one_line_per_method_in_each_sweep():
    import matplotlib.pyplot as plt

    from layerwise.experiments.plots import display_name
    from layerwise.problems.linrep import figures

    table = _table(dict.fromkeys(ALL, FLAT) | {"sgd": SGD, "kfac": FLAT})
    fig = figures.layerwise(table)
    left, right = fig.axes[:2]
    for ax in (left, right):
        labels = {line.get_label() for line in ax.get_lines()}
        # Legend text: the display name and the tuned step size of the synthetic rows.
        assert {f"{display_name(m)}, tuned η = 0.01" for m in ALL} <= labels
    # The sgd line rises with κ(Σx): its last median is about 1000 times its first.
    (sgd,) = [line for line in left.get_lines() if line.get_label() == "SGD, tuned η = 0.01"]
    y = sgd.get_ydata()
    assert y[-1] / y[0] == pytest.approx(1000, rel=0.05)
    plt.close(fig)


@pytest.mark.slow
def test_quick_linrep_layerwise_runs_and_decides():
    from .quick import run_quick

    table, config = run_quick("linrep-layerwise")
    assert set(table["method"]) == set(config.methods)
    assert set(table["mode"]) == {"exact", "amortized", "paper"}
    for claim in config.experiment.claims:
        verdict = claim.decide(table)
        assert verdict.summary and claim.rule and claim.figure in config.experiment.figures
