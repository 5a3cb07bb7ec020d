"""The one seeding helper: its seeds from the documented hash, stream independence, refusals,
and that every problem draws from it (paired streams, no other source)."""

from __future__ import annotations

import hashlib
import pathlib

import pytest
import torch

from layerwise.problems import seeding

PROBLEMS = pathlib.Path(seeding.__file__).parent


def test_seed_is_the_documented_hash_prefix():
    digest = hashlib.sha256(b"linrep:12:train").digest()
    expected = int.from_bytes(digest[:8], "little") // 2
    assert seeding.seed_of("linrep", 12, "train") == expected
    assert 0 <= expected < 2**63


def test_generator_draws_from_that_seed_and_repeats():
    draw = torch.randn(4, generator=seeding.generator("mlp", 3, "init"), dtype=torch.float64)
    direct = torch.Generator().manual_seed(seeding.seed_of("mlp", 3, "init"))
    torch.testing.assert_close(draw, torch.randn(4, generator=direct, dtype=torch.float64))
    again = torch.randn(4, generator=seeding.generator("mlp", 3, "init"), dtype=torch.float64)
    assert torch.equal(draw, again)


def test_every_part_of_the_key_gives_another_stream():
    keys = [("mlp", 0, "init"), ("mlp", 1, "init"), ("mlp", 0, "data"), ("linrep", 0, "init")]
    seeds = {seeding.seed_of(*key) for key in keys}
    assert len(seeds) == len(keys)
    # "1:0" against "10" is the collision a key without separators would have.
    assert seeding.seed_of("a", 10, "b") != seeding.seed_of("a", 1, "0b")


@pytest.mark.parametrize(
    ("problem", "seed", "purpose", "field"),
    [
        ("mlp", -1, "init", "seed"),
        ("mlp", True, "init", "seed"),
        ("mlp", 1.5, "init", "seed"),
        ("", 0, "init", "problem"),
        ("mlp", 0, "a:b", "purpose"),
    ],
)
def test_bad_keys_are_refused_by_name(problem, seed, purpose, field):
    with pytest.raises(ValueError, match=field):
        seeding.seed_of(problem, seed, purpose)


def test_no_problem_seeds_its_streams_another_way():
    """Problems draw from :mod:`seeding` only. ``training`` keeps its ``SeedSequence`` streams:
    the README's measured full runs of its workloads come from them."""
    other_ways = ("crc32", "SeedSequence", "hashlib.sha256(f", "torch.manual_seed(")
    offenders = [
        f"{path.relative_to(PROBLEMS)}: {word}"
        for path in sorted(PROBLEMS.rglob("*.py"))
        if path.name != "seeding.py" and path.parent.name != "training"
        for word in other_ways
        if word in path.read_text(encoding="utf-8")
    ]
    assert offenders == []
