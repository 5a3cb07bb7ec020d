"""Data-parallel training: 2 gloo ranks under DistributedDataParallel, each on its half of
every batch, against one process on the whole batches (float64).

One spawn runs every case (spawning costs seconds); each rank writes its parameters after
every step to a file and the parent asserts. Every collective runs under a 60 s timeout.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest
import torch
from distributed_cases import train_case, worker
from torch import distributed as dist

from layerwise.optim import KFAC, Muon
from layerwise.optim.distributed import assign_owners, refresh_cost, resolve_group
from layerwise.optim.kronecker import STATISTIC_KEYS

WORLD = 2

#: Compared with the single-process run to 1e-10 and across ranks bit for bit.
EXACT_CASES = [
    {"name": "shampoo", "optimizer": "shampoo", "knobs": {"lr": 1e-2, "damping": 1e-6}},
    {"name": "muon", "optimizer": "muon", "knobs": {"lr": 2e-2}},
    {"name": "kfac_ggn", "optimizer": "kfac", "knobs": {"curvature": "ggn", "refresh_every": 2}},
    {"name": "kfac_empirical", "optimizer": "kfac", "knobs": {"refresh_every": 1}},
    {"name": "kfac_inner", "optimizer": "kfac", "knobs": {"refresh_every": 1}, "wrapped": False},
    {
        "name": "kfac_no_sync",
        "optimizer": "kfac",
        "knobs": {"refresh_every": 1},
        "micro_batches": 2,
    },
    {"name": "ekfac", "optimizer": "kfac", "knobs": {"ekfac": True, "lr": 1e-2}},
]
#: KFAC's factor all-reduce in flight between steps, folded at the next step or before a
#: refresh (refreshes every 3 steps; the EMA, ``latest``, statistics every 2 steps): the
#: single-process run to 1e-10.
OVERLAP_CASES = [
    {"name": "kfac_overlap", "optimizer": "kfac", "knobs": {"refresh_every": 3}},
    {
        "name": "kfac_overlap_latest",
        "optimizer": "kfac",
        "knobs": {"refresh_every": 3, "accumulation": "latest", "damping": 1e-2},
    },
    {
        "name": "kfac_overlap_every_2",
        "optimizer": "kfac",
        # statistics at steps 1 and 3, refreshes at 1 and 4 (of a step without statistics)
        "knobs": {"refresh_every": 3, "statistics_every": 2, "statistics_decay": 0.5},
    },
]
#: Bit for bit the uninterrupted overlapped run: a checkpoint (``state_dict()`` on every rank)
#: between refreshes, resumed; rank 0 alone saving between steps while the other rank goes on
#: (no collective in ``state_dict()``: no hang, no mismatched collectives); every rank waiting
#: right after every step (the synchronous every-step reduction).
OVERLAP_RESUME = {
    **OVERLAP_CASES[0],
    "name": "kfac_overlap_resume",
    "resume": "state_dict",
    "resume_at": 2,
}
RANK0_SAVES = {**OVERLAP_CASES[0], "name": "kfac_rank0_saves", "rank0_saves_at": 2}
WAIT_EVERY_STEP = {**OVERLAP_CASES[0], "name": "kfac_wait_every_step", "wait_every_step": True}
SAME_AS_OVERLAP = [OVERLAP_RESUME, RANK0_SAVES, WAIT_EVERY_STEP]
#: SOAP's eigenbases are functions of its statistics (issue 12, matrix.stable_eigenbasis): with
#: Adam's eps at 1e-4 it equals the single process to 1e-10, replicated and split.
SOAP_EXACT_CASES = [
    {"name": "soap_eps", "optimizer": "soap", "knobs": {"lr": 1e-2, "eps": 1e-4}},
    {
        "name": "soap_eps_power_qr",
        "optimizer": "soap",
        "knobs": {"lr": 1e-2, "eps": 1e-4, "basis_refresh": "power_qr", "refresh_every": 2},
    },
]
SOAP_EXACT_CASES += [
    {**case, "name": case["name"] + "_split", "distributed": "split"} for case in SOAP_EXACT_CASES
]
#: At the default eps 1e-8 Adam's normalization turns the round-off of coordinates that are
#: zero in exact arithmetic into steps ~1e-17 / eps (tests/optim/test_soap_determinism.py):
#: measured 2e-9 from the single process (with round-off-decided bases: 1.2e-2).
SOAP_ROUND_OFF_GAP = 1e-7
#: Equal across ranks bit for bit (to the single process: SOAP within SOAP_ROUND_OFF_GAP;
#: mc_fisher's ranks sample differently by design).
RANK_CASES = [
    {"name": "soap", "optimizer": "soap", "knobs": {"lr": 1e-2}},
    {"name": "kfac_mc_fisher", "optimizer": "kfac", "knobs": {"curvature": "mc_fisher"}},
    # eigh refreshes at steps 1 and 3; the split sends no second moment after an eigh refresh.
    {"name": "soap_every_2", "optimizer": "soap", "knobs": {"lr": 1e-2, "refresh_every": 2}},
]
#: distributed="split": each block's refresh (Muon: Newton–Schulz) on one rank, broadcast.
SPLIT_CASES = [
    {**case, "name": case["name"] + "_split", "distributed": "split"}
    for case in [*EXACT_CASES[:4], EXACT_CASES[-1], RANK_CASES[0], *RANK_CASES[2:]]
]
#: A singular factor in exact mode: the failure policy raises on both ranks (no hang).
FAILING = {
    "name": "kfac_exact_singular_split",
    "optimizer": "kfac",
    "knobs": {"exact": True},
    "distributed": "split",
    "expect_error": True,
}
#: float32 parameters: bf16 preconditioners and Newton–Schulz results are broadcast as bytes.
#: (bf16 application round-off keeps float32 2-rank runs ~1e-2 from one process, so they are
#: compared with the replicated 2-rank float32 run.)
FLOAT32_CASES = [
    {**case, "name": case["name"] + "_f32", "dtype": "float32"}
    for case in [EXACT_CASES[1], EXACT_CASES[3]]
]
SPLIT_CASES += [
    {**case, "name": case["name"] + "_split", "distributed": "split"} for case in FLOAT32_CASES
]
#: FSDP2 (fully_shard on every Linear and the root): DTensor parameters sharded on dim 0
#: (the 3-row output layer unevenly). Compared with the single-process run to 1e-10.
FSDP_EXACT_CASES = [
    {**case, "name": case["name"] + "_fsdp", "wrapper": "fsdp"}
    for case in [
        EXACT_CASES[0],
        EXACT_CASES[1],
        EXACT_CASES[3],
        EXACT_CASES[-1],
        SPLIT_CASES[0],
        SPLIT_CASES[1],
        SPLIT_CASES[3],
    ]
]
FSDP_EXACT_CASES[0]["keep_state"] = True
FSDP_SOAP = {**RANK_CASES[0], "name": "soap_fsdp", "wrapper": "fsdp"}
#: Save after 2 of 4 steps (optimizer.state_dict(), or DCP), load into a fresh model and
#: optimizer, continue: bit for bit the uninterrupted FSDP2 run ("model_only", where the
#: optimizer starts afresh, must differ).
RESUME_CASES = [
    {
        **base,
        "name": f"{base['name']}_{how}",
        "uninterrupted": base["name"],
        "resume": how,
        "resume_at": 2,
    }
    for base, how in [
        (FSDP_EXACT_CASES[0], "state_dict"),
        (FSDP_EXACT_CASES[2], "state_dict"),
        (FSDP_EXACT_CASES[0], "dcp"),
        (FSDP_EXACT_CASES[1], "dcp"),
        (FSDP_EXACT_CASES[2], "dcp"),
        (FSDP_EXACT_CASES[3], "dcp"),
        (FSDP_SOAP, "dcp"),
        (FSDP_EXACT_CASES[0], "model_only"),
    ]
]
#: KFAC's extra backward passes need unsharded weights: refused under FSDP2.
FSDP_REFUSED = {
    "name": "kfac_ggn_fsdp",
    "optimizer": "kfac",
    "knobs": {"curvature": "ggn"},
    "wrapper": "fsdp",
    "expect_error": True,
}
FSDP_CASES = [*FSDP_EXACT_CASES, FSDP_SOAP, *RESUME_CASES]
#: distributed="shard": each matrix parameter's whole step on its owner, the directions
#: broadcast. The single process to 1e-10 (SOAP at eps 1e-4, as above), under DDP and FSDP2.
SHARD_CASES = [
    {**case, "name": case["name"] + "_shard", "distributed": "shard"}
    for case in [EXACT_CASES[0], EXACT_CASES[1], *SOAP_EXACT_CASES[:2], FSDP_EXACT_CASES[0]]
]
SHARD_CASES[0]["keep_state"] = True
SHARD_CASES[0]["consolidate"] = True
#: Resumed after 2 of 4 steps: bit for bit the uninterrupted sharded run.
SHARD_RESUME_CASES = [
    {**base, "name": f"{base['name']}_{how}", "uninterrupted": base["name"], "resume": how}
    for base, how in [
        (SHARD_CASES[0], "consolidated"),
        (SHARD_CASES[0], "dcp"),
        (SHARD_CASES[2], "dcp"),
        (SHARD_CASES[1], "dcp"),
    ]
]
for _case in SHARD_RESUME_CASES:
    _case.update(resume_at=2, keep_state=False, consolidate=False)
#: The float32 defaults (Muon's Newton–Schulz in bf16): the replicated 2-rank run, up to the
#: order of the shape scale's product (the sharded direction is materialized before the
#: learning rate, in float32).
SHARD_FLOAT32 = {**FLOAT32_CASES[0], "name": "muon_f32_shard", "distributed": "shard"}
#: A failed refresh raises (max_consecutive_failures=0) on every rank, not only on the owner.
SHARD_FAILING = {
    "name": "shampoo_singular_shard",
    "optimizer": "shampoo_raising",
    "knobs": {"exact": True, "damping": 0.0},
    "distributed": "shard",
    "expect_error": True,
}
SHARD_ALL = [*SHARD_CASES, *SHARD_RESUME_CASES, SHARD_FLOAT32]
CASES = EXACT_CASES + RANK_CASES + FLOAT32_CASES + SPLIT_CASES + FSDP_CASES + SOAP_EXACT_CASES
CASES += [*OVERLAP_CASES, *SAME_AS_OVERLAP, *SHARD_ALL]


def _spawn(tmp_path: Path, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    context = multiprocessing.get_context("spawn")
    init_file = tmp_path / "init"
    processes = [
        context.Process(target=worker, args=(rank, WORLD, str(init_file), str(tmp_path), cases))
        for rank in range(WORLD)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=150)
    for process in processes:
        if process.is_alive():
            process.kill()
    results = []
    for rank in range(WORLD):
        path = tmp_path / f"rank{rank}.pt"
        assert path.exists(), f"rank {rank} wrote no results (exit code {processes[rank].exitcode})"
        result = torch.load(path, weights_only=False)
        assert "error" not in result, f"rank {rank}:\n{result['error']}"
        results.append(result)
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return _spawn(tmp_path_factory.mktemp("ddp"), [*CASES, FAILING, FSDP_REFUSED, SHARD_FAILING])


def _max_gap(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> float:
    return max(
        float((x - y).abs().max())
        for step_a, step_b in zip(a, b, strict=True)
        for x, y in zip(step_a, step_b, strict=True)
    )


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_ranks_are_bit_identical(ranks: list[dict[str, Any]], case: dict[str, Any]) -> None:
    first, second = (r[case["name"]]["params"] for r in ranks)
    assert _max_gap(first, second) == 0.0


@pytest.mark.parametrize(
    "case", EXACT_CASES + OVERLAP_CASES, ids=[c["name"] for c in EXACT_CASES + OVERLAP_CASES]
)
def test_ddp_equals_one_process(ranks: list[dict[str, Any]], case: dict[str, Any]) -> None:
    alone = train_case({k: v for k, v in case.items() if k != "micro_batches"})
    gap = _max_gap(ranks[0][case["name"]]["params"], alone["params"])
    assert gap < 1e-10, gap
    moved = _max_gap(alone["params"][-1:], [list(train_case_start())])
    assert moved > 1e-3  # the steps are not trivially equal


@pytest.mark.parametrize("case", SOAP_EXACT_CASES, ids=[c["name"] for c in SOAP_EXACT_CASES])
def test_soap_ddp_equals_one_process(ranks: list[dict[str, Any]], case: dict[str, Any]) -> None:
    alone = train_case(_without(case, "distributed"))
    gap = _max_gap(ranks[0][case["name"]]["params"], alone["params"])
    assert gap < 1e-10, gap
    assert _max_gap(alone["params"][-1:], [train_case_start()]) > 1e-3


def train_case_start() -> list[torch.Tensor]:
    from distributed_cases import make_model

    return [p.detach().clone() for p in make_model().parameters()]


@pytest.mark.parametrize("case", RANK_CASES, ids=[c["name"] for c in RANK_CASES])
def test_rank_cases_train(ranks: list[dict[str, Any]], case: dict[str, Any]) -> None:
    losses = ranks[0][case["name"]]["losses"]
    assert all(torch.isfinite(torch.tensor(losses)))
    alone = train_case(case)
    if case["optimizer"] == "soap":  # equal up to Adam's round-off floor
        gap = _max_gap(ranks[0][case["name"]]["params"], alone["params"])
        assert gap < SOAP_ROUND_OFF_GAP, gap


@pytest.mark.parametrize("case", SPLIT_CASES, ids=[c["name"] for c in SPLIT_CASES])
def test_split_equals_replicated(ranks: list[dict[str, Any]], case: dict[str, Any]) -> None:
    split = ranks[0][case["name"]]["params"]
    replicated = ranks[0][case["name"].removesuffix("_split")]["params"]
    assert _max_gap(split, replicated) <= 1e-12


@pytest.mark.parametrize("case", SAME_AS_OVERLAP, ids=[c["name"] for c in SAME_AS_OVERLAP])
def test_state_dict_between_steps_changes_nothing(
    ranks: list[dict[str, Any]], case: dict[str, Any]
) -> None:
    uninterrupted = ranks[0][OVERLAP_CASES[0]["name"]]["params"]
    assert _max_gap(ranks[0][case["name"]]["params"], uninterrupted) == 0.0
    assert _max_gap(ranks[1][case["name"]]["params"], uninterrupted) == 0.0


def test_rank0_alone_saves_the_folded_factors(ranks: list[dict[str, Any]]) -> None:
    saved = ranks[0][RANK0_SAVES["name"]]["saved_factors"]
    assert "saved_factors" not in ranks[1][RANK0_SAVES["name"]]
    alone = train_case(RANK0_SAVES)["saved_factors"]  # one process, the same 2 steps
    assert saved.keys() == alone.keys() and len(saved) == 6  # A and B of three layers
    for key, factor in alone.items():
        assert float((saved[key] - factor).abs().max()) < 1e-10 * float(factor.abs().max()), key


def test_split_failure_raises_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    assert [r[FAILING["name"]]["error"] for r in ranks] == ["DecompositionError"] * WORLD


def _without(case: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in case.items() if k not in keys}


@pytest.mark.parametrize("case", FSDP_EXACT_CASES, ids=[c["name"] for c in FSDP_EXACT_CASES])
def test_fsdp_equals_one_process(ranks: list[dict[str, Any]], case: dict[str, Any]) -> None:
    alone = train_case(_without(case, "wrapper", "distributed", "keep_state"))
    gap = _max_gap(ranks[0][case["name"]]["params"], alone["params"])
    assert gap < 1e-10, gap
    assert _max_gap(alone["params"][-1:], [train_case_start()]) > 1e-3


def test_fsdp_soap_trains_close_to_one_process(ranks: list[dict[str, Any]]) -> None:
    sharded = ranks[0][FSDP_SOAP["name"]]
    assert all(torch.isfinite(torch.tensor(sharded["losses"])))
    alone = train_case(_without(FSDP_SOAP, "wrapper"))
    assert _max_gap(sharded["params"], alone["params"]) < SOAP_ROUND_OFF_GAP


@pytest.mark.parametrize("case", RESUME_CASES, ids=[c["name"] for c in RESUME_CASES])
def test_fsdp_resume_is_bit_identical(ranks: list[dict[str, Any]], case: dict[str, Any]) -> None:
    uninterrupted = ranks[0][case["uninterrupted"]]["params"]
    resumed = ranks[0][case["name"]]["params"]
    if case["resume"] == "model_only":
        assert _max_gap(resumed, uninterrupted) > 1e-6
    else:
        assert _max_gap(resumed, uninterrupted) == 0.0


def test_fsdp_state_dict_is_full_and_loads_in_one_process(ranks: list[dict[str, Any]]) -> None:
    from distributed_cases import make_model, make_optimizer

    case = FSDP_EXACT_CASES[0]
    sharded = ranks[0][case["name"]]["state_dict"]
    alone = train_case({**_without(case, "wrapper"), "keep_state": True})["state_dict"]
    _assert_same_state(sharded, alone)
    make_optimizer(case, make_model()).load_state_dict(sharded)


def _assert_same_state(got: dict[str, Any], alone: dict[str, Any]) -> None:
    """``got`` holds the single process's optimizer state: the same groups and entries, plain
    tensors of the same shapes within 1e-10."""
    assert got["param_groups"] == alone["param_groups"]
    assert got["state"].keys() == alone["state"].keys()
    for index, state in alone["state"].items():
        assert got["state"][index].keys() == state.keys(), index
        for key, value in state.items():
            other = got["state"][index][key]
            if isinstance(value, torch.Tensor):
                assert type(other) is torch.Tensor and other.shape == value.shape, (index, key)
                assert float((other - value).abs().max()) < 1e-10, (index, key)
            else:
                assert other == value, (index, key)


def test_fsdp_refuses_kfac_curvature_passes(ranks: list[dict[str, Any]]) -> None:
    assert [r[FSDP_REFUSED["name"]]["error"] for r in ranks] == ["ValueError"] * WORLD


@pytest.mark.parametrize("case", SHARD_CASES, ids=[c["name"] for c in SHARD_CASES])
def test_shard_equals_one_process(ranks: list[dict[str, Any]], case: dict[str, Any]) -> None:
    alone = train_case(_without(case, "distributed", "wrapper", "keep_state", "consolidate"))
    gap = _max_gap(ranks[0][case["name"]]["params"], alone["params"])
    assert gap < 1e-10, gap
    assert _max_gap(alone["params"][-1:], [train_case_start()]) > 1e-3


def _kronecker_indices(state_dict: dict[str, Any]) -> set[int]:
    return {index for index, entry in state_dict["state"].items() if STATISTIC_KEYS[0] in entry}


def test_shard_keeps_each_block_on_its_owner_alone(ranks: list[dict[str, Any]]) -> None:
    """Each rank's state_dict() holds the Kronecker state of the blocks it owns (the weights
    of the three layers: layer 2 on rank 0, layers 1 and 3 on rank 1) and the biases' Adam
    state; together they are the single process's."""
    case = SHARD_CASES[0]
    local = [r[case["name"]]["state_dict"] for r in ranks]
    owned = [_kronecker_indices(state) for state in local]
    assert owned == [{2}, {0, 4}]
    for state, others in zip(local, reversed(owned), strict=True):
        assert not others & state["state"].keys()  # nothing of the other rank's blocks
        assert {1, 3, 5} <= state["state"].keys()  # the biases (Adam path) on every rank


