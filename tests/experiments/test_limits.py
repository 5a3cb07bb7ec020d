"""Issue 17: values that validate as their type but cannot be meant are refused before a run."""

from __future__ import annotations

import pytest

from layerwise import cli


@pytest.mark.parametrize(
    ("name", "override", "words"),
    [
        ("mlp-optimizers", "methods.sgd.lr=.inf", ["methods.sgd.lr", "finite"]),
        ("mlp-optimizers", "methods.sgd.lr=1e300", ["methods.sgd.lr", "absurdly large"]),
        ("mlp-optimizers", "settings.noise=.inf", ["settings.noise", "finite"]),
        ("mlp-optimizers", "settings.hidden=true", ["settings.hidden", "bool is not a number"]),
        ("mlp-optimizers", "seeds=100000000", ["seeds", "100000000 seeds"]),
        ("linrep-kappa", "settings.d=1000000", ["settings", "GiB", "memory"]),
        ("single-index-risk", "settings.noise_std=.inf", ["settings.noise_std", "finite"]),
    ],
)
def test_bug_17_absurd_input_is_refused_before_anything_runs(
    name, override, words, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = ["run", name, "--quick", "--out", str(out), "--workers", "1", "--no-progress"]
    assert cli.main([*argv, "--set", override]) == 2
    error = capsys.readouterr().err
    for word in words:
        assert word in error
    assert not out.exists()


def test_bug_17_a_huge_seeds_flag_is_refused_without_expanding_it(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["run", "mlp-optimizers", "--quick", "--seeds", "100000000", "--out", str(out)]
    assert cli.main(argv) == 2
    assert "seeds" in capsys.readouterr().err
    assert not out.exists()
