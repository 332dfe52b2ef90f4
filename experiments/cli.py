"""The ``toy-entropy`` command line: list and run experiments, write reports.

Exit codes: 0 on success, 2 on a user error (one line on stderr naming the problem).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from pathlib import Path

import toy_entropy
from toy_entropy.runs.claims import format_claims_table
from toy_entropy.runs.rundir import (
    OutDir,
    RunDirError,
    add_run_directory_options,
    check_resume_dir,
    path_option,
    prepare_out_dir,
    resume_directory,
    thread_count,
)
from toy_entropy.training import interrupts
from toy_entropy.training.config import (
    ConfigError,
    apply_overrides,
    config_fields_help,
    config_from_dict,
    config_to_dict,
    replace_paths,
)

# torch and everything that imports it are imported where a command needs them, so that
# `toy-entropy list`, `--help` and `--version` answer at once.

__all__ = ["main", "UserError"]


class UserError(Exception):
    """A problem with what the user asked for; reported in one line with exit code 2."""


MAX_SEED = 2**32 - 1
"""Largest --seed: numpy's legacy seeding takes 32 bits (the trainer derives seed + small k)."""


class _Version(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None) -> None:
        import torch

        print(f"toy-entropy {toy_entropy.__version__} (torch {torch.__version__})")
        parser.exit()


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toy-entropy", description="Policy-entropy dynamics of RL for LM-like policies."
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="show the versions of toy-entropy and torch"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the experiments, one per line")
    run = commands.add_parser("run", help="run a named experiment", add_help=False)
    run.set_defaults(run_parser=run)
    run.add_argument("name", nargs="?", help="experiment name (see `toy-entropy list`)")
    run.add_argument(
        "-h", "--help", action="store_true", help="show this help and the experiment's --set keys"
    )
    add_run_directory_options(run, out_help="run directory (default: runs/NAME__SEED__TIME)")
    run.add_argument("--seed", type=int, default=None, help="base random seed (default 0)")
    run.add_argument("--device", default=None, help="torch device: cpu (default) or cuda")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (repeatable)",
    )
    run.add_argument("--quick", action="store_true", help="the small preset (minutes on a CPU)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    report = commands.add_parser("report", help="write a markdown report of run directories")
    report.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directory")
    report.add_argument(
        "--out",
        type=path_option("--out"),
        default=None,
        help="report file (default: RUN_DIR/report.md)",
    )
    return parser


def _resolve_device(name: str):
    import torch

    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"--device={name!r} is invalid: expected cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device={name} was asked for but CUDA is not available on this machine")
    return torch.device(name)


def _check_seed(seed: int | None) -> int:
    seed = 0 if seed is None else seed
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed={seed} is invalid: expected an integer in [0, {MAX_SEED}]")
    return seed


def _default_out(name: str, seed: int) -> Path:
    return Path("runs") / f"{name}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def _check_threads(threads: int | None) -> int:
    try:
        return thread_count(threads)
    except RunDirError as error:
        raise UserError(str(error)) from None


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    # Same config, seed and thread count -> identical metrics.jsonl on CPU, also on a resume.
    torch.use_deterministic_algorithms(True, warn_only=True)


def _resolve_config(spec, args: argparse.Namespace):
    try:
        config = spec.config_cls()
        if args.quick:
            config = replace_paths(config, spec.quick)
        return apply_overrides(config, args.overrides)
    except (ConfigError, ValueError, TypeError) as error:
        raise UserError(str(error)) from None


def _read_resumable_run(spec, args: argparse.Namespace) -> dict:
    """The stored config.json of the run ``--resume`` names, checked against the command."""
    try:
        directory = resume_directory(args)
        stored = check_resume_dir(directory)
    except RunDirError as error:
        raise UserError(f"--resume={error}") from None
    if stored.get("experiment") != spec.name:
        raise UserError(
            f"--resume={directory} holds a run of {stored.get('experiment')!r}, not {spec.name!r}"
        )
    if args.overrides or args.quick:
        if config_to_dict(_resolve_config(spec, args)) != stored["config"]:
            raise UserError(
                f"--resume={directory}: the --set/--quick options differ from the run's config"
            )
    for option in ("seed", "device", "threads"):
        given = getattr(args, option)
        if given is not None and str(given) != str(stored.get(option)):
            raise UserError(f"--resume={directory}: --{option}={given} differs from the run's")
    return stored


def _check_cache() -> None:
    from toy_entropy.training.warmstart import check_cache_dir

    try:
        check_cache_dir()
    except ValueError as error:
        raise UserError(str(error)) from None


def _start(spec, args: argparse.Namespace):
    """Everything checked before the first write: ``(config, seed, device, out, record)``."""
    from toy_entropy.runs.runlog import environment_info

    if args.resume is not None:
        stored = _read_resumable_run(spec, args)
        directory = resume_directory(args)
        try:
            config = config_from_dict(spec.config_cls, stored["config"])
            device = _resolve_device(str(stored.get("device", "cpu")))
        except (ValueError, TypeError) as error:
            raise UserError(f"--resume={directory}: its config.json is invalid: {error}") from None
        _check_cache()
        return config, _check_seed(stored["seed"]), device, OutDir(directory, None), stored
    config = _resolve_config(spec, args)
    seed = _check_seed(args.seed)
    device = _resolve_device(args.device or "cpu")
    _check_cache()
    try:
        out = prepare_out_dir(args.out or _default_out(spec.name, seed), overwrite=args.overwrite)
    except RunDirError as error:
        raise UserError(str(error)) from None
    record = {
        "experiment": spec.name,
        "preset": "quick" if args.quick else "full",
        "seed": seed,
        "threads": _check_threads(args.threads),
        "config": config_to_dict(config),
        **environment_info(str(device)),
    }
    return config, seed, device, out, record