def test_shard_consolidated_state_dict_is_the_single_process_one(
    ranks: list[dict[str, Any]],
) -> None:
    from distributed_cases import make_model, make_optimizer

    case = SHARD_CASES[0]
    consolidated = ranks[0][case["name"]]["consolidated"]
    assert ranks[1][case["name"]]["consolidated"] is None
    alone = train_case({**_without(case, "distributed", "consolidate")})["state_dict"]
    _assert_same_state(consolidated, alone)
    make_optimizer(_without(case, "distributed"), make_model()).load_state_dict(consolidated)


@pytest.mark.parametrize("case", SHARD_RESUME_CASES, ids=[c["name"] for c in SHARD_RESUME_CASES])
def test_shard_resume_is_bit_identical(ranks: list[dict[str, Any]], case: dict[str, Any]) -> None:
    uninterrupted = ranks[0][case["uninterrupted"]]["params"]
    assert _max_gap(ranks[0][case["name"]]["params"], uninterrupted) == 0.0


def test_shard_float32_follows_the_replicated_run(ranks: list[dict[str, Any]]) -> None:
    sharded = ranks[0][SHARD_FLOAT32["name"]]["params"]
    replicated = ranks[0][FLOAT32_CASES[0]["name"]]["params"]
    gap = _max_gap(sharded, replicated)
    assert gap < 1e-6, gap


