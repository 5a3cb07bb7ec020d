"""Executors: where runs execute. One interface, three implementations.

- :class:`InProcessExecutor` (``--executor local --workers 1``): runs in this process, one after
  another; the easy one to debug.
- :class:`LocalExecutor` (``--executor local --workers K``): a pool of K worker processes
  (``forkserver`` context where available, else ``spawn``; never ``fork``, which copies a
  process that may hold threads). Each worker uses one torch thread, so K workers use K cores.
- :class:`RayExecutor` (``--executor ray [--address A]``): Ray tasks of one CPU each, on the
  cluster at ``A`` or on a local Ray instance started for the invocation.

Each executor takes :class:`Job` s and yields one :class:`Outcome` per job, in completion order.
A run that raises becomes an outcome with the traceback; a worker process that dies (a crash,
``kill -9``, the OOM killer) is detected, the runs that were in flight are retried one at a
time in a fresh process, and the one that dies again becomes a failed outcome, so one bad run
never stops a sweep. The run functions themselves take their randomness from the seeds in
their task; executors add nothing that could change a table.

No local worker outlives the command: the command stops its workers when it ends or is
signalled (:meth:`LocalExecutor.run`), and each worker watches the command's process and exits
when it is gone (a ``kill -9`` gives the command no chance to stop anything). Workers ignore
SIGINT, so a terminal's Ctrl-C, which reaches every process of the foreground group, is
handled once, by the command.
"""

from __future__ import annotations

import abc
import contextlib
import multiprocessing
import os
import select
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import pandas as pd

from layerwise.experiments import reaper
from layerwise.experiments.registry import RunTask

WORKER_DIED = (
    "the worker process running this run died (crash, out of memory or killed); "
    "it died again when retried alone"
)


@dataclass(frozen=True)
class Job:
    """One run to execute: its id, the experiment's run function and the task."""

    run_id: str
    run: Callable[[RunTask], pd.DataFrame]
    task: RunTask


@dataclass(frozen=True)
class Outcome:
    """The result of one job: ``table`` on success, else ``error`` (a traceback)."""

    run_id: str
    table: pd.DataFrame | None
    error: str | None
    seconds: float


class ExecutorError(RuntimeError):
    """An executor that cannot start (e.g. Ray not installed or unreachable)."""


def execute(job: Job) -> Outcome:
    """Run one job and capture any exception as a failed :class:`Outcome` (runs in workers)."""
    start = time.perf_counter()
    try:
        table = job.run(job.task)
        if not isinstance(table, pd.DataFrame):
            raise TypeError(f"run function returned {type(table).__name__}, not a DataFrame")
    except Exception:
        # Deliberately broad: whatever a run raises is stored with its traceback and the
        # sweep goes on; the exit status reports it.
        return Outcome(job.run_id, None, traceback.format_exc(), time.perf_counter() - start)
    return Outcome(job.run_id, table, None, time.perf_counter() - start)


def _collect(future: Future, job: Job) -> Outcome | None:
    """The outcome of a settled future; None if its worker process died under it."""
    error = future.exception()
    if error is None:
        return future.result()
    if isinstance(error, BrokenProcessPool):
        return None
    # The pool could not even hand the job over (e.g. an unpicklable run function).
    text = "".join(traceback.format_exception(error))
    return Outcome(job.run_id, None, text, 0.0)


def _init_worker(command_pid: int | None = None) -> None:
    """Set up a worker; with ``command_pid`` (local pools) it ends when that process does."""
    import torch

    # Several workers share the machine's cores; one intra-op thread each avoids oversubscription.
    torch.set_num_threads(1)
    if command_pid is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _exit_with(command_pid)


#: How often a worker without ``pidfd_open`` checks that the command still exists.
WATCH_SECONDS = 1.0


def _exit_with(pid: int) -> None:
    """End this process as soon as process ``pid`` has exited (a daemon thread waits for it).

    ``os.pidfd_open`` (Linux >= 5.3) gives a descriptor that becomes readable when ``pid``
    exits, whoever its parent is (a forkserver's workers are not the command's children);
    elsewhere ``pid`` is polled every :data:`WATCH_SECONDS`.
    """
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)  # already gone
    except (AttributeError, OSError):
        descriptor = None

    def watch() -> None:
        if descriptor is not None:
            select.select([descriptor], [], [])
        else:
            while _exists(pid):
                time.sleep(WATCH_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="layerwise-watch-command", daemon=True).start()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


