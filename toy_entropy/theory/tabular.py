"""Tabular softmax policies on bandits: exact expected and sampled logit updates.

A policy is an ``(S, K)`` logit table: ``pi(a | s) = softmax(z[s])``. Two update rules
(docs/THEORY.md section 3) give the logit change ``dz`` for a step size ``eta``:

- ``"pg"``  (vanilla policy gradient):  ``dz = eta * pi * A``;
- ``"npg"`` (natural policy gradient):  ``dz = eta * A``;

with ``A(s, a) = Q(s, a) - E_pi Q(s, .)``. *Expected* updates use the exact ``Q``; *sampled*
updates estimate them from G sampled actions per context and their advantages.
"""

from __future__ import annotations

import torch

from toy_entropy.theory.entropy import (
    entropy_from_logits,
    npg_logit_update,
    pg_logit_update,
)

__all__ = [
    "UPDATE_RULES",
    "expected_logit_update",
    "sampled_logit_update",
    "sample_actions",
    "npg_closed_form_logits",
    "pg_ode_logits",
    "TabularSoftmaxPolicy",
]

UPDATE_RULES = ("pg", "npg")


def _check_rule(rule: str) -> None:
    if rule not in UPDATE_RULES:
        raise ValueError(f"update rule {rule!r} is unknown: expected one of {UPDATE_RULES}")


def expected_logit_update(
    logits: torch.Tensor, reward_means: torch.Tensor, rule: str, step_size: float
) -> torch.Tensor:
    """Exact expected logit change ``(S, K)`` of one update with the true action values.

    Args:
        logits: ``(S, K)`` current logits.
        reward_means: ``(S, K)`` expected reward of each arm (the action values Q).
        rule: ``"pg"`` or ``"npg"``.
        step_size: eta, the learning rate on the logits.
    """
    _check_rule(rule)
    if logits.shape != reward_means.shape:
        raise ValueError(
            f"logits shape {tuple(logits.shape)} must equal reward_means shape "
            f"{tuple(reward_means.shape)}"
        )
    update = pg_logit_update if rule == "pg" else npg_logit_update
    return update(logits, reward_means, step_size)


