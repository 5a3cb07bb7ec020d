"""Experiment configs: YAML files shipped in ``layerwise/configs/`` (or a user's own in
``./configs/``, or any file given with ``--config``), validated before anything runs.

A config file::

    experiment: linrep-kappa          # a registered experiment (-> its problem)
    settings: {d: 50, k: 3}           # fixed problem settings
    grid:                             # settings fields; lists expand into a product
      kappa_x: [1, 10, 100, 1000]     # (or a LIST of such mappings: the union of their products)
    methods:                          # label -> hyperparameters; optional `method` names the
      sgd: {}                         # algorithm (default: the label)
      kfac_half: {method: kfac, lr: 0.5}
    seeds: 10                         # seeds 0..9, or an explicit list of ints
    quick:                            # overrides for --quick, deep-merged
      settings: {d: 16}
      seeds: 2

Resolution order: the file, then the ``quick`` block (with ``--quick``; mappings merge, lists
and scalars replace), then each ``--set dotted.path=value`` (value parsed as YAML). The merged
config is then checked field by field: every grid point must construct
``problem.settings_model(**{**settings, **point})`` and every method its
``problem.method_models[algorithm]``. Any failure raises :class:`ConfigError`, whose message
names the file, the field path (``grid.kappa_x``, ``methods.kfac_half.lr``) and the bad value.
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from layerwise.experiments import limits, registry
from layerwise.experiments.registry import Experiment, MethodSpec, Problem

#: The folder, relative to the working directory, whose ``NAME.yaml`` overrides a packaged config.
LOCAL_CONFIGS = "configs"

#: Keys a ``quick`` block may override.
QUICK_KEYS = ("settings", "grid", "methods", "seeds")


class ConfigError(ValueError):
    """A config that cannot run: ``source`` (file), ``path`` (dotted field) and ``message``."""

    def __init__(self, source: str, path: str, message: str):
        self.source, self.path, self.message = source, path, message
        location = f"{source}: {path}" if path else source
        super().__init__(f"{location}: {message}")


# --------------------------------------------------------------------------------------------
# Finding and reading files


def find_config(name: str, explicit: str | Path | None = None) -> Path | Traversable:
    """The config file of experiment ``name``.

    Searched in order: ``explicit`` (a ``--config`` path), ``./configs/NAME.yaml`` (a user's own
    override in the working folder), then the config shipped with the package
    (``layerwise/configs/NAME.yaml``, read with :mod:`importlib.resources`). Raises
    :class:`ConfigError` naming every place looked at.
    """
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(str(path), "", "config file not found")
        return path
    candidates = [directory / f"{name}.yaml" for directory in config_search_dirs()]
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(path) for path in candidates)
    raise ConfigError(f"{name}.yaml", "", f"no config for experiment {name!r} (looked in {looked})")


def config_search_dirs() -> list[Path | Traversable]:
    """The directories :func:`find_config` searches (without ``--config``), in order."""
    return [Path.cwd() / LOCAL_CONFIGS, packaged_configs()]


def packaged_configs() -> Traversable:
    """The configs shipped with the package: ``layerwise/configs/`` (package data).

    A real directory for every installed or editable package on a file system; for other
    loaders (a zip) a :class:`~importlib.resources.abc.Traversable` that :func:`load_config`
    reads too.
    """
    return resources.files("layerwise") / "configs"


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML loader that refuses duplicate keys and reads ``1e-3`` as a float (YAML 1.2)."""

    def construct_mapping(self, node, deep=False):
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# PyYAML follows YAML 1.1, where `1e-3` (no dot) is a string; configs write step sizes that way.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ConfigError(source, "", f"invalid YAML: {error}") from None


def read_config_file(path: Path | Traversable) -> dict[str, Any]:
    data = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", f"expected a mapping at the top level, got {data!r}")
    return data


