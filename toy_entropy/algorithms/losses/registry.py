"""Registry of named policy losses: ``loss_mode`` -> per-batch loss function.

A registered function has the signature of :data:`PolicyLossFn` and is looked up by
``PolicyLossConfig.loss_mode``. Registering a new name makes it a valid ``loss_mode``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["POLICY_LOSSES", "PolicyLossFn", "register_policy_loss", "get_policy_loss"]

PolicyLossFn = Callable[
    [
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        Any,  # PolicyLossConfig (not imported: the config module validates against this one)
        Any,  # TokenSelection
    ],
    tuple[torch.Tensor, dict[str, torch.Tensor]],
]
"""``fn(log_probs, old_log_probs, advantages, valid, config, selection) -> (loss, metrics)``.

All tensors are ``(B, T)``; ``valid`` is the boolean response mask. ``loss`` is a 0-dim tensor
normalised by ``selection.norm`` (so that it sums over micro-batches), ``metrics`` maps names to
detached 0-dim tensors with the same additivity.
"""

POLICY_LOSSES: dict[str, PolicyLossFn] = {}


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator that registers a policy loss under ``name`` (its ``loss_mode``)."""

    def decorator(fn: PolicyLossFn) -> PolicyLossFn:
        if name in POLICY_LOSSES:
            raise ValueError(f"register_policy_loss: loss_mode {name!r} is already registered")
        POLICY_LOSSES[name] = fn
        return fn

    return decorator


def get_policy_loss(name: str) -> PolicyLossFn:
    """The loss registered as ``name``; ValueError listing the known names otherwise."""
    if name not in POLICY_LOSSES:
        raise ValueError(f"loss_mode must be one of {sorted(POLICY_LOSSES)}, got {name!r}")
    return POLICY_LOSSES[name]
