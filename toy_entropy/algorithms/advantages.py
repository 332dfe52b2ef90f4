"""Advantage estimators for group-sampled responses, in a registry, and the all-equal filter.

Rewards come as a ``(P, G)`` tensor: G responses for each of P prompts (one GRPO group per row).
Every estimator returns ``(P, G)`` advantages on the rewards' device, without host syncs.

- ``grpo``: ``(r - mean_g r) / (std_g r + 1e-6)``, std the *unbiased* (n-1) sample standard
  deviation of the group (as ``torch.std``, TRL and verl), eps = 1e-6 as in the paper;
- ``dr_grpo``: ``r - mean_g r`` (Dr. GRPO: no std normalisation);
- ``rloo``: ``r - mean of the other G-1 rewards`` (leave-one-out; unbiased baseline);
- ``reinforce``: ``r - mean of the whole batch`` (REINFORCE with a batch baseline).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["ADVANTAGE_ESTIMATORS", "compute_advantages", "filter_uniform_groups"]

GRPO_EPS = 1e-6

Estimator = Callable[[torch.Tensor], torch.Tensor]
ADVANTAGE_ESTIMATORS: dict[str, Estimator] = {}


def _register(name: str) -> Callable[[Estimator], Estimator]:
    def decorate(fn: Estimator) -> Estimator:
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return decorate


@_register("grpo")
def _grpo(rewards: torch.Tensor) -> torch.Tensor:
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (rewards.std(dim=1, keepdim=True) + GRPO_EPS)


@_register("dr_grpo")
def _dr_grpo(rewards: torch.Tensor) -> torch.Tensor:
    return rewards - rewards.mean(dim=1, keepdim=True)


@_register("rloo")
def _rloo(rewards: torch.Tensor) -> torch.Tensor:
    group_size = rewards.shape[1]
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (group_size - 1)
    return rewards - others


@_register("reinforce")
def _reinforce(rewards: torch.Tensor) -> torch.Tensor:
    return rewards - rewards.mean()


def compute_advantages(name: str, rewards: torch.Tensor) -> torch.Tensor:
    """Advantages ``(P, G)`` of ``(P, G)`` group rewards by the estimator ``name``."""
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(
            f"advantage estimator {name!r} is unknown: expected one of "
            f"{sorted(ADVANTAGE_ESTIMATORS)}"
        )
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(
            f"rewards must be (P, G) with G >= 2 responses per prompt, got {tuple(rewards.shape)}"
        )
    if not rewards.dtype.is_floating_point:
        raise TypeError(f"rewards must be a floating tensor, got {rewards.dtype}")
    return ADVANTAGE_ESTIMATORS[name](rewards)


def filter_uniform_groups(rewards: torch.Tensor) -> torch.Tensor:
    """``(P,)`` bool: True for groups whose rewards are not all equal (they carry signal).

    The paper filters out prompts whose G responses are all correct or all wrong: their
    group-relative advantages are all zero.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (P, G), got {tuple(rewards.shape)}")
    return rewards.amax(dim=1) != rewards.amin(dim=1)