# --------------------------------------------------------------------------------------------
# Merging and overrides


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``: mappings merge recursively, lists and scalars replace."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"settings.d=64"`` -> ``(["settings", "d"], 64)``; the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", text, "expected KEY=VALUE with a dotted KEY, e.g. settings.d=64")
    path = key.strip().split(".")
    if any(not part for part in path):
        raise ConfigError("--set", text, f"empty component in key {key!r}")
    return path, parse_yaml(value, f"--set {text}")


def apply_override(config: dict[str, Any], path: Sequence[str], value: Any) -> dict[str, Any]:
    """A copy of ``config`` with the field at ``path`` set to ``value``.

    Missing mappings along the path are created; a numeric component indexes a list (for
    ``grid`` given as a list of grids: ``grid.1.kappa_f=[1, 3]``).
    """
    dotted = ".".join(path)
    if path[0] == "quick":
        raise ConfigError("--set", dotted, "--set applies after --quick; set the field itself")
    root = _copy_tree(config)
    node: Any = root
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        here = ".".join(path[:depth]) or "the config"
        if isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        elif isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    "--set", dotted, f"{here} is a list of {len(node)}; {part!r} is not an index"
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        else:
            raise ConfigError("--set", dotted, f"{here} is {node!r}, not a mapping")
    return root


def _copy_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_tree(item) for item in value]
    return value


# --------------------------------------------------------------------------------------------
# The file's structure


def _check_grid(value: Any) -> list[dict[str, Any]]:
    grids = value if isinstance(value, list) else [value]
    if not grids:
        raise ValueError("an empty list of grids has no points")
    for grid in grids:
        if not isinstance(grid, dict):
            raise ValueError("must be a mapping (settings field -> values) or a list of them")
    return grids


