"""Atomic checkpoints of a training run: model, optimiser, RNG states, step and config."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "atomic_torch_save",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "prune_checkpoints",
]

_PATTERN = "step_{:06d}.pt"


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep_last: int = 3) -> Path:
    """Write ``state`` to ``directory/step_NNNNNN.pt`` through a temporary file and a rename.

    A process killed mid-write leaves only a ``.tmp`` file, never a truncated checkpoint.
    The newest ``keep_last`` checkpoints are kept (0 keeps all).
    """
    directory = Path(directory)
    path = directory / _PATTERN.format(step)
    atomic_torch_save(state, path)
    prune_checkpoints(directory, keep_last)
    return path


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` through ``.NAME.PID.tmp`` and a rename: never half-written.

    The object is serialised in memory first, so that a full disk surfaces as an ``OSError``
    (ENOSPC) naming ``path`` rather than as a serialiser error; the temporary file is removed
    on any failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as handle:
            handle.write(buffer.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def prune_checkpoints(directory: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (and stale temporary files)."""
    for stale in Path(directory).glob(".step_*.tmp"):
        stale.unlink(missing_ok=True)
    if keep_last > 0:
        for old in sorted(Path(directory).glob("step_*.pt"))[:-keep_last]:
            old.unlink(missing_ok=True)


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint in ``directory`` or None."""
    found = sorted(Path(directory).glob("step_*.pt"))
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint; a missing or corrupt file raises ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises several types for a damaged file
        raise ValueError(f"checkpoint {path} is unreadable or corrupt: {error}") from None