def sample_actions(
    logits: torch.Tensor, group_size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sample ``group_size`` actions per context: ``(S, K)`` logits -> ``(S, G)`` arm indices."""
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, group_size, replacement=True, generator=generator)


def sampled_logit_update(
    logits: torch.Tensor,
    actions: torch.Tensor,
    advantages: torch.Tensor,
    rule: str,
    step_size: float,
) -> torch.Tensor:
    """Sampled estimate ``(S, K)`` of the logit update from G actions per context.

    - ``"pg"``:  ``dz = eta/G * sum_i A_i * (onehot(a_i) - pi)`` (the score-function estimate
      of ``eta * pi * A``);
    - ``"npg"``: ``dz = eta/G * sum_i A_i * onehot(a_i) / pi(a_i)`` (importance-weighted
      estimate of ``eta * A``, up to a per-context constant that softmax ignores).

    Both are unbiased when ``A_i`` is (e.g. RLOO advantages: reward minus the leave-one-out
    mean of the other G-1 rewards of its group).

    Args:
        logits: ``(S, K)`` current logits.
        actions: ``(S, G)`` sampled arm indices.
        advantages: ``(S, G)`` advantage of each sample.
        rule: ``"pg"`` or ``"npg"``.
        step_size: eta.
    """
    _check_rule(rule)
    if actions.shape != advantages.shape or actions.shape[0] != logits.shape[0]:
        raise ValueError(
            f"actions {tuple(actions.shape)} and advantages {tuple(advantages.shape)} must both "
            f"be (S, G) with S = {logits.shape[0]}"
        )
    group_size = actions.shape[1]
    probs = torch.softmax(logits, dim=-1)  # (S, K)
    weights = advantages.to(logits.dtype)  # (S, G)
    if rule == "npg":
        weights = weights / probs.gather(1, actions)
    per_arm = torch.zeros_like(logits).scatter_add_(1, actions, weights)  # (S, K)
    if rule == "pg":
        per_arm = per_arm - weights.sum(dim=1, keepdim=True) * probs
    return step_size * per_arm / group_size


def npg_closed_form_logits(
    initial_logits: torch.Tensor, reward_means: torch.Tensor, step_size: float, steps: torch.Tensor
) -> torch.Tensor:
    """Logits after k expected NPG steps on a bandit: ``z0 + eta * k * Q`` (exact).

    The NPG step adds ``eta * (Q - E_pi Q)``; the subtracted constant does not change the
    softmax, so the policy after k steps is ``softmax(z0 + eta * k * Q)``.

    Args:
        initial_logits: ``(S, K)``.
        reward_means: ``(S, K)``.
        step_size: eta.
        steps: ``(N,)`` step counts k.

    Returns:
        ``(N, S, K)`` logits.
    """
    k = steps.to(initial_logits.dtype).view(-1, 1, 1)
    return initial_logits.unsqueeze(0) + step_size * k * reward_means.unsqueeze(0)


def pg_ode_logits(
    initial_logits: torch.Tensor,
    reward_means: torch.Tensor,
    step_size: float,
    num_steps: int,
    substeps: int = 8,
) -> torch.Tensor:
    """The small-step (ODE) limit of expected vanilla PG, ``dz/dt = pi * A``, at ``t = eta * k``.

    Integrated with classical Runge-Kutta (``substeps`` RK4 steps per unit of k).

    Returns:
        ``(num_steps + 1, S, K)`` logits at k = 0..num_steps.
    """

    def velocity(z: torch.Tensor) -> torch.Tensor:
        return pg_logit_update(z, reward_means, 1.0)

    h = step_size / substeps
    z = initial_logits.clone()
    trajectory = [z.clone()]
    for _ in range(num_steps):
        for _ in range(substeps):
            k1 = velocity(z)
            k2 = velocity(z + 0.5 * h * k1)
            k3 = velocity(z + 0.5 * h * k2)
            k4 = velocity(z + h * k3)
            z = z + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
        trajectory.append(z.clone())
    return torch.stack(trajectory)


class TabularSoftmaxPolicy:
    """A mutable ``(S, K)`` logit table with its entropy and expected reward.

    Args:
        logits: ``(S, K)`` initial logits (copied).
    """

    def __init__(self, logits: torch.Tensor) -> None:
        if logits.dim() != 2:
            raise ValueError(f"logits must be (S, K), got shape {tuple(logits.shape)}")
        self.logits = logits.detach().clone()

    @property
    def probs(self) -> torch.Tensor:
        """``(S, K)`` action probabilities."""
        return torch.softmax(self.logits, dim=-1)

    def entropy(self) -> torch.Tensor:
        """``(S,)`` entropy of each context's policy, in nats."""
        return entropy_from_logits(self.logits)

    def mean_entropy(self) -> torch.Tensor:
        """Scalar: entropy averaged over uniformly weighted contexts, in nats."""
        return self.entropy().mean()

    def expected_reward(self, reward_means: torch.Tensor) -> torch.Tensor:
        """Scalar: ``mean_s sum_a pi(a|s) Q(s, a)``."""
        return (self.probs * reward_means).sum(dim=-1).mean()

    def sample(self, group_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(S, G)`` sampled arms: G per context."""
        return sample_actions(self.logits, group_size, generator)

    def apply(self, logit_change: torch.Tensor) -> None:
        """Add a ``(S, K)`` logit change in place."""
        if logit_change.shape != self.logits.shape:
            raise ValueError(
                f"logit_change shape {tuple(logit_change.shape)} must equal "
                f"{tuple(self.logits.shape)}"
            )
        self.logits = self.logits + logit_change
