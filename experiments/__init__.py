"""Named, runnable experiments (``toy-entropy list`` shows them)."""

from experiments.registry import (
    Experiment,
    ExperimentResult,
    RunContext,
    experiment,
    get_experiment,
    list_experiments,
)

__all__ = [
    "Experiment",
    "ExperimentResult",
    "RunContext",
    "experiment",
    "get_experiment",
    "list_experiments",
]
