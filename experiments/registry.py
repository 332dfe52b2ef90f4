"""The registry of named experiments and the context each run gets."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from toy_entropy.claims import Claim
from toy_entropy.runlog import RunWriter

__all__ = [
    "Experiment",
    "ExperimentResult",
    "RunContext",
    "experiment",
    "get_experiment",
    "list_experiments",
]

# Modules that define experiments; imported on first use so that `toy-entropy list` is fast.
_EXPERIMENT_MODULES = (
    "experiments.identity",
    "experiments.bandit_collapse",
    "experiments.sanity",
    "experiments.collapse",
    "experiments.methods",
    "experiments.law",
    "experiments.clip_higher_cov",
    "experiments.identity_granularity",
    "experiments.entropy_targets",
    "experiments.cure",
    "experiments.cure_exact",
)


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

    def writer(self, sub_run: str | None = None, resume_from_step: int | None = None) -> RunWriter:
        """The writer of the top-level run, or of the sub-run directory ``out_dir/sub_run``.

        The first call for a run directory creates it; ``resume_from_step`` then drops what
        was logged after that step (see :class:`RunWriter`).
        """
        if sub_run not in self._writers:
            self._writers[sub_run] = RunWriter(
                self.run_dir(sub_run), resume_from_step=resume_from_step
            )
            if sub_run is None and self.config_record is not None:
                self._writers[sub_run].write_config(self.config_record)
        return self._writers[sub_run]

    def progress(self, iterable: Iterable, total: int | None = None, desc: str = ""):
        if not self.show_progress:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)

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
        resumable: ``--resume`` continues a killed run from its checkpoints.
    """

    name: str
    description: str
    config_cls: type
    run: Callable[[Any, RunContext], ExperimentResult]
    quick: Mapping[str, Any]
    resumable: bool = False


_REGISTRY: dict[str, Experiment] = {}


def experiment(
    name: str,
    description: str,
    config_cls: type,
    quick: Mapping[str, Any] | None = None,
    resumable: bool = False,
) -> Callable:
    """Decorator registering ``run(config, context)`` under ``name``."""

    def decorate(run: Callable[[Any, RunContext], ExperimentResult]):
        if name in _REGISTRY:
            raise ValueError(f"experiment {name!r} is registered twice")
        _REGISTRY[name] = Experiment(
            name, description, config_cls, run, dict(quick or {}), resumable
        )
        return run

    return decorate


def _load_all() -> None:
    for module in _EXPERIMENT_MODULES:
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
