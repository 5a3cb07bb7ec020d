"""Config loading and validation: every kind of bad input is refused before anything runs."""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path

import pytest
import torch

from layerwise import cli
from layerwise.experiments import config as config_module
from layerwise.experiments import registry
from layerwise.experiments.config import (
    ConfigError,
    apply_override,
    deep_merge,
    find_config,
    load_config,
    parse_yaml,
)


def test_valid_config_resolves_fields_grid_methods_and_seeds(toy, write_config):
    config = load_config(write_config())
    assert config.experiment is toy
    assert config.grid_keys == ("kappa", "scale")
    points = [dict(point.values) for point in config.points]
    assert points == [
        {"kappa": k, "scale": s} for k in (1, 10) for s in (1.0, 2.0)
    ]  # the product, in config order
    for point in config.points:
        assert point.settings.d == 4 and point.settings.k == 2
        assert point.settings.kappa == point.values["kappa"]
    assert config.methods["alpha"].name == "alpha"
    assert config.methods["alpha"].params.lr == 0.1  # the model's default
    assert config.methods["beta_two"].name == "beta"
    assert config.methods["beta_two"].params.repeats == 2
    assert config.seeds == (0, 1, 2)


def test_quick_block_deep_merges_and_set_overrides_apply_last(toy, write_config):
    path = write_config()
    quick = load_config(path, quick=True)
    assert quick.seeds == (0, 1)
    assert all(p.settings.d == 3 and p.settings.k == 2 for p in quick.points)  # k kept: merged
    overridden = load_config(
        path,
        quick=True,
        overrides=["settings.d=8", "grid.kappa=[5]", "seeds=[4, 7]", "methods.alpha.lr=1e-3"],
    )
    assert [p.settings.d for p in overridden.points] == [8, 8]
    assert [p.values["kappa"] for p in overridden.points] == [5, 5]
    assert overridden.seeds == (4, 7)
    assert overridden.methods["alpha"].params.lr == 1e-3


def test_list_of_grids_is_the_union_of_their_products_without_duplicates(toy, write_config):
    path = write_config({"grid": [{"kappa": [1, 10, 100]}, {"scale": [1.0, 3.0]}]})
    config = load_config(path)
    resolved = [(p.settings.kappa, p.settings.scale) for p in config.points]
    # (1, 1.0) is in both products (kappa and scale default to 1) and appears once.
    assert resolved == [(1, 1.0), (10, 1.0), (100, 1.0), (1, 3.0)]
    assert config.grid_keys == ("kappa", "scale")


def test_deep_merge_merges_mappings_and_replaces_lists_and_scalars():
    base = {"settings": {"d": 4, "k": 2}, "grid": {"kappa": [1, 10]}, "seeds": 5}
    override = {"settings": {"d": 16}, "grid": {"kappa": [3]}, "seeds": 2}
    merged = deep_merge(base, override)
    assert merged == {"settings": {"d": 16, "k": 2}, "grid": {"kappa": [3]}, "seeds": 2}
    assert base["settings"] == {"d": 4, "k": 2}  # inputs untouched


def test_set_override_indexes_lists_and_refuses_what_is_not_a_mapping():
    config = {"grid": [{"kappa": [1]}, {"scale": [2.0]}], "seeds": 3}
    assert apply_override(config, ["grid", "1", "scale"], [5.0])["grid"][1] == {"scale": [5.0]}
    with pytest.raises(ConfigError, match=r"seeds\.x.*not a mapping"):
        apply_override(config, ["seeds", "x"], 1)
    with pytest.raises(ConfigError, match="not an index"):
        apply_override(config, ["grid", "kappa"], [1])


def test_yaml_reads_exponent_floats_and_refuses_duplicate_keys():
    assert parse_yaml("lr: 1e-3", "x") == {"lr": 1e-3}
    assert isinstance(parse_yaml("lr: 1e-3", "x")["lr"], float)
    with pytest.raises(ConfigError, match="duplicate key 'd'"):
        parse_yaml("settings:\n  d: 1\n  d: 2\n", "x")


def test_find_config_searches_explicit_then_cwd_then_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    packaged = resources.files("layerwise") / "configs" / "mlp-optimizers.yaml"
    assert find_config("mlp-optimizers") == packaged
    local = tmp_path / "configs" / "mlp-optimizers.yaml"
    local.parent.mkdir()
    local.write_text("experiment: mlp-optimizers\n")
    assert find_config("mlp-optimizers") == local
    explicit = tmp_path / "other.yaml"
    explicit.write_text("experiment: mlp-optimizers\n")
    assert find_config("mlp-optimizers", explicit) == explicit
    with pytest.raises(ConfigError, match="no config for experiment 'nope'"):
        find_config("nope")


def test_every_registered_experiment_ships_a_quick_and_a_full_config(tmp_path, monkeypatch):
    # From a folder without configs/, as after `pip install .`: the packaged ones are found.
    monkeypatch.chdir(tmp_path)
    names = sorted(registry.experiments())
    assert names
    for name in names:
        path = find_config(name)
        assert path == config_module.packaged_configs() / f"{name}.yaml"
        for quick in (False, True):
            assert load_config(path, quick=quick).experiment.name == name
    shipped = {entry.name for entry in config_module.packaged_configs().iterdir()}
    assert shipped == {f"{name}.yaml" for name in names}  # no config without an experiment


def test_the_configs_are_package_data():
    # A regular (non-editable) `pip install .` installs only what pyproject declares.
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    setuptools = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]
    assert "configs/*.yaml" in setuptools["package-data"]["layerwise"]


