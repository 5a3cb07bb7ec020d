"""The README's launch command: ``torchrun --standalone`` with 2 gloo ranks on the example
script (``examples/ddp_train.py``), under a timeout; the ranks end bit-identical."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ddp_train.py"


@pytest.mark.parametrize("optimizer", ["kfac", "shampoo"])
def test_torchrun_standalone_two_ranks(optimizer: str) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(EXAMPLE),
        "--optimizer",
        optimizer,
        "--split",
        "--steps",
        "3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    sums = dict(re.findall(r"rank (\d): parameter sum ([-+0-9.e]+)", done.stdout))
    assert set(sums) == {"0", "1"}, done.stdout
    assert sums["0"] == sums["1"]
