"""The training workloads' data: shapes, no download, seeded splits; the schedule."""

from __future__ import annotations

import itertools
import math
import socket

import numpy as np
import pytest
import torch

from layerwise.problems.training import data, methods
from layerwise.problems.training.settings import TrainingSettings

LM = TrainingSettings(workload="lm", context=16, text_files=20, text_chars=40_000, val_windows=32)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the training data must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_digits_shapes_and_standardization(no_network):
    loaded = data.load(TrainingSettings(workload="digits"))
    assert loaded.x_train.shape[1:] == (1, 8, 8)
    assert len(loaded.x_train) + len(loaded.x_val) == 1797
    assert len(loaded.x_val) == round(1797 * 0.2)
    assert loaded.classes == 10
    assert abs(loaded.x_train.mean().item()) < 1e-5
    assert loaded.x_train.std().item() == pytest.approx(1.0, abs=1e-3)


def test_tabular_shapes(no_network):
    loaded = data.load(TrainingSettings(workload="tabular"))
    assert loaded.x_train.shape[1] == 30
    assert len(loaded.x_train) + len(loaded.x_val) == 569
    assert loaded.classes == 2
    np.testing.assert_allclose(loaded.x_train.mean(0).numpy(), 0, atol=1e-5)


def test_text_windows(no_network):
    loaded = data.load(LM)
    assert loaded.val_windows.shape == (32, 17)
    assert int(max(b.max() for b in loaded.train_blocks)) < data.VOCABULARY
    x, y = data.sample_batch(loaded, LM, torch.Generator().manual_seed(0))
    assert x.shape == (LM.batch_size, 16) and y.shape == (LM.batch_size * 16,)
    # Targets are the inputs shifted by one character.
    np.testing.assert_array_equal(x[:, 1:].numpy(), y.view(LM.batch_size, 16)[:, :-1].numpy())
    x_val, y_val = data.validation_set(loaded)
    assert x_val.shape == (32, 16) and y_val.shape == (32 * 16,)


def test_text_is_sorted_stdlib_source():
    files = data.stdlib_files(5)
    assert files == sorted(files) and all(f.suffix == ".py" for f in files)
    assert data.stdlib_text(5, 1000) == "".join(f.read_text(errors="replace") for f in files)[:1000]
    with pytest.raises(ValueError, match="raise text_files"):
        data.stdlib_text(1, 10**9)


def test_splits_are_seeded_disjoint_and_cover():
    train, val = data.split_indices(100, 0.2, 3)
    again_train, again_val = data.split_indices(100, 0.2, 3)
    other_train, _ = data.split_indices(100, 0.2, 4)
    np.testing.assert_array_equal(train, again_train)
    np.testing.assert_array_equal(val, again_val)
    assert not np.array_equal(train, other_train)
    assert len(val) == 20 and not set(train) & set(val)
    assert sorted(set(train) | set(val)) == list(range(100))


def test_split_seed_changes_the_digits_split():
    a = data.load(TrainingSettings(workload="digits", split_seed=0))
    b = data.load(TrainingSettings(workload="digits", split_seed=1))
    assert not torch.equal(a.y_val, b.y_val)


def test_schedule_warmup_then_cosine():
    s = TrainingSettings(workload="tabular", steps=100, warmup_fraction=0.1, final_lr_fraction=0.1)
    m = [methods.lr_multiplier(t, s) for t in range(101)]
    assert m[0] == pytest.approx(0.1) and m[9] == pytest.approx(1.0)
    assert m[10] == pytest.approx(1.0)
    # Halfway through the cosine: f + (1 - f)/2.
    assert m[55] == pytest.approx(0.1 + 0.9 * 0.5)
    assert m[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(m[10:]))
    assert methods.lr_multiplier(30, s) == pytest.approx(
        0.1 + 0.45 * (1 + math.cos(math.pi * 20 / 90))
    )
