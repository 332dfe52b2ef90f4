"""Named, runnable experiments (``toy-entropy list`` shows them).

The registry (and with it torch) is imported on first use of one of its names, so that
``experiments.catalogue`` can list the experiments at once.
"""

_REGISTRY_NAMES = (
    "Experiment",
    "ExperimentResult",
    "RunContext",
    "experiment",
    "get_experiment",
    "list_experiments",
)

__all__ = list(_REGISTRY_NAMES)


def __getattr__(name: str):
    if name in _REGISTRY_NAMES:
        from toy_entropy.experiments import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'experiments' has no attribute {name!r}")