class Executor(abc.ABC):
    """Runs jobs; use as a context manager so workers are released."""

    name = "executor"

    @abc.abstractmethod
    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        """Yield one outcome per job, in completion order."""

    def describe(self) -> dict[str, object]:
        return {"name": self.name}

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release workers."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class InProcessExecutor(Executor):
    name = "local"

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        for job in jobs:
            yield execute(job)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "workers": 1}


def _process_context() -> multiprocessing.context.BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        # Workers fork from a server that has already imported torch (and torch._dynamo, which
        # the first optimizer step imports): a worker starts in milliseconds, not seconds.
        context.set_forkserver_preload(["torch", "torch._dynamo", "pandas", __name__])
        _start_forkserver_without_sigint()
        return context
    return multiprocessing.get_context("spawn")


def _start_forkserver_without_sigint() -> None:
    """Start the forkserver with SIGINT ignored (a no-op when it is running).

    The forkserver ignores SIGINT itself only once its preloads are imported (seconds, for
    torch), and a Ctrl-C during them prints their traceback. An ignored signal stays ignored
    across ``exec``, and the forkserver's workers inherit it. SIGINT is blocked meanwhile, so
    one that arrives now is delivered to this process afterwards, not lost.
    """
    from multiprocessing import forkserver

    if threading.current_thread() is not threading.main_thread():
        forkserver.ensure_running()
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class LocalExecutor(Executor):
    """A pool of ``workers`` processes; at most ``workers`` runs are in flight at a time.

    Keeping no more runs in flight than workers means that when the pool breaks, the runs
    in flight are exactly the suspects; each is then retried alone in a fresh process.
    """

    name = "local"

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "workers": self.workers}

    def _new_pool(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=workers,
            mp_context=_process_context(),
            initializer=_init_worker,
            initargs=(os.getpid(),),
        )

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        pending = deque(jobs)
        in_flight: dict[Future, Job] = {}
        size = min(self.workers, len(pending))
        pool: ProcessPoolExecutor | None = None
        try:
            while pending or in_flight:
                if pool is None:
                    pool = self._new_pool(size)
                broken = False
                while pending and len(in_flight) < size and not broken:
                    job = pending.popleft()
                    try:
                        in_flight[pool.submit(execute, job)] = job
                    except BrokenProcessPool:
                        # A worker died since the last wait: the job never started.
                        pending.appendleft(job)
                        broken = True
                if not broken:
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        outcome = _collect(future, in_flight[future])
                        if outcome is None:
                            broken = True
                        else:
                            del in_flight[future]
                            yield outcome
                if broken:
                    wait(in_flight)  # a broken pool settles every future it holds
                    suspects = []
                    for future, job in in_flight.items():
                        outcome = _collect(future, job)
                        if outcome is None:
                            suspects.append(job)
                        else:
                            yield outcome
                    in_flight.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = None
                    for job in suspects:
                        yield self._retry_alone(job)
        finally:
            if pool is not None:
                # Normal end: nothing is left in flight. Interrupted: drop what has not started
                # and stop the runs in flight, so that no worker outlives the command.
                if in_flight:
                    for process in list((getattr(pool, "_processes", None) or {}).values()):
                        process.kill()
                pool.shutdown(wait=not in_flight, cancel_futures=True)

    def _retry_alone(self, job: Job) -> Outcome:
        start = time.perf_counter()
        with self._new_pool(1) as pool:
            future = pool.submit(execute, job)
            wait([future])
            outcome = _collect(future, job)
        if outcome is None:
            return Outcome(job.run_id, None, WORKER_DIED, time.perf_counter() - start)
        return outcome


def _ray_execute(job: Job) -> Outcome:
    _init_worker()
    return execute(job)


