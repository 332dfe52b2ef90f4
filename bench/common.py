"""Shared by the benchmarks: the device options and a results Markdown file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch


def add_device_options(parser: argparse.ArgumentParser, threads: bool = True) -> None:
    """``--device`` (cpu, cuda), ``--out`` (a results file) and, unless ``threads`` is False,
    ``--threads`` (one CPU thread count; 0: torch's default)."""
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", default=None, help="also append the table (Markdown) here")
    if threads:
        parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")


def resolve_device(args: argparse.Namespace, threads: int = 0) -> torch.device | None:
    """The device ``args.device`` names, with ``threads`` CPU threads set (0: torch's default);
    None (after a line on stderr) when CUDA is asked for and missing."""
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available", file=sys.stderr)
        return None
    if threads:
        torch.set_num_threads(threads)
    return torch.device(args.device)


def append_results(
    out: str | Path, script: str, argv: Sequence[str] | None, note: str, lines: Sequence[str]
) -> None:
    """Append the command that ran (``python bench/SCRIPT ARGS``), the run's note (date,
    torch, machine) and its table ``lines`` to the Markdown file ``out``."""
    command = f"python bench/{script} " + " ".join(argv or sys.argv[1:])
    with open(out, "a", encoding="utf-8") as handle:
        handle.write(f"\n`{command.strip()}`  \n{note}\n\n" + "\n".join(lines) + "\n")
