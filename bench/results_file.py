"""Shared by the benchmarks: append one run's table to a results Markdown file."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path


def append_results(
    out: str | Path, script: str, argv: Sequence[str] | None, note: str, lines: Sequence[str]
) -> None:
    """Append the command that ran (``python bench/SCRIPT ARGS``), the run's note (date,
    torch, machine) and its table ``lines`` to the Markdown file ``out``."""
    command = f"python bench/{script} " + " ".join(argv or sys.argv[1:])
    with open(out, "a", encoding="utf-8") as handle:
        handle.write(f"\n`{command.strip()}`  \n{note}\n\n" + "\n".join(lines) + "\n")
