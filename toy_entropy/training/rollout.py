"""The typed rollout of one RL step and the hooks that observe a step.

A :class:`Rollout` is what ``Trainer.rollout`` returns: P prompts x G responses, B = P * G rows
with each prompt's G responses contiguous, T response positions and Lp prompt positions. In a
data-parallel run every tensor holds this rank's rows only; :meth:`Rollout.stats` is the part
that step metrics read, which the trainer gathers over ranks before reading it.

Hooks let experiments measure what the trainer does not log, without subclassing it:

- a :data:`RolloutHook` is called with every rollout before its updates and returns extra
  metrics for the step; it may also replace ``trainer.loss_config`` to steer the updates that
  follow (how the entropy controller works);
- an :class:`UpdateProbe` is called before every optimiser step with the rows it is about to
  train on and returns additive totals; ``probe.finish`` turns the step's totals into metrics.

Hooks must be picklable (module-level functions or dataclass instances) to cross into the
worker processes of a sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

__all__ = ["Rollout", "RolloutStats", "RolloutHook", "UpdateProbe"]


@dataclass(frozen=True)
class RolloutStats:
    """The per-row tensors step metrics read (gathered over ranks in a data-parallel run).

    Attributes:
        mask: ``(B, T)`` bool, the tokens the loss trains on: valid response tokens (EOS
            included), False in the groups the all-equal filter drops.
        response_mask: ``(B, T)`` bool, every response's valid tokens, filtered or not (what
            the entropy and the response length are measured over).
        rewards: ``(B,)`` verifier rewards.
        advantages: ``(B, T)`` the row's advantage at every position.
        old_log_probs: ``(B, T)`` log pi(y_t) of the sampled tokens under the rollout policy.
        token_entropy: ``(B, T)`` entropy of the full next-token distribution, nats.
        ref_log_probs: ``(B, T)`` log-probs under the frozen reference, or None.
    """

    mask: torch.Tensor
    response_mask: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    old_log_probs: torch.Tensor
    token_entropy: torch.Tensor
    ref_log_probs: torch.Tensor | None


@dataclass(frozen=True)
class Rollout(RolloutStats):
    """One rollout on this rank (see the module docstring for B, T, Lp).

    Attributes (besides those of :class:`RolloutStats`):
        prompts: the task's P prompts of this rank.
        prompt_index: ``(B,)`` long, the prompt of each row.
        tokens: ``(B, Lp + T)`` prompt and response token ids.
        attention: ``(B, Lp + T)`` bool, the positions a forward pass attends to.
        responses: ``(B, T)`` long, the sampled response tokens (pad after EOS).
    """

    prompts: Any
    prompt_index: torch.Tensor
    tokens: torch.Tensor
    attention: torch.Tensor
    responses: torch.Tensor

    def stats(self) -> RolloutStats:
        """The per-row tensors that step metrics read."""
        return RolloutStats(
            self.mask,
            self.response_mask,
            self.rewards,
            self.advantages,
            self.old_log_probs,
            self.token_entropy,
            self.ref_log_probs,
        )


RolloutHook = Callable[[Any, Rollout], dict[str, float]]
"""``hook(trainer, rollout) -> {metric: value}``, called with the ``Trainer`` and every rollout
before its updates (typed ``Any`` here so that this module does not import the trainer)."""


class UpdateProbe(Protocol):
    """Measures every optimiser step; see the module docstring."""

    def before_update(
        self, trainer: Any, rollout: Rollout, rows: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Additive totals of the update the ``Trainer`` is about to make on the ``rows`` of
        ``rollout``."""

    def finish(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        """The step's metrics from the totals summed over its updates."""