# Each bad input: (changes to the toy config or raw text, extra CLI args, expected fragments).
BAD_CONFIGS = {
    "unknown top-level field": ({"seed": 3}, [], ["seed: unknown field", "did you mean 'seeds'"]),
    "misspelt settings field": (
        {"settings": {"dd": 4}},
        [],
        ["settings.dd: unknown field", "did you mean 'd'"],
    ),
    "misspelt grid field": ({"grid": {"kapa": [1]}}, [], ["grid.kapa: unknown field"]),
    "misspelt method field": (
        {"methods": {"alpha": {"lrr": 0.1}}},
        [],
        ["methods.alpha.lrr: unknown field", "did you mean 'lr'"],
    ),
    "wrong type": ({"settings": {"d": "four"}}, [], ["settings.d: value 'four'", "integer"]),
    "impossible grid value": (
        {"grid": {"kappa": [1, 0.5]}},
        [],
        ["grid.kappa: value 0.5", "greater than or equal to 1"],
    ),
    "k > d across fields": ({"settings": {"d": 2, "k": 3}}, [], ["settings", "k=3 must be <= d=2"]),
    "negative step size": (
        {"methods": {"alpha": {"lr": -0.1}}},
        [],
        ["methods.alpha.lr: value -0.1", "greater than 0"],
    ),
    "unknown method": (
        {"methods": {"gamma": {}}},
        [],
        ["methods.gamma: unknown method 'gamma'", "'alpha', 'beta'"],
    ),
    "unknown algorithm of a label": (
        {"methods": {"fast": {"method": "delta"}}},
        [],
        ["methods.fast.method: unknown method 'delta'"],
    ),
    "unknown experiment": ({"experiment": "no-such"}, [], ["experiment: unknown experiment"]),
    "zero seeds": ({"seeds": 0}, [], ["seeds: value 0", "positive int"]),
    "repeated seeds": ({"seeds": [1, 1]}, [], ["seeds: value [1, 1]"]),
    "error in the second grid": (
        {"grid": [{"kappa": [1]}, {"d": [0]}]},
        [],
        ["grid.1.d: value 0"],
    ),
    "unknown key in quick": ({"quick": {"steps": 3}}, [], ["quick: value", "unknown key 'steps'"]),
    "bad value from --set": ({}, ["--set", "settings.d=0"], ["settings.d: value 0"]),
    "bad value from --seeds": ({}, ["--seeds", "-2"], ["seeds: value -2"]),
    "--set without =": ({}, ["--set", "settings.d"], ["--set: settings.d: expected KEY=VALUE"]),
    "bad value from --quick": (
        {"quick": {"settings": {"k": 9}}},
        ["--quick"],
        ["(--quick): settings (grid point kappa=1, scale=1.0): k=9 must be <= d=4"],
    ),
    "empty grid list": ({"grid": {"kappa": []}}, [], ["grid.kappa: an empty list"]),
    "invalid YAML": ("settings: [1, 2\n", [], ["invalid YAML"]),
    "duplicate key": ("experiment: toy\nseeds: 1\nseeds: 2\n", [], ["duplicate key 'seeds'"]),
    "name does not match the config": (
        {},
        ["--name", "mlp-optimizers"],
        ["experiment: the config is for 'toy'"],
    ),
    "unknown executor option": ({}, ["--executor", "local", "--address", "x:1"], ["--address"]),
    "zero workers": ({}, ["--workers", "0"], ["--workers must be >= 1"]),
    "unknown device": ({}, ["--device", "tpu"], ["--device: unknown device 'tpu'"]),
}


#: Cases refused for a command-line argument rather than for the file.
ARGUMENT_CASES = {"--set without =", "unknown executor option", "zero workers", "unknown device"}


@pytest.mark.parametrize("case", list(BAD_CONFIGS), ids=list(BAD_CONFIGS))
def test_bad_config_is_refused_with_status_2_naming_field_and_value(
    case, toy, write_config, tmp_path, capsys
):
    changes, extra, fragments = BAD_CONFIGS[case]
    path = write_config(text=changes) if isinstance(changes, str) else write_config(changes)
    name = "toy"
    if "--name" in extra:
        name = extra[extra.index("--name") + 1]
        extra = []
    out = tmp_path / "out"
    status = cli.main(["run", name, "--config", str(path), "--out", str(out), *extra])
    message = capsys.readouterr().err
    assert status == 2, message
    if case not in ARGUMENT_CASES:
        assert message.startswith(f"layerwise: error: {path}"), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert not out.exists()  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_is_refused_where_there_is_none(toy, write_config, tmp_path, capsys):
    out = tmp_path / "out"
    status = cli.main(
        ["run", "toy", "--config", str(write_config()), "--out", str(out), "--device", "cuda"]
    )
    assert status == 2
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err
    assert not out.exists()


def test_missing_config_is_refused(toy, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "toy", "--out", str(tmp_path / "out")]) == 2
    assert "no config for experiment 'toy'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert os.listdir(tmp_path) == []


def test_method_that_cannot_run_on_a_grid_point_is_refused_before_anything_runs(tmp_path):
    """The problem's own cross-check (here single-index: undamped kfac needs n > d + 1)."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        "experiment: single-index-alignment\n"
        "settings: {d: 16}\n"
        "grid: {n_over_d: [0.5, 4.0]}\n"
        "methods: {kfac: {damping: 0.0}}\n"
        "seeds: 1\n"
    )
    with pytest.raises(ConfigError, match=r"methods\.kfac: .*damping must be > 0.*n_over_d=0\.5"):
        load_config(path)
