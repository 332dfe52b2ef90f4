"""The registry of named experiments and the context each run gets."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from toy_entropy.experiments.catalogue import EXPERIMENT_MODULES
from toy_entropy.runs.claims import Claim
from toy_entropy.runs.runlog import RunWriter

__all__ = [
    "Experiment",
    "ExperimentResult",
    "RunContext",
    "experiment",
    "get_experiment",
    "list_experiments",
]


@dataclass
class ExperimentResult:
    """What an experiment returns: headline numbers and checked claims."""

    headline: dict[str, Any]
    claims: list[Claim]


@dataclass
class RunContext:
    """Where and how one experiment runs.

    Attributes:
        out_dir: the run directory (already created, config.json written).
        seed: the base seed; multi-seed experiments derive theirs as ``seed + i``.
        device: the torch device every tensor lives on.
        show_progress: draw progress bars (off in tests).
        resume: continue the run found in ``out_dir`` from its latest checkpoint.
        config_record: the resolved config; the top-level writer saves it (config.json and
            TensorBoard text) when it is created.
    """

    out_dir: Path
    seed: int
    device: torch.device
    show_progress: bool = True
    resume: bool = False
    config_record: dict | None = None
    _writers: dict[str | None, RunWriter] = field(default_factory=dict)

    def run_dir(self, sub_run: str | None = None) -> Path:
        return self.out_dir if sub_run is None else self.out_dir / sub_run

    def writer(
        self,
        sub_run: str | None = None,
        resume_from_step: int | None = None,
        tensorboard: bool = True,
    ) -> RunWriter:
        """The writer of the top-level run, or of the sub-run directory ``out_dir/sub_run``.

        The first call for a run directory creates it; ``resume_from_step`` then drops what
        was logged after that step (see :class:`RunWriter`). When resuming, a directory
        written without checkpoints (``resume_from_step=None``: figures, seed bands, bandit
        curves, which are recomputed) starts over. ``tensorboard=False`` writes metrics.jsonl
        only (no event files: the run is not a TensorBoard run).
        """
        if sub_run not in self._writers:
            if self.resume and resume_from_step is None:
                resume_from_step = -1
            fresh = resume_from_step is None or resume_from_step < 0
            self._writers[sub_run] = RunWriter(
                self.run_dir(sub_run), tensorboard, resume_from_step=resume_from_step
            )
            if sub_run is None and self.config_record is not None and fresh:
                self._writers[sub_run].write_config(self.config_record)
        return self._writers[sub_run]

    def progress(self, iterable: Iterable, total: int | None = None, desc: str = ""):
        if not self.show_progress:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)

    def progress_bar(self, total: int, desc: str):
        """A bar to ``update(n)`` by hand (a no-op object without ``show_progress``)."""
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True,
                    disable=not self.show_progress)  # fmt: skip

    def close(self) -> None:
        for run_writer in self._writers.values():
            run_writer.close()
        self._writers.clear()


@dataclass(frozen=True)
class Experiment:
    """A named, runnable experiment.

    Attributes:
        name: the name ``toy-entropy run NAME`` takes.
        description: one line for ``toy-entropy list``.
        config_cls: a dataclass whose defaults are the full preset.
        run: ``run(config, context) -> ExperimentResult``.
        quick: field overrides of the ``--quick`` preset.

    Every experiment resumes (``--resume``): training runs continue from their checkpoints,
    finished ones are read back, and what keeps no checkpoint is recomputed.
    """

    name: str
    description: str
    config_cls: type
    run: Callable[[Any, RunContext], ExperimentResult]
    quick: Mapping[str, Any]


_REGISTRY: dict[str, Experiment] = {}


def experiment(
    name: str,
    description: str,
    config_cls: type,
    quick: Mapping[str, Any] | None = None,
) -> Callable:
    """Decorator registering ``run(config, context)`` under ``name``."""

    def decorate(run: Callable[[Any, RunContext], ExperimentResult]):
        if name in _REGISTRY:
            raise ValueError(f"experiment {name!r} is registered twice")
        _REGISTRY[name] = Experiment(name, description, config_cls, run, dict(quick or {}))
        return run

    return decorate


def _load_all() -> None:
    for module in EXPERIMENT_MODULES:
        importlib.import_module(module)


def list_experiments() -> list[Experiment]:
    """Every registered experiment, sorted by name."""
    _load_all()
    return sorted(_REGISTRY.values(), key=lambda e: e.name)


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; a ValueError lists the known names otherwise."""
    _load_all()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown experiment {name!r}; known experiments: {known}")
    return _REGISTRY[name]
