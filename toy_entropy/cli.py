"""The ``toy-entropy`` command line: list and run experiments, write reports.

Exit codes: 0 on success, 2 on a user error (one line on stderr naming the problem).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from toy_entropy.claims import format_claims_table
from toy_entropy.config import ConfigError, apply_overrides, config_to_dict
from toy_entropy.runlog import atomic_write_json, environment_info
from toy_entropy.trainer import NonFiniteError

__all__ = ["main", "UserError"]


class UserError(Exception):
    """A problem with what the user asked for; reported in one line with exit code 2."""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toy-entropy", description="Policy-entropy dynamics of RL for LM-like policies."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the experiments, one per line")
    run = commands.add_parser("run", help="run a named experiment")
    run.add_argument("name", help="experiment name (see `toy-entropy list`)")
    run.add_argument("--out", type=Path, default=None, help="run directory (default: runs/...)")
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
    run.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    run.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="DIR",
        help="continue the killed run in DIR from its latest checkpoint",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    report = commands.add_parser("report", help="write a markdown report of run directories")
    report.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directory")
    report.add_argument(
        "--out", type=Path, default=None, help="report file (default: RUN_DIR/report.md)"
    )
    return parser


def _resolve_device(name: str) -> torch.device:
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"--device={name!r} is invalid: expected cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device={name} was asked for but CUDA is not available on this machine")
    return torch.device(name)


def _prepare_out_dir(out: Path | None, name: str, seed: int, overwrite: bool) -> Path:
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{name}__{seed}__{stamp}"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out={out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(
                f"--out={out} already holds files; pass --overwrite to replace it "
                "or choose another directory"
            )
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UserError(f"--out={out} is not writable: {error.strerror or error}") from None
    return out


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    # Same config and seed -> identical metrics.jsonl on CPU, also after a resume.
    torch.use_deterministic_algorithms(True, warn_only=True)


def _resolve_config(spec, args: argparse.Namespace):
    try:
        config = spec.config_cls()
        if args.quick:
            config = dataclasses.replace(config, **spec.quick)
        return apply_overrides(config, args.overrides)
    except (ConfigError, ValueError, TypeError) as error:
        raise UserError(str(error)) from None


def _read_resumable_run(spec, args: argparse.Namespace) -> dict:
    """The stored config.json of the run ``--resume`` names, checked against the command."""
    directory = args.resume
    if not spec.resumable:
        raise UserError(
            f"experiment {spec.name!r} cannot be resumed (it has no checkpoints); "
            "rerun it with --overwrite"
        )
    if args.out is not None and Path(args.out).resolve() != directory.resolve():
        raise UserError("--resume and --out name different directories; give only --resume")
    config_path = directory / "config.json"
    try:
        stored = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"--resume={directory}: no config.json, so it is not a run directory"
        ) from None
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"--resume={directory}: config.json is unreadable: {error}") from None
    if stored.get("experiment") != spec.name:
        raise UserError(
            f"--resume={directory} holds a run of {stored.get('experiment')!r}, not {spec.name!r}"
        )
    if (directory / "summary.json").exists():
        raise UserError(f"--resume={directory}: the run already finished (summary.json exists)")
    if args.overrides or args.quick:
        if config_to_dict(_resolve_config(spec, args)) != stored["config"]:
            raise UserError(
                f"--resume={directory}: the --set/--quick options differ from the run's config"
            )
    for option in ("seed", "device"):
        given = getattr(args, option)
        if given is not None and str(given) != str(stored[option]):
            raise UserError(f"--resume={directory}: --{option}={given} differs from the run's")
    return stored


def _run(args: argparse.Namespace) -> int:
    from experiments import RunContext, get_experiment

    try:
        spec = get_experiment(args.name)
    except ValueError as error:
        raise UserError(str(error)) from None
    if args.resume is not None:
        stored = _read_resumable_run(spec, args)
        try:
            config = spec.config_cls(**_fields_from_json(spec.config_cls, stored["config"]))
        except (ValueError, TypeError) as error:
            raise UserError(
                f"--resume={args.resume}: its config.json is invalid: {error}"
            ) from None
        seed, device, out_dir = stored["seed"], _resolve_device(stored["device"]), args.resume
        resolved = stored
    else:
        config = _resolve_config(spec, args)
        seed = 0 if args.seed is None else args.seed
        device = _resolve_device(args.device or "cpu")
        out_dir = _prepare_out_dir(args.out, spec.name, seed, args.overwrite)
        resolved = {
            "experiment": spec.name,
            "preset": "quick" if args.quick else "full",
            "seed": seed,
            "config": config_to_dict(config),
            **environment_info(str(device)),
        }
    verb = "resuming" if args.resume is not None else "running"
    print(f"toy-entropy: {verb} {spec.name!r} in {out_dir}", flush=True)
    _seed_everything(seed)
    atomic_write_json(out_dir / "config.json", resolved)
    context = RunContext(
        out_dir,
        seed,
        device,
        show_progress=not args.quiet,
        resume=args.resume is not None,
        config_record=resolved,
    )
    try:
        result = spec.run(config, context)
    except NonFiniteError as error:
        print(f"toy-entropy: stopped: {error}", file=sys.stderr)
        return 1
    except ValueError as error:  # e.g. a corrupt checkpoint found while resuming
        if args.resume is None:
            raise
        raise UserError(str(error)) from None
    finally:
        context.close()
    summary = {
        "experiment": spec.name,
        "seed": seed,
        "headline": result.headline,
        "claims": [c.to_dict() for c in result.claims],
    }
    atomic_write_json(out_dir / "summary.json", summary)
    if result.claims:
        print()
        print(format_claims_table(result.claims))
    print()
    print(f"Run directory: {out_dir}")
    print(f"  summary:     {out_dir / 'summary.json'}")
    print(f"  TensorBoard: tensorboard --logdir {out_dir}")
    return 0


def _fields_from_json(config_cls: type, values: dict) -> dict:
    """Stored config values with tuples restored where the dataclass declares them."""
    defaults = config_cls()
    return {
        name: tuple(value) if isinstance(getattr(defaults, name), tuple) else value
        for name, value in values.items()
        if hasattr(defaults, name)
    }


def _list() -> int:
    from experiments import list_experiments

    for spec in list_experiments():
        print(f"{spec.name}\t{spec.description}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from toy_entropy.report import write_report

    try:
        path = write_report(args.run_dirs, args.out)
    except ValueError as error:
        raise UserError(str(error)) from None
    print(f"Report: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``toy-entropy`` console script."""
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "list":
            return _list()
        if args.command == "run":
            return _run(args)
        if args.command == "report":
            return _report(args)
    except UserError as error:
        print(f"toy-entropy: error: {error}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
