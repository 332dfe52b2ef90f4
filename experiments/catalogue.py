"""The experiments' names and one-line descriptions, read without importing them.

``toy-entropy list`` answers at once: it reads each experiment module's ``@experiment(name,
description, ...)`` decorator from the source instead of importing the module (and torch).
The registry imports the same modules to run them.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

__all__ = ["EXPERIMENT_MODULES", "catalogue"]

EXPERIMENT_MODULES = (
    "toy_entropy.experiments.bandit_identity",
    "toy_entropy.experiments.bandit_collapse",
    "toy_entropy.experiments.sanity",
    "toy_entropy.experiments.collapse",
    "toy_entropy.experiments.methods",
    "toy_entropy.experiments.law",
    "toy_entropy.experiments.clip_higher_cov",
    "toy_entropy.experiments.identity",
    "toy_entropy.experiments.entropy_targets",
    "toy_entropy.experiments.lesson",
    "toy_entropy.experiments.cure",
    "toy_entropy.experiments.cure_exact",
    "toy_entropy.experiments.questions",
    "toy_entropy.experiments.questions_training",
    "toy_entropy.experiments.controllers",
    "toy_entropy.experiments.forking_tokens",
    "toy_entropy.experiments.clip_asymmetry",
    "toy_entropy.experiments.sample_polarity",
    "toy_entropy.experiments.predictors",
)
"""Modules that define experiments (each with one or more ``@experiment`` functions)."""


def _declared(path: Path) -> list[tuple[str, str]]:
    """``(name, description)`` of every ``@experiment("name", "description", ...)`` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            if (
                isinstance(decorator, ast.Call)
                and getattr(decorator.func, "id", None) == "experiment"
                and len(decorator.args) >= 2
                and all(isinstance(a, ast.Constant) for a in decorator.args[:2])
            ):
                found.append((decorator.args[0].value, decorator.args[1].value))
    return found


def catalogue() -> list[tuple[str, str]]:
    """Every experiment's ``(name, description)``, sorted by name."""
    entries = []
    for module in EXPERIMENT_MODULES:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise ImportError(f"experiment module {module} is missing")
        entries += _declared(Path(spec.origin))
    return sorted(entries)
