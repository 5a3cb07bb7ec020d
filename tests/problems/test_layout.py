"""One layout for every problem (docs/adding_a_problem.md): the same files for the same roles,
registration only in ``experiments.py``, ``check_method`` in ``settings.py``."""

from __future__ import annotations

import ast
import importlib
import pathlib

from layerwise.experiments import registry

SOURCE = pathlib.Path(registry.__file__).parents[1]
ROLES = ("settings", "data", "methods", "run", "claims", "figures", "experiments")


def registered_problem_packages() -> dict[str, str]:
    """problem name -> the package its settings model lives in."""
    registry.load_all()
    return {
        name: problem.settings_model.__module__.rsplit(".", 1)[0]
        for name, problem in registry._PROBLEMS.items()
        if problem.settings_model.__module__.startswith("layerwise.problems.")
    }


def test_every_registered_problem_has_the_layout():
    packages = registered_problem_packages()
    assert {"linrep", "single_index", "single_index_many_steps", "mlp", "training"} <= set(packages)
    for name, package in packages.items():
        folder = SOURCE / package.removeprefix("layerwise.").replace(".", "/")
        missing = [role for role in ROLES if not (folder / f"{role}.py").is_file()]
        assert missing == [], f"problem {name} ({package}) lacks {missing}"
        assert f"{package}.experiments" in registry.EXPERIMENT_MODULES


def test_experiments_modules_only_register_and_check_method_lives_in_settings():
    for name, package in registered_problem_packages().items():
        text = importlib.import_module(f"{package}.experiments").__file__
        source = pathlib.Path(text).read_text(encoding="utf-8")
        assert "Claim(" not in source, f"{name}: Claim objects belong in claims.py"
        assert "def " not in source.replace("def _experiment(", ""), f"{name}: code in experiments"
        check = registry._PROBLEMS[name].check_method
        if check is not None:
            assert (check.__module__, check.__name__) == (f"{package}.settings", "check_method")


def test_claim_objects_live_only_in_claims_modules():
    for name, package in registered_problem_packages().items():
        folder = SOURCE / package.removeprefix("layerwise.").replace(".", "/")
        outside = [
            path.name
            for path in sorted(folder.glob("*.py"))
            if path.name != "claims.py" and "Claim(" in path.read_text(encoding="utf-8")
        ]
        assert outside == [], f"problem {name}: Claim objects in {outside}, not claims.py"


def imported_modules(path: pathlib.Path) -> set[str]:
    """Every module an ``import`` statement of ``path`` names (``from a import b``: a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_the_experiment_system_does_not_import_the_optimizers():
    assert "layerwise.optim" in imported_modules(SOURCE / "problems" / "mlp" / "methods.py")
    for path in sorted((SOURCE / "experiments").rglob("*.py")):
        optim_imports = [
            name for name in imported_modules(path) if name.startswith("layerwise.optim")
        ]
        assert optim_imports == [], path
