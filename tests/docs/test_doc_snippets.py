"""The Python snippets of docs/*.md run as written.

Each file's ```` ```python ```` blocks run in order in one namespace, in a fresh working folder
that holds a tiny ``results/quick`` (``mlp-optimizers``, one seed, few steps), so snippets that
load results have something to load. A block preceded by the line ``<!-- snippet: skip -->``
(one that needs a long run, a GPU or several processes) is not run;
``<!-- snippet: shell -->`` before a ```` ```bash ```` block runs it too (``docs/own_settings.md``
walks its commands that way).
The optimizer pages assume a ``model`` and a ``loader``; :func:`preamble` provides small ones.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import matplotlib
import pytest

from layerwise import cli
from layerwise.experiments import registry

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(
    r"(?:^<!-- snippet: (?P<mark>\w+) -->\n)?^```(?P<lang>\w*)\n(?P<code>.*?)^```", re.M | re.S
)


def snippets(path: Path) -> list[tuple[str, str]]:
    """``(kind, code)`` of the blocks to run: kind ``python`` or ``shell``."""
    found = []
    for match in BLOCK.finditer(path.read_text()):
        mark, lang = match["mark"], match["lang"]
        if mark == "skip":
            continue
        if lang == "python":
            found.append(("python", match["code"]))
        elif lang == "bash" and mark == "shell":
            found.append(("shell", match["code"]))
    return found


def test_the_block_pattern_sees_marks_and_languages(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nx = 1\n```\n<!-- snippet: skip -->\n```python\nraise SystemExit\n```\n"
        "```bash\nrm -rf /\n```\n<!-- snippet: shell -->\n```bash\necho hi\n```\n"
    )
    assert snippets(page) == [("python", "x = 1\n"), ("shell", "echo hi\n")]


def preamble() -> dict:
    """The names the optimizer snippets assume: a small classifier and three batches."""
    import torch

    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10))
    loader = [
        (torch.randn(32, 20, generator=generator), torch.randint(10, (32,), generator=generator))
        for _ in range(3)
    ]
    return {"model": model, "loader": loader}


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("docs")
    argv = ["run", "mlp-optimizers", "--quick", "--out", str(folder / "results" / "quick")]
    argv += ["--seeds", "1", "--set", "settings.steps=10", "--workers", "1", "--no-progress"]
    assert cli.main(argv) == 0
    return folder


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.name)
def test_doc_snippets_run(path, quick_results, tmp_path, monkeypatch):
    blocks = snippets(path)
    if not blocks:
        pytest.skip(f"{path.name} has no snippet to run")
    matplotlib.use("Agg")
    for item in (quick_results / "results").iterdir():
        (tmp_path / "results").mkdir(exist_ok=True)
        os.symlink(item, tmp_path / "results" / item.name)
    monkeypatch.chdir(tmp_path)
    # A page that registers a problem (docs/adding_a_problem.md) leaves the registry as it was.
    registry.load_all()
    monkeypatch.setattr(registry, "_PROBLEMS", dict(registry._PROBLEMS))
    monkeypatch.setattr(registry, "_EXPERIMENTS", dict(registry._EXPERIMENTS))
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # A registered module, so that classes a snippet defines (dataclasses) find their module.
    module = types.ModuleType("doc_snippets")
    module.__dict__.update(preamble())
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    for number, (kind, code) in enumerate(blocks, 1):
        where = f"{path.name}, runnable block {number}"
        if kind == "python":
            exec(compile(code, where, "exec"), namespace)
        else:
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", code],
                env=environment,
                capture_output=True,
                text=True,
                timeout=240,
            )
            assert done.returncode == 0, f"{where}:\n{code}\n{done.stdout}\n{done.stderr}"
