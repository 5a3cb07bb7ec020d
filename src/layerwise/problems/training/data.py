"""The workloads' data: bundled with a package or with Python itself, never downloaded.

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (``sklearn.datasets.load_digits``,
  1797 images, 10 classes), pixels scaled to [0, 1] and standardized with the training mean
  and standard deviation; tensors of shape ``(n, 1, 8, 8)``.
- ``tabular``: scikit-learn's bundled Wisconsin breast-cancer table (``load_breast_cancer``,
  569 rows, 30 features, 2 classes), each feature standardized with the training statistics.
- ``lm``: characters of the Python standard library's source: the first ``text_files``
  top-level ``*.py`` files of ``sysconfig.get_paths()["stdlib"]`` in sorted order,
  concatenated and cut to ``text_chars`` characters; characters outside ASCII become ``?``
  (a vocabulary of 128). The text is cut into blocks of :data:`BLOCK_CHARS`; a seeded
  permutation holds out ``val_fraction`` of the blocks. Training windows of ``context + 1``
  characters are drawn inside the training blocks; the validation set is ``val_windows``
  fixed windows of the held-out blocks. The standard library differs a little between Python
  versions, so this corpus is fixed per Python version (its size and hash are reported).

Splits. Rows (or text blocks) are assigned to train / validation by a permutation drawn from
``numpy.random.default_rng(split_seed)``: the split is fixed for a workload's settings and
shared by every method and seed.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .settings import TrainingSettings

#: Characters per text block of the language-model split.
BLOCK_CHARS = 2048
#: The language model's vocabulary: ASCII codes; anything else maps to ``?``.
VOCABULARY = 128


@dataclass(frozen=True)
class ClassificationData:
    """Train and validation tensors; ``classes`` output classes."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    classes: int
    source: str


@dataclass(frozen=True)
class TextData:
    """Character codes of the training blocks (a list of 1-D int64 tensors) and the fixed
    validation windows ``(val_windows, context + 1)``."""

    train_blocks: tuple[torch.Tensor, ...]
    val_windows: torch.Tensor
    classes: int
    source: str


def split_indices(n: int, val_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of ``range(n)``: (train indices, validation indices), each sorted."""
    order = np.random.default_rng(split_seed).permutation(n)
    n_val = max(1, round(n * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _standardized(x: np.ndarray, train: np.ndarray, axis) -> np.ndarray:
    mean = x[train].mean(axis=axis, keepdims=True)
    std = x[train].std(axis=axis, keepdims=True)
    return (x - mean) / np.where(std > 0, std, 1.0)


def _classification(x: np.ndarray, y: np.ndarray, settings: TrainingSettings, axis, source: str):
    train, val = split_indices(len(x), settings.val_fraction, settings.split_seed)
    x = _standardized(x.astype(np.float64), train, axis).astype(np.float32)
    as_x, as_y = torch.from_numpy, lambda v: torch.from_numpy(v.astype(np.int64))
    return ClassificationData(
        as_x(x[train]),
        as_y(y[train]),
        as_x(x[val]),
        as_y(y[val]),
        int(y.max()) + 1,
        source,
    )


def load_digits(settings: TrainingSettings) -> ClassificationData:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = (bunch.images / 16.0).reshape(-1, 1, 8, 8)
    # One mean and standard deviation over all training pixels (axis None).
    return _classification(images, bunch.target, settings, None, "sklearn load_digits")


def load_tabular(settings: TrainingSettings) -> ClassificationData:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return _classification(bunch.data, bunch.target, settings, 0, "sklearn load_breast_cancer")


def stdlib_files(count: int) -> list[Path]:
    """The first ``count`` top-level ``*.py`` files of the standard library, sorted by name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(root.glob("*.py"))[:count]


def stdlib_text(files: int, chars: int) -> str:
    text = "".join(
        path.read_text(encoding="utf-8", errors="replace") for path in stdlib_files(files)
    )
    if len(text) < chars:
        raise ValueError(
            f"the first {files} standard-library files hold {len(text)} characters, "
            f"fewer than text_chars={chars}; raise text_files"
        )
    return text[:chars]


def encode(text: str) -> torch.Tensor:
    """ASCII codes of ``text`` (int64), non-ASCII characters as ``?``."""
    codes = np.frombuffer(text.encode("ascii", errors="replace"), dtype=np.uint8)
    return torch.from_numpy(codes.astype(np.int64))


def load_text(settings: TrainingSettings) -> TextData:
    s = settings
    text = stdlib_text(s.text_files, s.text_chars)
    codes = encode(text)
    blocks = list(torch.split(codes, BLOCK_CHARS))
    if len(blocks[-1]) < s.context + 1:
        blocks.pop()
    train, val = split_indices(len(blocks), s.val_fraction, s.split_seed)
    window = s.context + 1
    candidates = [
        blocks[i][start : start + window]
        for i in val
        for start in range(0, len(blocks[i]) - window + 1, window)
    ]
    if len(candidates) < s.val_windows:
        raise ValueError(
            f"the held-out blocks give {len(candidates)} windows, fewer than "
            f"val_windows={s.val_windows}; raise text_chars or val_fraction"
        )
    # Evenly spaced over the held-out windows, so the validation set spans every held-out file.
    take = np.linspace(0, len(candidates) - 1, s.val_windows).round().astype(int)
    digest = hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()[:12]
    return TextData(
        tuple(blocks[i] for i in train),
        torch.stack([candidates[i] for i in take]),
        VOCABULARY,
        f"stdlib source, {s.text_files} files, {len(text)} characters, sha256 {digest}",
    )


def load(settings: TrainingSettings) -> ClassificationData | TextData:
    """The data of ``settings.workload``."""
    match settings.workload:
        case "digits":
            return load_digits(settings)
        case "tabular":
            return load_tabular(settings)
        case "lm":
            return load_text(settings)
        case other:
            raise ValueError(f"unknown workload {other!r}")


def sample_batch(
    data: ClassificationData | TextData, settings: TrainingSettings, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training minibatch ``(inputs, targets)`` drawn with ``generator``.

    Classification: ``batch_size`` training rows drawn with replacement. Text: ``batch_size``
    windows, each in a training block drawn with probability proportional to its number of
    windows, at a uniform offset; inputs are the first ``context`` characters, targets the next
    character at every position, flattened to ``(batch_size * context,)``.
    """
    if isinstance(data, ClassificationData):
        index = torch.randint(len(data.x_train), (settings.batch_size,), generator=generator)
        return data.x_train[index], data.y_train[index]
    window = settings.context + 1
    sizes = torch.tensor(
        [len(block) - window + 1 for block in data.train_blocks], dtype=torch.float64
    )
    blocks = torch.multinomial(sizes, settings.batch_size, replacement=True, generator=generator)
    offsets = (
        torch.rand(settings.batch_size, generator=generator, dtype=torch.float64) * sizes[blocks]
    ).long()
    windows = torch.stack(
        [
            data.train_blocks[b][o : o + window]
            for b, o in zip(blocks.tolist(), offsets.tolist(), strict=True)
        ]
    )
    return windows[:, :-1], windows[:, 1:].reshape(-1)


def validation_set(data: ClassificationData | TextData) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` of the whole validation set (targets flattened for text)."""
    if isinstance(data, ClassificationData):
        return data.x_val, data.y_val
    return data.val_windows[:, :-1], data.val_windows[:, 1:].reshape(-1)