class FileConfig(BaseModel):
    """The structure of a config file (the problem-specific parts are checked afterwards)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: str
    settings: dict[str, Any] = {}
    grid: list[dict[str, Any]] = [{}]
    methods: dict[str, dict[str, Any]]
    seeds: tuple[int, ...]
    quick: dict[str, Any] = {}

    @field_validator("settings", "quick", mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("grid", mode="before")
    @classmethod
    def _grid(cls, value: Any) -> Any:
        return [{}] if value is None else _check_grid(value)

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, value: Any) -> Any:
        if not isinstance(value, dict) or not value:
            raise ValueError("must be a non-empty mapping: label -> hyperparameters")
        return {label: {} if params is None else params for label, params in value.items()}

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, value: Any) -> Any:
        def is_count(item: Any) -> bool:
            return isinstance(item, int) and not isinstance(item, bool)

        too_many = limits.seed_count_problem(value)
        if too_many:
            raise ValueError(too_many)
        if is_count(value) and value >= 1:
            return tuple(range(value))
        if (
            isinstance(value, list)
            and value
            and all(is_count(seed) and seed >= 0 for seed in value)
            and len(set(value)) == len(value)
        ):
            return tuple(value)
        raise ValueError(
            "must be a positive int N (seeds 0..N-1) or a non-empty list of distinct ints >= 0"
        )

    @field_validator("quick")
    @classmethod
    def _quick(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key not in QUICK_KEYS:
                raise ValueError(f"unknown key {key!r} in quick; allowed: {list(QUICK_KEYS)}")
        return value


# --------------------------------------------------------------------------------------------
# Resolution against the problem's models


@dataclass(frozen=True)
class GridPoint:
    """One grid point: its grid ``values`` and the validated settings model."""

    values: Mapping[str, Any]
    settings: BaseModel


@dataclass(frozen=True)
class ResolvedConfig:
    """A validated config, ready to expand into runs.

    ``grid_keys`` is the union of the keys of all grids (the runner adds one column per key);
    ``points`` are the distinct grid points in config order; ``merged`` is the config after
    ``quick`` and ``--set`` (stored with the results).
    """

    source: str
    experiment: Experiment
    problem: Problem
    settings: Mapping[str, Any]
    grid_keys: tuple[str, ...]
    points: tuple[GridPoint, ...]
    methods: Mapping[str, MethodSpec]
    seeds: tuple[int, ...]
    merged: Mapping[str, Any]


def load_config(
    path: str | Path | Traversable, *, quick: bool = False, overrides: Sequence[str] = ()
) -> ResolvedConfig:
    """Read, merge (``quick``, then each ``--set`` override) and validate a config file."""
    source = str(path)
    data = read_config_file(Path(path) if isinstance(path, str) else path)
    return resolve_config(data, source=source, quick=quick, overrides=overrides)


def resolve_config(
    data: Mapping[str, Any],
    *,
    source: str = "<config>",
    quick: bool = False,
    overrides: Sequence[str] = (),
) -> ResolvedConfig:
    """Validate a config mapping (see the module docstring); raise :class:`ConfigError`."""
    if quick:
        source = f"{source} (--quick)"
    file_config = _validate_structure(data, source)
    merged = {k: v for k, v in data.items() if k != "quick"}
    if quick:
        merged = deep_merge(merged, file_config.quick)
    for text in overrides:
        merged = apply_override(merged, *parse_override(text))
    config = _validate_structure(merged, source)

    try:
        experiment = registry.experiment(config.experiment)
    except KeyError as error:
        raise ConfigError(source, "experiment", str(error.args[0])) from None
    problem = registry.problem(experiment.problem)

    settings_fields = _field_names(problem.settings_model)
    _check_keys(source, "settings", config.settings, settings_fields)
    points: dict[str, GridPoint] = {}
    for index, grid in enumerate(config.grid):
        grid_path = "grid" if len(config.grid) == 1 else f"grid.{index}"
        _check_keys(source, grid_path, grid, settings_fields)
        axes = []
        for key, values in grid.items():
            values = values if isinstance(values, list) else [values]
            if not values:
                raise ConfigError(source, f"{grid_path}.{key}", "an empty list has no grid points")
            axes.append([(key, value) for value in values])
        for combination in itertools.product(*axes):
            values = dict(combination)
            settings = _validate_point(problem, config.settings, values, source, grid_path)
            identity = settings.model_dump_json()
            points.setdefault(identity, GridPoint(values=values, settings=settings))
    grid_keys = tuple(dict.fromkeys(key for grid in config.grid for key in grid))

    methods = {
        label: _validate_method(problem, label, params, source)
        for label, params in config.methods.items()
    }
    _check_limits(source, experiment, points.values(), methods, config.seeds)
    if problem.check_method is not None:
        for point in points.values():
            for label, spec in methods.items():
                try:
                    problem.check_method(point.settings, spec.name, spec.params)
                except ValueError as error:
                    where = ", ".join(f"{k}={v!r}" for k, v in point.values.items())
                    at = f" at grid point {where}" if where else ""
                    raise ConfigError(source, f"methods.{label}", f"{error}{at}") from None
    merged = {**merged, "seeds": list(config.seeds)}
    return ResolvedConfig(
        source=source,
        experiment=experiment,
        problem=problem,
        settings=config.settings,
        grid_keys=grid_keys,
        points=tuple(points.values()),
        methods=methods,
        seeds=config.seeds,
        merged=merged,
    )


def _validate_structure(data: Mapping[str, Any], source: str) -> FileConfig:
    try:
        return FileConfig.model_validate(dict(data))
    except ValidationError as error:
        raise _config_error(source, "", error, FileConfig) from None


def _validate_point(
    problem: Problem,
    settings: Mapping[str, Any],
    values: Mapping[str, Any],
    source: str,
    grid_path: str,
) -> BaseModel:
    try:
        model = problem.settings_model(**{**settings, **values})
    except ValidationError as error:
        loc = [str(part) for part in error.errors()[0]["loc"]]
        if loc and loc[0] in values:
            path = ".".join([grid_path, *loc])
        elif loc:
            path = ".".join(["settings", *loc])
        else:
            point = ", ".join(f"{k}={v!r}" for k, v in values.items())
            path = f"settings (grid point {point})" if point else "settings"
        raise _config_error(source, path, error, problem.settings_model, relative=False) from None
    for key, message in limits.value_problems(model, {**settings, **values}):
        where = grid_path if key.split(".")[0] in values else "settings"
        raise ConfigError(source, f"{where}.{key}", message)
    return model


def _validate_method(
    problem: Problem, label: str, params: Mapping[str, Any], source: str
) -> MethodSpec:
    params = dict(params)
    explicit = "method" in params
    algorithm = params.pop("method", label)
    if algorithm not in problem.method_models:
        path = f"methods.{label}.method" if explicit else f"methods.{label}"
        raise ConfigError(
            source,
            path,
            f"unknown method {algorithm!r} for problem {problem.name!r}; "
            f"known: {sorted(problem.method_models)}",
        )
    model = problem.method_models[algorithm]
    _check_keys(source, f"methods.{label}", params, _field_names(model))
    try:
        spec = MethodSpec(name=algorithm, params=model(**params))
    except ValidationError as error:
        raise _config_error(source, f"methods.{label}", error, model) from None
    for key, message in limits.value_problems(spec.params, params):
        raise ConfigError(source, f"methods.{label}.{key}", message)
    return spec


def _check_limits(source, experiment, points, methods, seeds) -> None:
    """Refuse a config whose runs would not fit: too many runs, or a run too large for memory."""
    points = list(points)
    method_groups = len(methods) if experiment.split_methods else 1
    seed_groups = -(-len(seeds) // max(experiment.seeds_per_run, 1))
    too_many = limits.run_count_problem(len(points), method_groups, seed_groups)
    if too_many:
        raise ConfigError(source, "seeds", too_many)
    for point in points:
        too_large = limits.memory_problem(point.settings)
        if too_large:
            where = ", ".join(f"{k}={v!r}" for k, v in point.values.items())
            path = f"settings (grid point {where})" if where else "settings"
            raise ConfigError(source, path, too_large)


def _field_names(model: type[BaseModel]) -> set[str]:
    names = set(model.model_fields)
    names.update(info.alias for info in model.model_fields.values() if info.alias)
    # Inputs a settings model converts into a field (a size given as n or as n_over_d).
    names.update(getattr(model, "derived_inputs", ()))
    return names


def _check_keys(source: str, path: str, given: Mapping[str, Any], allowed: set[str]) -> None:
    # Checked here as well as by the models, so a model that forgets extra="forbid" still
    # cannot swallow a misspelt key.
    for key in given:
        if key not in allowed:
            raise ConfigError(source, f"{path}.{key}", _unknown_field(str(key), allowed))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` (``""`` if none is close),
    compared case-insensitively (kappa_F -> kappa_f, not kappa_x) and shown as spelled."""
    by_lower = {name.lower(): name for name in sorted(choices, reverse=True)}
    close = difflib.get_close_matches(word.lower(), sorted(by_lower), n=1)
    return f"; did you mean {by_lower[close[0]]!r}?" if close else ""


def _unknown_field(key: str, allowed: set[str]) -> str:
    return f"unknown field{did_you_mean(key, allowed)} (allowed: {', '.join(sorted(allowed))})"


def _config_error(
    source: str,
    prefix: str,
    error: ValidationError,
    model: type[BaseModel],
    *,
    relative: bool = True,
) -> ConfigError:
    """The first error of a pydantic ``ValidationError`` as a :class:`ConfigError`.

    ``relative``: the error's location is appended to ``prefix`` (else ``prefix`` is the path).
    """
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    path = ".".join([prefix, *loc] if prefix and relative else [prefix] if prefix else loc)
    if first["type"] == "extra_forbidden":
        return ConfigError(source, path, _unknown_field(loc[-1], _field_names(model)))
    if first["type"] == "missing":
        return ConfigError(source, path, "missing required field")
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:
        # A check across fields (k <= d): the path already names the point, the message the values.
        return ConfigError(source, path, message)
    return ConfigError(source, path, f"value {first['input']!r}: {message}")
