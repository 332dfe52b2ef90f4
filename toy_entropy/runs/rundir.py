"""Run-directory rules shared by every entry point (``toy-entropy run``, ``toy_entropy.train``).

One set of rules, so that no command mixes two runs or deletes what is not a run:

- ``--out`` must name a directory other than the working directory and its ancestors; an empty
  ``--out`` (an unset shell variable) is refused.
- An existing non-empty ``--out`` needs ``--resume`` (continue it) or ``--overwrite``
  (replace it); ``--overwrite`` removes only a directory that is recognisably a toy-entropy
  run (a config.json with this project's schema), and never together with ``--resume``.
- What a refused or failed start created is removed again (:meth:`OutDir.discard`), so the
  file system is left as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "RunDirError",
    "add_run_directory_options",
    "path_option",
    "resume_directory",
    "thread_count",
    "OutDir",
    "prepare_out_dir",
    "check_new_out_dir",
    "check_resume_dir",
    "read_run_record",
    "check_out_option",
    "is_run_directory",
]


class RunDirError(ValueError):
    """A run-directory option names something this command must not use."""


def check_out_option(text: str | os.PathLike | None, option: str = "--out") -> Path | None:
    """``text`` as a path; refuses an empty string (what ``--out "$UNSET"`` gives)."""
    if text is None:
        return None
    if not str(text).strip():
        raise RunDirError(f"{option} is empty; give a directory name")
    return Path(text)


def path_option(option: str):
    """An argparse ``type`` for a directory option that refuses an empty value."""

    def parse(text: str) -> Path:
        try:
            return check_out_option(text, option)
        except RunDirError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def add_run_directory_options(parser: argparse.ArgumentParser, out_help: str) -> None:
    """The options every entry point takes: ``--out``, ``--resume [DIR]``, ``--overwrite``,
    ``--threads`` (one set of rules, :func:`resume_directory`, :func:`prepare_out_dir`)."""
    parser.add_argument("--out", type=path_option("--out"), default=None, help=out_help)
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        type=path_option("--resume"),
        metavar="DIR",
        help="continue the killed run in DIR (default: --out) from its newest checkpoint",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the toy-entropy run in --out"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of torch per process (default 1: the same numbers on any machine; "
        "the thread count changes the order of floating-point sums)",
    )


def thread_count(threads: int | None) -> int:
    """The ``--threads`` value: 1 when not given.

    Raises:
        RunDirError: a value below 1.
    """
    threads = 1 if threads is None else threads
    if threads < 1:
        raise RunDirError(f"--threads={threads} is invalid: expected an integer >= 1")
    return threads


def resume_directory(args: argparse.Namespace) -> Path | None:
    """The run directory ``--resume`` names (``--resume DIR``, or ``--resume`` with ``--out``);
    None without ``--resume``.

    Raises:
        RunDirError: ``--resume`` with ``--overwrite``, or naming another directory than
            ``--out``, or with no directory at all.
    """
    if args.resume is None:
        return None
    if args.overwrite:
        raise RunDirError("--resume and --overwrite contradict each other; give one of them")
    named = args.resume if isinstance(args.resume, Path) else None
    if named is not None and args.out is not None and named.resolve() != args.out.resolve():
        raise RunDirError("--resume and --out name different directories; give only one")
    if named is None and args.out is None:
        raise RunDirError("--resume needs the run directory: --resume DIR")
    return named or args.out


def read_run_record(directory: Path) -> dict:
    """The config.json of run ``directory``, checked to have this project's schema.

    Raises:
        RunDirError: naming the problem (missing, unreadable, not a toy-entropy run).
    """
    path = Path(directory) / "config.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{directory}: no config.json, so it is not a run directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunDirError(f"{directory}: config.json is unreadable: {error}") from None
    if not isinstance(record, dict):
        raise RunDirError(
            f"{directory}: config.json holds a {type(record).__name__}, not a run record"
        )
    missing = [key for key in ("config", "seed", "toy_entropy_version") if key not in record]
    if missing:
        raise RunDirError(
            f"{directory}: config.json lacks {', '.join(missing)}, so it is not a toy-entropy run"
        )
    if not isinstance(record["config"], dict):
        raise RunDirError(f"{directory}: config.json's 'config' is not an object")
    seed = record["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RunDirError(f"{directory}: config.json's seed={seed!r} is not an integer")
    return record


def is_run_directory(directory: Path) -> bool:
    """True when ``directory`` holds a config.json written by toy-entropy."""
    try:
        read_run_record(directory)
    except RunDirError:
        return False
    return True


def _protected(directory: Path) -> bool:
    """The working directory, one of its ancestors, or the file-system root or home."""
    resolved = directory.resolve()
    cwd = Path.cwd().resolve()
    return resolved == cwd or resolved in cwd.parents or resolved in (Path.home().resolve(),)


@dataclass
class OutDir:
    """A run directory this command may write to.

    Attributes:
        path: the directory.
        created: the outermost directory this command created for it (``path`` or one of its
            parents), None if ``path`` existed; a failed start removes it.
    """

    path: Path
    created: Path | None

    def discard(self) -> None:
        """Remove what this command created for the run (after a refused or failed start)."""
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
            self.created = None


def check_new_out_dir(out: Path, *, overwrite: bool, option: str = "--out") -> None:
    """Check, without writing, that a new run may be started in ``out`` (rules above).

    Raises:
        RunDirError: one line naming the directory and the rule it breaks.
    """
    out = Path(out)
    if _protected(out):
        raise RunDirError(
            f"{option}={out} is the working directory or one of its ancestors; "
            "choose a new directory"
        )
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{option}={out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise RunDirError(
                f"{option}={out} already holds files; pass --resume to continue the run in it, "
                "--overwrite to replace it, or choose another directory"
            )
        if not is_run_directory(out):
            raise RunDirError(
                f"{option}={out} is not a toy-entropy run directory (no valid config.json); "
                "--overwrite only replaces runs, so nothing was deleted"
            )


def check_resume_dir(directory: Path) -> dict:
    """Check that the run in ``directory`` can be resumed; returns its config.json record.

    Raises:
        RunDirError: not a run, or a run that already finished.
    """
    record = read_run_record(directory)
    if (Path(directory) / "summary.json").exists():
        raise RunDirError(f"{directory}: the run already finished (summary.json exists)")
    return record


def prepare_out_dir(out: Path, *, overwrite: bool, option: str = "--out") -> OutDir:
    """Check ``out`` (:func:`check_new_out_dir`), empty it if ``overwrite`` allows, create it
    and check that it is writable.

    Raises:
        RunDirError: one line naming the directory and the rule it breaks.
    """
    out = Path(out)
    check_new_out_dir(out, overwrite=overwrite, option=option)
    if out.is_dir() and any(out.iterdir()):
        shutil.rmtree(out)
    created = None
    if not out.exists():
        created = out
        while not created.parent.exists():
            created = created.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        OutDir(out, created).discard()
        raise RunDirError(f"{option}={out} is not writable: {error.strerror or error}") from None
    return OutDir(out, created)
