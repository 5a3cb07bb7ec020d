"""The ``layerwise`` command.

::

    layerwise list
    layerwise run NAME [--quick] [--seeds N] [--out DIR] [--executor local|ray] [--address A]
                       [--workers K] [--device cpu|cuda] [--set key=value ...] [--config PATH]
    layerwise report DIR
    layerwise reproduce [--quick] [--seeds N] [--out DIR] [--executor ...] [--address A]
                        [--workers K] [--device D]

Exit status: 0 success; 1 some runs failed (the others are stored); 2 the command or a config
was refused before anything ran (the message names the field and the value; nothing is
written).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from importlib.resources.abc import Traversable
from pathlib import Path

from layerwise.experiments import registry
from layerwise.experiments.config import (
    ConfigError,
    ResolvedConfig,
    config_search_dirs,
    did_you_mean,
    find_config,
    load_config,
)
from layerwise.experiments.executors import ExecutorError, make_executor
from layerwise.experiments.lock import LockedError, output_lock

EXIT_OK, EXIT_FAILED_RUNS, EXIT_REFUSED = 0, 1, 2
COMMANDS = ("list", "run", "report", "reproduce")


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, Slurm, ``docker stop``) handled like Ctrl-C: workers stop and
    ``config.json`` is finalized by the same ``finally`` blocks."""

    #: Set by the handler: an interrupt raised inside a library's C code may come back as a
    #: plain ``KeyboardInterrupt`` (Ray's ``ray.wait`` raises its own), and is still SIGTERM's.
    received = False


def _raise_terminated(signum, frame) -> None:
    Terminated.received = True
    raise Terminated()


