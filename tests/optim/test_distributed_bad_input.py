"""Misuse under a process group fails with a clear error on every rank, and never hangs: an
optimizer built before ``init_process_group``, a model whose layers differ across ranks, KFAC
factors captured on one rank only (2 gloo ranks, one spawn; the parent waits at most 90 s).
And without a process group: a group passed before ``torch.distributed`` is initialized."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest
import torch
from distributed_bad_input import worker

from layerwise.optim import KFAC
from layerwise.optim.distributed import resolve_group

WORLD = 2


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("bad_input")
    context = multiprocessing.get_context("spawn")
    init_file = str(directory / "init")
    processes = [
        context.Process(target=worker, args=(rank, WORLD, init_file, str(directory)))
        for rank in range(WORLD)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=90)
    hung = [rank for rank, process in enumerate(processes) if process.is_alive()]
    for process in processes:
        if process.is_alive():
            process.kill()
    assert not hung, f"ranks {hung} hung"
    results = []
    for rank in range(WORLD):
        path = Path(directory) / f"rank{rank}.pt"
        assert path.exists(), f"rank {rank} wrote no results"
        result = torch.load(path, weights_only=False)
        assert "error" not in result, f"rank {rank}:\n{result['error']}"
        results.append(result)
    return results


@pytest.mark.parametrize("name", ["before_init_shampoo", "before_init_kfac"])
def test_optimizer_built_before_init_refuses_to_step(ranks: list[dict], name: str) -> None:
    for result in ranks:
        message = result[name]
        assert message is not None, name
        assert "before torch.distributed.init_process_group" in message
        assert "process_group=None" in message


@pytest.mark.parametrize("name", ["differ_kfac", "differ_shampoo_split", "differ_muon"])
def test_model_differing_across_ranks_is_refused_alike(ranks: list[dict], name: str) -> None:
    messages = [result[name] for result in ranks]
    assert messages[0] is not None and messages[0] == messages[1], messages
    assert "differs across ranks" in messages[0]
    assert "(8, 6)" in messages[0] and "(9, 6)" in messages[0]  # the first layer's weight


def test_same_model_is_accepted(ranks: list[dict]) -> None:
    assert [result["same_model"] for result in ranks] == [None] * WORLD


def test_factors_captured_on_one_rank_only_are_refused_alike(ranks: list[dict]) -> None:
    messages = [result["partial_capture"] for result in ranks]
    assert messages[0] is not None and messages[0] == messages[1], messages
    assert "captured on some ranks only" in messages[0]
    assert [result["after_partial"] for result in ranks] == [None] * WORLD


def test_group_before_init_is_refused() -> None:
    with pytest.raises(ValueError, match="not initialized"):
        resolve_group(object())
    with pytest.raises(ValueError, match="not initialized"):
        KFAC(torch.nn.Linear(3, 2), loss="mse", process_group=object())
