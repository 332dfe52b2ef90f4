"""The KL-Cov / Clip-Cov ratio knobs of four codebases, and how many tokens each selects.

The same knob has different units across codebases (PRIME-RL/Entropy-Mechanism-of-RL issue
threads, verl, SkyRL): the paper's code reads ``k_percent`` as a percent, verl's
``kl_cov_ratio``, SkyRL's ``kl_cov_frac`` and this project's ``kl_cov_ratio`` /
``clip_cov_ratio`` as fractions. :func:`selected_count` applies each codebase's count rule,
and :data:`KNOBS` lists the settings the docs' units table (docs/questions.md) compares.

Sources (read through the public code index, not copied):

- paper: ``verl/trainer/ppo/core_algos.py`` of Entropy-Mechanism-of-RL,
  ``max(1, int(N * k_percent / 100))`` top tokens; ``verl/trainer/config/ppo_trainer.yaml``:
  ``k_percent: 0.2``, ``ppo_kl_coef: 1``, ``clip_cov_ratio: 0.0002`` (a fraction:
  ``max(int(clip_ratio * N), 1)``);
- verl: ``verl/trainer/ppo/core_algos.py``, ``max(1, int(N * kl_cov_ratio))``;
  ``verl/workers/config/actor.py``: ``kl_cov_ratio = 0.0002``, ``ppo_kl_coef = 0.1``,
  ``clip_cov_ratio = 0.0002``;
- SkyRL: ``skyrl-train/skyrl_train/utils/ppo_utils.py``, ``max(1, int(N * kl_cov_frac))``;
  ``skyrl-train/skyrl_train/config/ppo_base_config.yaml``: ``kl_cov_frac: 0.2`` ("20%"),
  ``ppo_kl_coef: 1.0``, ``clip_cov.clip_ratio: 0.0002``;
- here: :func:`toy_entropy.algorithms.losses.diagnostics.count_of_fraction`,
  ``max(1, floor(N * r))`` in float64, the fraction rule (tested to agree).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Knob", "KNOBS", "UNITS", "selected_count", "units_rows"]

UNITS = ("percent", "fraction")


def selected_count(unit: str, value: float, n_tokens: int) -> int:
    """Tokens a KL-Cov / Clip-Cov ratio ``value`` selects among ``n_tokens`` valid tokens.

    ``unit="percent"`` is the paper's ``k_percent`` rule, ``max(1, int(N * value / 100))``
    (in that order of operations); ``unit="fraction"`` is verl's, SkyRL's and this project's,
    ``max(1, int(N * value))``. Both truncate a Python float, as the codebases do.
    """
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    if unit == "percent":
        return max(1, int(n_tokens * value / 100))
    if unit == "fraction":
        return max(1, int(n_tokens * value))
    raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")


@dataclass(frozen=True)
class Knob:
    """One setting of one codebase's ratio knob."""

    setting: str
    """what the row stands for (the paper's 7B KL-Cov, a default, a unit slip)"""
    codebase: str
    """``"paper"``, ``"verl"``, ``"skyrl"`` or ``"here"``"""
    knob: str
    """the knob's name as that codebase's config spells it"""
    unit: str
    """how the codebase reads it: ``"percent"`` or ``"fraction"`` (:func:`selected_count`)"""
    value: float
    """the value written in the config"""
    kl_coef: float | None
    """the KL-Cov penalty coefficient that goes with it (None for Clip-Cov)"""


PAPER_7B = "paper 7B KL-Cov (0.2% of tokens, beta 1)"

KNOBS: tuple[Knob, ...] = (
    Knob(PAPER_7B, "paper", "k_percent", "percent", 0.2, 1.0),
    Knob(PAPER_7B, "verl", "kl_cov_ratio", "fraction", 2e-3, 1.0),
    Knob(PAPER_7B, "skyrl", "kl_cov.kl_cov_frac", "fraction", 2e-3, 1.0),
    Knob(PAPER_7B, "here", "kl_cov_ratio", "fraction", 2e-3, 1.0),
    Knob("default", "paper", "k_percent", "percent", 0.2, 1.0),
    Knob("default", "verl", "kl_cov_ratio", "fraction", 2e-4, 0.1),
    Knob("default", "skyrl", "kl_cov.kl_cov_frac", "fraction", 0.2, 1.0),
    Knob("default", "here", "kl_cov_ratio", "fraction", 2e-3, 1.0),
    Knob(
        "slip: the paper's 0.2 copied into a fraction knob",
        "verl",
        "kl_cov_ratio",
        "fraction",
        0.2,
        1.0,
    ),
    Knob("slip: a fraction 2e-3 copied into k_percent", "paper", "k_percent", "percent", 2e-3, 1.0),
    Knob("Clip-Cov default", "paper", "clip_cov_ratio", "fraction", 2e-4, None),
    Knob("Clip-Cov default", "verl", "clip_cov_ratio", "fraction", 2e-4, None),
    Knob("Clip-Cov default", "skyrl", "clip_cov.clip_ratio", "fraction", 2e-4, None),
    Knob("Clip-Cov default", "here", "clip_cov_ratio", "fraction", 2e-4, None),
)
"""The rows of the units table. Clip-Cov's ratio is a fraction in all four codebases, the
paper's code included (only its ``k_percent`` is a percent)."""


def units_rows(n_tokens: int = 100_000) -> list[dict]:
    """One dict per :data:`KNOBS` entry: its fields, and ``selected`` / ``selected_fraction``
    (tokens selected among ``n_tokens`` and their share)."""
    rows = []
    for knob in KNOBS:
        count = selected_count(knob.unit, knob.value, n_tokens)
        rows.append(asdict(knob) | {"selected": count, "selected_fraction": count / n_tokens})
    return rows
