"""Stored run files checked before they are trusted: readable Parquet with the expected columns.

A run file is written atomically (see :mod:`.store`), but a disk, a copy or a hand can still
leave one truncated, empty or garbage. On resume such a file is moved aside to
``runs/<run_id>.parquet.corrupt`` (kept for inspection, never read) and its run is redone;
``layerwise report`` refuses a folder with one, naming the file.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from layerwise.experiments import store

#: Columns every stored run has (the run function's ``seed`` and ``method``, the runner's id).
STORED_COLUMNS = ("seed", "method", "run_id")
CORRUPT_SUFFIX = ".corrupt"


def run_file_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable run file, or None."""
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as error:
        return f"not a readable Parquet file ({type(error).__name__}: {error})"
    missing = [column for column in STORED_COLUMNS if column not in schema.names]
    if missing:
        return f"missing column(s) {missing}"
    return None


def bad_run_files(out_dir: str | Path, experiment: str) -> dict[Path, str]:
    """Every unusable run file of ``experiment`` with what is wrong with it."""
    bad = {}
    for run_id in sorted(store.finished_run_ids(out_dir, experiment)):
        path = store.run_path(out_dir, experiment, run_id)
        problem = run_file_problem(path)
        if problem:
            bad[path] = problem
    return bad


def usable_run_ids(out_dir: str | Path, experiment: str) -> set[str]:
    """The finished runs whose files are usable; unusable files are moved aside (redone)."""
    for path in bad_run_files(out_dir, experiment):
        path.replace(path.with_name(path.name + CORRUPT_SUFFIX))
    return store.finished_run_ids(out_dir, experiment)


def code_version() -> dict[str, str | None]:
    """The code a run is computed by: the package version and, in a git checkout, the commit."""
    from importlib import metadata

    from layerwise.experiments.runner import git_commit

    global _CODE
    if _CODE is None:
        try:
            version = metadata.version("layerwise")
        except metadata.PackageNotFoundError:
            version = None
        _CODE = {"layerwise": version, "git_commit": git_commit()}
    return _CODE


_CODE: dict[str, str | None] | None = None


def stale_run_ids(out_dir: str | Path, experiment: str) -> list[str]:
    """Finished runs stored by another code version (or by one that recorded none)."""
    current = code_version()
    return [
        run_id
        for run_id in sorted(store.finished_run_ids(out_dir, experiment))
        if run_file_problem(store.run_path(out_dir, experiment, run_id)) is None
        and store.run_metadata(out_dir, experiment, run_id).get("code") != current
    ]  # an unreadable file is not stale but corrupt: the runner moves it aside


def set_aside_stale(out_dir: str | Path, experiment: str) -> int:
    """Move the stale runs' files aside (``.stale``) so that they are redone; their count."""
    stale = stale_run_ids(out_dir, experiment)
    for run_id in stale:
        path = store.run_path(out_dir, experiment, run_id)
        path.replace(path.with_name(path.name + ".stale"))
    return len(stale)