class RayExecutor(Executor):
    """Ray tasks of one CPU (and ``gpus_per_run`` GPUs) each. Without ``address`` a local Ray
    instance is started (with ``workers`` CPUs) and shut down on :meth:`close`; with one, the
    cluster is joined.

    Every node needs this package installed (the run functions are imported by name).
    """

    name = "ray"

    def __init__(
        self, address: str | None = None, workers: int | None = None, gpus_per_run: float = 0
    ):
        try:
            import ray
        except ImportError:
            raise ExecutorError(
                "--executor ray needs Ray, which is not installed: pip install 'layerwise[ray]'"
            ) from None
        self._ray = ray
        self.address = address
        self._started = False
        self._reaper = None
        if address is not None and not ray.is_initialized():
            _probe_address(address)
        if not ray.is_initialized():
            options = dict(include_dashboard=False, log_to_driver=False, logging_level="warning")
            before = reaper.children(os.getpid()) if address is None else set()
            try:
                with _keeping_sigterm_handler():
                    if address is None:
                        ray.init(num_cpus=workers, **options)
                    else:
                        ray.init(address=address, **options)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise ExecutorError(f"could not start Ray (address={address!r}): {error}") from None
            self._started = True
            if address is None:
                # The local node's processes are ours: none may outlive a kill -9 of this
                # command (layerwise.experiments.reaper).
                self._reaper = reaper.start(reaper.children(os.getpid()) - before)
        self._remote = ray.remote(num_cpus=1, num_gpus=gpus_per_run, max_retries=1)(_ray_execute)

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "address": self.address,
            "cpus": self._ray.cluster_resources().get("CPU"),
        }

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        ray = self._ray
        started = {self._remote.remote(job): (job, time.perf_counter()) for job in jobs}
        try:
            while started:
                (ref,), _ = ray.wait(list(started), num_returns=1)
                job, start = started.pop(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayError as error:
                    # A worker or node died (the run's own exceptions come back as outcomes).
                    seconds = time.perf_counter() - start
                    yield Outcome(job.run_id, None, f"{WORKER_DIED}\n{error}", seconds)
        finally:
            for ref in started:
                ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._started:
            reaper.stand_down(self._reaper)
            self._reaper = None
            self._ray.shutdown()
            self._started = False


@contextlib.contextmanager
def _keeping_sigterm_handler() -> Iterator[None]:
    """Restore this process's SIGTERM handler after ``ray.init()``, which replaces it (Python's
    with ``sys.exit(15)``, the C one with its core's, which aborts: exit -6 with a stack dump
    and no record of the runs not done), so that SIGTERM stops a Ray command as it stops a
    local one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        # Set anew even if the Python-level handler looks unchanged: the C-level one is not.
        signal.signal(signal.SIGTERM, handler if handler is not None else signal.SIG_DFL)


#: How long a Ray address may take to accept a connection (Ray itself retries for minutes).
RAY_CONNECT_SECONDS = 10.0


def _probe_address(address: str) -> None:
    """Refuse a ``host:port`` that does not accept a TCP connection within a bounded time."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms: left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=RAY_CONNECT_SECONDS).close()
    except OSError as error:
        raise ExecutorError(
            f"--address {address}: no Ray cluster answers there within "
            f"{RAY_CONNECT_SECONDS:g} s ({error})"
        ) from None


def make_executor(
    kind: str, *, workers: int | None = None, address: str | None = None, device: str = "cpu"
) -> Executor:
    """The executor for ``--executor kind``; ``workers`` defaults to ``os.cpu_count()``.

    On Ray, runs on a CUDA ``device`` each reserve one GPU (so Ray places them on GPU nodes).
    """
    if workers is not None and workers < 1:
        raise ExecutorError(f"--workers must be >= 1, got {workers}")
    match kind:
        case "local":
            if address is not None:
                raise ExecutorError("--address is only meaningful with --executor ray")
            count = workers or os.cpu_count() or 1
            return InProcessExecutor() if count == 1 else LocalExecutor(count)
        case "ray":
            gpus = 1 if device.startswith("cuda") else 0
            return RayExecutor(
                address=address, workers=workers or os.cpu_count(), gpus_per_run=gpus
            )
        case _:
            raise ExecutorError(f"--executor: unknown executor {kind!r}; known: local, ray")