class _VersionAction(argparse.Action):
    """``--version``: the package version and, in a git checkout, the commit."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from layerwise import __version__
        from layerwise.experiments.runner import git_commit

        commit = git_commit()
        print(f"layerwise {__version__}" + (f" (git {commit})" if commit else ""))
        parser.exit()


def _unusable_out(out_dir: Path) -> str | None:
    """Why ``--out`` cannot hold results (checked before anything runs), or None."""
    if out_dir.exists() and not out_dir.is_dir():
        return f"--out {out_dir}: exists and is not a folder"
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return f"--out {out_dir}: {existing} is not a writable folder"
    return None


def _default_out(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return Path(args.out)
    return Path("results/quick") if args.quick else Path("results")


def _add_execution_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="the config's quick variant")
    parser.add_argument("--seeds", type=int, help="shorthand for --set seeds=N")
    parser.add_argument(
        "--out", help="output folder (default: results/, or results/quick with --quick)"
    )
    parser.add_argument("--executor", choices=("local", "ray"), default="local")
    parser.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    parser.add_argument(
        "--workers", type=int, help="worker processes (default: the number of cores)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--rerun-stale", action="store_true", help="redo stored runs of another code version"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerwise",
        description="Run the experiments of layerwise and report which claims hold.",
    )
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="registered experiments, their configs and claims")

    run = commands.add_parser("run", help="run one experiment's config")
    run.add_argument("name", help="experiment name (its config is NAME.yaml)")
    _add_execution_options(run)
    _add_set_option(run)
    run.add_argument("--report", action="store_true", help="write the report of --out afterwards")
    run.add_argument(
        "--config",
        help="config file (default: ./configs/NAME.yaml if present, else the packaged one)",
    )

    report = commands.add_parser("report", help="figures, claims and report of an output folder")
    report.add_argument("dir", help="output folder of `layerwise run` / `reproduce`")

    reproduce = commands.add_parser(
        "reproduce", help="run every registered experiment that has a config, then report"
    )
    _add_execution_options(reproduce)
    _add_set_option(reproduce)
    reproduce.add_argument(
        "--only", metavar="A,B", help="only these experiments (comma-separated names)"
    )
    return parser


def _add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (dotted path, YAML value), e.g. settings.d=64",
    )


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    first = next((word for word in words if not word.startswith("-")), None)
    if first is not None and first not in COMMANDS:
        print(
            f"layerwise: error: unknown command {first!r}{did_you_mean(first, COMMANDS)} "
            f"(commands: {', '.join(COMMANDS)})",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    Terminated.received = False
    try:
        return _dispatch(words)
    except KeyboardInterrupt as interrupt:
        # Ctrl-C or SIGTERM: the runner's `finally` has recorded the runs not done.
        sigterm = isinstance(interrupt, Terminated) or Terminated.received
        killed = signal.SIGTERM if sigterm else signal.SIGINT
        print(
            f"layerwise: interrupted by {killed.name}; finished runs are stored, "
            "the others are recorded as not run (rerun the command to resume)",
            file=sys.stderr,
        )
        return 128 + killed
    finally:
        signal.signal(signal.SIGTERM, previous)


def _dispatch(words: list[str]) -> int:
    args = build_parser().parse_args(words)
    args.argv = words  # stored with the results
    match args.command:
        case "list":
            try:
                return command_list()
            except BrokenPipeError:  # `layerwise list | head`: the reader has what it wanted;
                # point stdout at devnull so the interpreter's final flush does not fail too.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 0
        case "run":
            return command_run(args)
        case "report":
            return command_report(Path(args.dir))
        case "reproduce":
            return command_reproduce(args)
        case _:
            raise AssertionError(f"unhandled command {args.command!r}")


def _refuse(error: Exception) -> int:
    print(f"layerwise: error: {error}", file=sys.stderr)
    return EXIT_REFUSED


def command_list() -> int:
    experiments = registry.experiments()
    if not experiments:
        print("no experiments registered")
    for name, experiment in sorted(experiments.items()):
        try:
            config = str(find_config(name))
        except ConfigError:
            config = "no config"
        methods = sorted(registry.problem(experiment.problem).method_models)
        print(f"{name}  (problem {experiment.problem}; {config})")
        print(f"    {experiment.description}")
        print(f"    methods: {', '.join(methods)}")
        for claim in experiment.claims:
            print(f"    {claim.id}: {claim.statement}")
    return EXIT_OK


def _overrides(args: argparse.Namespace) -> list[str]:
    extra = list(getattr(args, "overrides", []))
    if args.seeds is not None:
        extra.append(f"seeds={args.seeds}")
    return extra


def _prepare(name: str, args: argparse.Namespace, path: Path | Traversable) -> ResolvedConfig:
    config = load_config(path, quick=args.quick, overrides=_overrides(args))
    if config.experiment.name != name:
        raise ConfigError(
            config.source,
            "experiment",
            f"the config is for {config.experiment.name!r}, but {name!r} was asked for",
        )
    return config


def _execute(configs: Sequence[ResolvedConfig], args: argparse.Namespace) -> int:
    from layerwise.experiments.runner import check_device

    try:
        # A Ray cluster's GPUs may be on other nodes than this one: Ray places the runs.
        check_device(args.device, here=args.executor == "local" or args.address is None)
        executor = make_executor(
            args.executor, workers=args.workers, address=args.address, device=args.device
        )
    except (ConfigError, ExecutorError) as error:
        return _refuse(error)
    out_dir = _default_out(args)
    unusable = _unusable_out(out_dir)
    if unusable:
        executor.close()
        return _refuse(ValueError(unusable))
    command = ["layerwise", *args.argv]
    failed = 0
    try:
        with output_lock(out_dir):
            failed = _run_all(configs, args, executor, out_dir, command)
    except LockedError as error:
        executor.close()
        return _refuse(error)
    return EXIT_FAILED_RUNS if failed else EXIT_OK


def _run_all(configs, args, executor, out_dir: Path, command: list[str]) -> int:
    from layerwise.experiments import integrity
    from layerwise.experiments.runner import run_experiment

    failed = 0
    with executor:
        for config in configs:
            name = config.experiment.name
            if args.rerun_stale:
                redo = integrity.set_aside_stale(out_dir, name)
                if redo:
                    print(f"{name}: {redo} runs of another code version will be redone")
            else:
                stale = integrity.stale_run_ids(out_dir, name)
                if stale:
                    print(
                        f"{name}: {len(stale)} stored runs come from another code version "
                        f"than {integrity.code_version()}; --rerun-stale redoes them"
                    )
            summary = run_experiment(
                config,
                out_dir,
                executor,
                device=args.device,
                progress=not args.no_progress,
                command=command,
            )
            print(summary.line())
            _print_step_sizes(out_dir, config.experiment.name)
            for run_id in summary.failed:
                print(f"    failed: {run_id} (see failures/{run_id}.json)")
            failed += len(summary.failed)
    return failed


def _print_step_sizes(out_dir, name: str) -> None:
    """The step size of each method label (tuned or given) of the invocation just run."""
    from layerwise.experiments import results

    for line in results.step_size_lines(results.load(out_dir, name)):
        print(f"    {line}")


def command_run(args: argparse.Namespace) -> int:
    try:
        config = _prepare(args.name, args, find_config(args.name, args.config))
    except ConfigError as error:
        known = registry.experiments()
        if args.config is None and args.name not in known:
            hint = did_you_mean(args.name, known)
            return _refuse(
                ValueError(f"unknown experiment {args.name!r}{hint} (see `layerwise list`)")
            )
        return _refuse(error)
    status = _execute([config], args)
    if args.report and status != EXIT_REFUSED:
        return command_report(_default_out(args)) or status
    return status


def command_report(out_dir: Path) -> int:
    from layerwise.experiments import store
    from layerwise.experiments.report import VERDICT_WORDS, write_report

    if not store.stored_experiments(out_dir):
        return _refuse(ValueError(f"{out_dir}: no stored experiments (no */config.json)"))
    from layerwise.experiments.integrity import bad_run_files

    for experiment in store.stored_experiments(out_dir):
        for path, problem in bad_run_files(out_dir, experiment).items():
            return _refuse(
                ValueError(f"{path}: {problem}; rerun `layerwise run {experiment}` to redo it")
            )
    try:
        with output_lock(out_dir):
            written = write_report(out_dir)
    except LockedError as error:
        return _refuse(error)
    width = max((len(claim.id) for claim in written.claims), default=0)
    for claim in written.claims:
        verdict = VERDICT_WORDS[claim.verdict.holds]
        print(f"{claim.id:{width}}  {verdict:13}  {claim.experiment}: {claim.verdict.summary}")
    for kind, path in written.paths.items():
        print(f"{kind}: {path}")
    return EXIT_OK


def command_reproduce(args: argparse.Namespace) -> int:
    configs = []
    names = sorted(registry.experiments())
    if args.only:
        chosen = [name.strip() for name in args.only.split(",") if name.strip()]
        for name in chosen:
            if name not in names:
                hint = did_you_mean(name, names)
                return _refuse(ValueError(f"--only: unknown experiment {name!r}{hint}"))
        names = [name for name in names if name in chosen]
    for name in names:
        try:
            path = find_config(name)
        except ConfigError:
            print(f"{name}: no config found, skipped")
            continue
        try:
            configs.append(_prepare(name, args, path))
        except ConfigError as error:
            return _refuse(error)
    if not configs:
        dirs = ", ".join(str(path) for path in config_search_dirs())
        return _refuse(ValueError(f"no registered experiment has a config (looked in {dirs})"))
    status = _execute(configs, args)
    if status == EXIT_REFUSED:
        return status
    report_status = command_report(_default_out(args))
    return status or report_status


if __name__ == "__main__":
    sys.exit(main())
