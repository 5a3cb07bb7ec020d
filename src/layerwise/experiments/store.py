"""The result store: tidy, append-only tables, one Parquet file per finished run.

Layout of an output folder ``OUT``::

    OUT/<experiment>/runs/<run_id>.parquet     one finished run (its tidy rows)
    OUT/<experiment>/failures/<run_id>.json    a failed run: error, traceback, its task
    OUT/<experiment>/config.json               the latest invocation: resolved config, its run
                                               ids, package versions, git commit, times, counts
    OUT/<experiment>/invocations.jsonl         every invocation's record, appended

A run file is written to a temporary file in the same folder and renamed into place
(``os.replace`` is atomic), so a run killed at any moment leaves either no file or a
complete one; readers only look at ``*.parquet``. A run's wall time and device live in the
Parquet schema metadata (key ``layerwise``), not in the table, so that tables of the same
runs are identical whatever the machine load. A failure file is removed when its run later
succeeds.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

RUNS = "runs"
FAILURES = "failures"
CONFIG = "config.json"
INVOCATIONS = "invocations.jsonl"
METADATA_KEY = b"layerwise"


def experiment_dir(out_dir: str | Path, experiment: str) -> Path:
    return Path(out_dir) / experiment


def run_path(out_dir: str | Path, experiment: str, run_id: str) -> Path:
    return experiment_dir(out_dir, experiment) / RUNS / f"{run_id}.parquet"


def failure_path(out_dir: str | Path, experiment: str, run_id: str) -> Path:
    return experiment_dir(out_dir, experiment) / FAILURES / f"{run_id}.json"


def finished_run_ids(out_dir: str | Path, experiment: str) -> set[str]:
    folder = experiment_dir(out_dir, experiment) / RUNS
    return {path.stem for path in folder.glob("*.parquet")} if folder.is_dir() else set()


def failed_run_ids(out_dir: str | Path, experiment: str) -> set[str]:
    folder = experiment_dir(out_dir, experiment) / FAILURES
    return {path.stem for path in folder.glob("*.json")} if folder.is_dir() else set()


def write_run(
    out_dir: str | Path,
    experiment: str,
    run_id: str,
    table: pd.DataFrame,
    metadata: Mapping[str, Any],
) -> Path:
    """Write one run's rows atomically; remove its failure record if there was one."""
    path = run_path(out_dir, experiment, run_id)
    arrow = pa.Table.from_pandas(table.reset_index(drop=True), preserve_index=False)
    schema_metadata = dict(arrow.schema.metadata or {})
    schema_metadata[METADATA_KEY] = json.dumps(to_json(metadata)).encode()
    arrow = arrow.replace_schema_metadata(schema_metadata)
    _atomic_write(path, lambda handle: pq.write_table(arrow, handle))
    failure_path(out_dir, experiment, run_id).unlink(missing_ok=True)
    return path


def write_failure(
    out_dir: str | Path, experiment: str, run_id: str, record: Mapping[str, Any]
) -> Path:
    path = failure_path(out_dir, experiment, run_id)
    text = json.dumps(to_json(record), indent=2)
    _atomic_write(path, lambda handle: handle.write(text.encode()))
    return path


def remove_stale_temporaries(out_dir: str | Path, experiment: str, run_ids: Iterable[str]) -> None:
    """Delete temporary files left by a writer killed mid-write for the given runs."""
    folder = experiment_dir(out_dir, experiment) / RUNS
    for run_id in run_ids:
        for path in folder.glob(f".{run_id}.parquet.*.tmp"):
            path.unlink(missing_ok=True)


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not a `with` block: the file must outlive its handle until the rename.
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        # Also on KeyboardInterrupt: never leave a temporary behind when we can help it.
        Path(handle.name).unlink(missing_ok=True)
        raise


def load(
    out_dir: str | Path, experiment: str, run_ids: Iterable[str] | None = None
) -> pd.DataFrame:
    """All stored rows of ``experiment`` (or of the given runs) as one DataFrame.

    Order: runs sorted by run id, each run's rows in the order its run function returned them;
    the index is a fresh ``RangeIndex``. An experiment without finished runs gives an empty
    DataFrame.
    """
    if run_ids is None:
        ids = sorted(finished_run_ids(out_dir, experiment))
    else:
        finished = finished_run_ids(out_dir, experiment)
        ids = sorted(set(run_ids) & finished)
    tables = [pd.read_parquet(run_path(out_dir, experiment, run_id)) for run_id in ids]
    if not tables:
        return pd.DataFrame()
    return pd.concat(tables, ignore_index=True)


def run_metadata(out_dir: str | Path, experiment: str, run_id: str) -> dict[str, Any]:
    """The metadata stored with one run (wall time in seconds, device, finish time)."""
    schema = pq.read_schema(run_path(out_dir, experiment, run_id))
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def read_failures(out_dir: str | Path, experiment: str) -> list[dict[str, Any]]:
    folder = experiment_dir(out_dir, experiment) / FAILURES
    if not folder.is_dir():
        return []
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


def write_invocation(out_dir: str | Path, experiment: str, record: Mapping[str, Any]) -> None:
    """Record an invocation: replace ``config.json``; ``final`` also appends to the history."""
    folder = experiment_dir(out_dir, experiment)
    text = json.dumps(to_json(record), indent=2)
    _atomic_write(folder / CONFIG, lambda handle: handle.write(text.encode()))
    if record.get("finished_at") is not None:
        _append_line(folder / INVOCATIONS, json.dumps(to_json(record)))


def _append_line(path: Path, line: str) -> None:
    """Append one line with a single ``write`` on an ``O_APPEND`` descriptor, so that a kill
    leaves the history with the whole line or without it, never with part of it."""
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = (line + "\n").encode()
        written = os.write(descriptor, data)
        if written != len(data):
            raise OSError(f"short write to {path}: {written} of {len(data)} bytes")
    finally:
        os.close(descriptor)


def read_invocation(out_dir: str | Path, experiment: str) -> dict[str, Any] | None:
    path = experiment_dir(out_dir, experiment) / CONFIG
    return json.loads(path.read_text()) if path.is_file() else None


def stored_experiments(out_dir: str | Path) -> list[str]:
    """Experiments with a stored invocation under ``out_dir``, sorted by name."""
    root = Path(out_dir)
    if not root.is_dir():
        return []
    return sorted(path.parent.name for path in root.glob(f"*/{CONFIG}"))


def to_json(value: Any) -> Any:
    """``value`` with numpy scalars/arrays made plain and non-finite floats as strings.

    Strict JSON has no NaN or infinity; ``"nan"``, ``"inf"`` and ``"-inf"`` keep the
    information readable.
    """
    if isinstance(value, Mapping):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set):
        return [to_json(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    return value