QUICK_NOTE = (
    "--quick is a smoke test at toy sizes: its claims check that the code runs end to end and "
    "are not scored against the paper (run without --quick for that)"
)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    from toy_entropy.experiments import RunContext, get_experiment
    from toy_entropy.runs.runlog import atomic_write_json, write_run_summary
    from toy_entropy.training.trainer import NonFiniteError

    if args.name is None:
        if args.help:
            return _run_help(parser, None)
        raise UserError("run: give an experiment name (see `toy-entropy list`)")
    try:
        spec = get_experiment(args.name)
    except ValueError as error:
        raise UserError(str(error)) from None
    if args.help:
        return _run_help(parser, spec)
    config, seed, device, out, record = _start(spec, args)
    resume = args.resume is not None
    verb = "resuming" if resume else "running"
    print(f"toy-entropy: {verb} {spec.name!r} in {out.path}", flush=True)
    quick = record.get("preset") == "quick"
    if quick:
        print(f"toy-entropy: {QUICK_NOTE}", flush=True)
    torch.set_num_threads(int(record.get("threads", torch.get_num_threads())))
    _seed_everything(seed)
    context = RunContext(
        out.path, seed, device, show_progress=not args.quiet, resume=resume, config_record=record
    )
    try:
        if not resume:
            atomic_write_json(out.path / "config.json", record)
        result = spec.run(config, context)
    except (ConfigError, RunDirError) as error:  # refused by a check that needs the run
        context.close()  # first: a TensorBoard writer flushing later would recreate the dir
        out.discard()
        raise UserError(str(error)) from None
    except ValueError as error:  # e.g. a corrupt or mismatched checkpoint found on --resume
        if not resume:
            raise
        raise UserError(str(error)) from None
    except interrupts.Interrupted as stop:
        context.close()
        return _interrupted(spec.name, out, stop)
    except NonFiniteError as error:
        context.close()
        write_run_summary(out.path, spec.name, seed, status="stopped", reason=str(error))
        print(f"toy-entropy: stopped: {error}", file=sys.stderr)
        return 1
    finally:
        context.close()
    write_run_summary(out.path, spec.name, seed, result.headline, result.claims)
    if result.claims:
        print()
        print(format_claims_table(result.claims))
        if quick:
            print(f"({QUICK_NOTE})")
    print()
    print(f"Run directory: {out.path}")
    print(f"  summary:     {out.path / 'summary.json'}")
    print(f"  TensorBoard: tensorboard --logdir {out.path}")
    return 0


def _interrupted(name: str, out: OutDir, stop: interrupts.Interrupted) -> int:
    """One line on an interrupt: what was kept and how to continue."""
    if any(out.path.rglob("step_*.pt")):
        print(
            f"toy-entropy: {stop}; the last completed step is checkpointed. "
            f"Resume with: toy-entropy run {name} --resume {out.path}",
            file=sys.stderr,
        )
    elif out.created is not None:
        out.discard()
        print(f"toy-entropy: {stop} before the first step ended; nothing kept", file=sys.stderr)
    else:
        print(
            f"toy-entropy: {stop}; resume with: toy-entropy run {name} --resume {out.path}",
            file=sys.stderr,
        )
    return interrupts.exit_code(stop.signum)


def _run_help(parser: argparse.ArgumentParser, spec) -> int:  # the `run` sub-parser
    """``toy-entropy run [NAME] --help``: the options, then NAME's --set keys."""
    print(parser.format_help())
    if spec is None:
        print("Give an experiment name to see its --set keys (toy-entropy run NAME --help).")
        return 0
    print(f"{spec.name}: {spec.description}\n\n--set keys (default, then what it is):")
    quick = dict(spec.quick)
    for key, default, text in config_fields_help(spec.config_cls()):
        preset = f"; --quick: {quick[key]!r}" if key in quick else ""
        print(f"  {key} = {default!r}{preset}\n      {text}")
    return 0


def _list() -> int:
    from toy_entropy.experiments.catalogue import catalogue

    try:
        for name, description in catalogue():
            print(f"{name}\t{description}")
        sys.stdout.flush()
    except BrokenPipeError:  # `toy-entropy list | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _report(args: argparse.Namespace) -> int:
    from toy_entropy.runs.report import write_report

    try:
        path = write_report(args.run_dirs, args.out)
    except ValueError as error:
        raise UserError(str(error)) from None
    print(f"Report: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``toy-entropy`` console script."""
    args = _build_parser().parse_args(argv)
    if args.command == "run":
        interrupts.install()  # Ctrl-C / SIGTERM: finish the step, checkpoint, exit 130 / 143
        import torch

        threads = torch.get_num_threads()  # a run sets its own; in-process callers get theirs back
    try:
        if args.command == "list":
            return _list()
        if args.command == "run":
            return _run(args, args.run_parser)
        if args.command == "report":
            return _report(args)
    except UserError as error:
        print(f"toy-entropy: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("toy-entropy: aborted by a second interrupt; steps since the last checkpoint are "
              "lost", file=sys.stderr)  # fmt: skip
        return interrupts.exit_code(2)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        where = error.filename or getattr(args, "out", None) or "the run directory"
        print(f"toy-entropy: error: no space left on device while writing {where}", file=sys.stderr)
        return 1
    finally:
        if args.command == "run":
            interrupts.restore_defaults()
            torch.set_num_threads(threads)
    return 2


if __name__ == "__main__":
    sys.exit(main())
