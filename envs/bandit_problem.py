"""Bandit problems: reward tables and pretrained-like prior logits shared by every bandit env.

A problem has S contexts and K arms. Each context has one best arm; the other arms' mean rewards
fall linearly from the best one's. The *prior* is what a "pretrained" policy starts from:

- ``"uniform"``: all logits 0;
- ``"zipf"``: a peaked, Zipf-like distribution ``pi(rank r) ~ (r + 1) ** -prior_exponent``,
  where the arms are ranked by quality except the best arm, which is put at rank
  ``best_arm_rank`` (0 = the most likely arm, K-1 = the rarest). With a rare best arm, the
  covariance of log pi and the advantage starts negative, and entropy first rises;
- ``"random"``: Gaussian logits with standard deviation ``prior_exponent`` (seeded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["BanditProblem", "make_bandit_problem", "PRIORS", "REWARD_DISTRIBUTIONS"]

PRIORS = ("uniform", "zipf", "random")
REWARD_DISTRIBUTIONS = ("bernoulli", "gaussian")


@dataclass(frozen=True)
class BanditProblem:
    """Reward table and prior of an S-context, K-arm bandit.

    Attributes:
        reward_means: ``(S, K)`` expected reward of each arm in each context.
        prior_logits: ``(S, K)`` initial logits of a pretrained-like policy.
        reward_dist: ``"bernoulli"`` (means are probabilities of reward 1) or ``"gaussian"``.
        reward_std: standard deviation of Gaussian rewards.
    """

    reward_means: np.ndarray
    prior_logits: np.ndarray
    reward_dist: str = "bernoulli"
    reward_std: float = 1.0

    @property
    def num_contexts(self) -> int:
        return self.reward_means.shape[0]

    @property
    def num_arms(self) -> int:
        return self.reward_means.shape[1]


def _default_reward_means(num_contexts: int, num_arms: int) -> np.ndarray:
    """Best arm of context s is arm ``s % K`` with mean 0.9; the others fall to 0.1."""
    quality = np.linspace(0.9, 0.1, num_arms)  # by quality rank
    means = np.empty((num_contexts, num_arms))
    for context in range(num_contexts):
        means[context] = np.roll(quality, context % num_arms)
    return means


def _zipf_logits(reward_means: np.ndarray, exponent: float, best_arm_rank: int) -> np.ndarray:
    num_contexts, num_arms = reward_means.shape
    rank_logits = -exponent * np.log(np.arange(1, num_arms + 1))  # (K,) by prior rank
    logits = np.empty_like(reward_means, dtype=np.float64)
    for context in range(num_contexts):
        by_quality = list(np.argsort(-reward_means[context], kind="stable"))  # best first
        best = by_quality.pop(0)
        by_quality.insert(best_arm_rank, best)  # arms in order of prior rank
        logits[context, by_quality] = rank_logits
    return logits


def _check_means(reward_means: np.ndarray, reward_dist: str) -> None:
    if not np.all(np.isfinite(reward_means)):
        raise ValueError("reward_means must be finite")
    if reward_dist == "bernoulli" and (reward_means.min() < 0 or reward_means.max() > 1):
        raise ValueError("reward_means must lie in [0, 1] for reward_dist='bernoulli'")


def make_bandit_problem(
    num_contexts: int = 1,
    num_arms: int = 10,
    reward_means: Sequence[float] | Sequence[Sequence[float]] | np.ndarray | None = None,
    reward_dist: str = "bernoulli",
    reward_std: float = 1.0,
    prior: str = "zipf",
    prior_exponent: float = 1.5,
    best_arm_rank: int = 0,
    prior_seed: int = 0,
) -> BanditProblem:
    """Build and validate a bandit problem.

    Args:
        num_contexts: S, number of contexts (1 for a plain K-armed bandit).
        num_arms: K, number of arms.
        reward_means: ``(K,)`` (shared by all contexts) or ``(S, K)`` table; default: see module.
        reward_dist: ``"bernoulli"`` or ``"gaussian"``.
        reward_std: standard deviation of Gaussian rewards (> 0).
        prior: ``"uniform"``, ``"zipf"`` or ``"random"``.
        prior_exponent: Zipf exponent (``"zipf"``) or logit std (``"random"``), >= 0.
        best_arm_rank: rank of the best arm under the Zipf prior, in ``[0, K)``.
        prior_seed: seed of the ``"random"`` prior.
    """
    if isinstance(num_contexts, bool) or not isinstance(num_contexts, (int, np.integer)):
        raise TypeError(f"num_contexts must be an int, got {num_contexts!r}")
    if isinstance(num_arms, bool) or not isinstance(num_arms, (int, np.integer)):
        raise TypeError(f"num_arms must be an int, got {num_arms!r}")
    if num_contexts < 1:
        raise ValueError(f"num_contexts={num_contexts} is invalid: expected >= 1")
    if num_arms < 2:
        raise ValueError(f"num_arms={num_arms} is invalid: expected >= 2")
    if reward_dist not in REWARD_DISTRIBUTIONS:
        raise ValueError(
            f"reward_dist={reward_dist!r} is invalid: expected one of {REWARD_DISTRIBUTIONS}"
        )
    if prior not in PRIORS:
        raise ValueError(f"prior={prior!r} is invalid: expected one of {PRIORS}")
    if not reward_std > 0:
        raise ValueError(f"reward_std={reward_std!r} is invalid: expected > 0")
    if not prior_exponent >= 0:
        raise ValueError(f"prior_exponent={prior_exponent!r} is invalid: expected >= 0")
    if not 0 <= best_arm_rank < num_arms:
        raise ValueError(f"best_arm_rank={best_arm_rank} is invalid: expected in [0, {num_arms})")

    if reward_means is None:
        means = _default_reward_means(num_contexts, num_arms)
    else:
        means = np.asarray(reward_means, dtype=np.float64)
        if means.shape == (num_arms,):
            means = np.tile(means, (num_contexts, 1))
        if means.shape != (num_contexts, num_arms):
            raise ValueError(
                f"reward_means has shape {means.shape}: expected ({num_arms},) or "
                f"({num_contexts}, {num_arms})"
            )
    _check_means(means, reward_dist)

    if prior == "uniform":
        logits = np.zeros((num_contexts, num_arms))
    elif prior == "zipf":
        logits = _zipf_logits(means, prior_exponent, best_arm_rank)
    else:
        rng = np.random.default_rng(prior_seed)
        logits = prior_exponent * rng.standard_normal((num_contexts, num_arms))
    return BanditProblem(means, logits, reward_dist, float(reward_std))