def test_shard_failure_raises_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    """Layers 1 and 3 (rank 1's) have singular statistics, layer 2 (rank 0's) not: rank 0
    raises because rank 1 told it."""
    outcomes = [r[SHARD_FAILING["name"]] for r in ranks]
    assert [o["error"] for o in outcomes] == ["DecompositionError"] * WORLD
    assert "failed on rank 1" in outcomes[0]["message"]
    assert "singular" in outcomes[1]["message"]


def test_shard_refuses_layer_factors() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match="distributed='split'"):
        KFAC(model, loss="mse", distributed="shard", process_group=None)


def test_process_group_defaults() -> None:
    assert not dist.is_initialized()
    assert resolve_group() is None
    assert resolve_group(None) is None
    with pytest.raises(ValueError, match="process_group"):
        resolve_group("world")
    model = torch.nn.Linear(3, 2)
    optimizer = Muon(model.parameters(), process_group=None)
    assert "process_group" not in optimizer.param_groups[0]
    assert "process_group" not in optimizer.state_dict()["param_groups"][0]
    with pytest.raises(ValueError, match="distributed"):
        KFAC(model, loss="mse", distributed="sharded")


def test_assign_owners_is_balanced_and_deterministic() -> None:
    costs = [refresh_cost(s) for s in [(64, 33), (8, 7), (64, 65), (3, 9), (32, 32)]]
    owners = assign_owners(costs, 2)
    assert owners == assign_owners(costs, 2)
    loads = [sum(c for c, o in zip(costs, owners, strict=True) if o == r) for r in range(2)]
    assert max(loads) <= max(costs) + min(loads)
    assert assign_owners([1.0, 1.0, 1.0], 3) == [0, 1, 2]
