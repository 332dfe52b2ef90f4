"""Single-step K-armed and contextual bandit environments (Gymnasium API)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from toy_entropy.envs.bandit_problem import BanditProblem, make_bandit_problem

__all__ = ["BanditEnv", "ContextualBanditEnv", "check_discrete_action"]


def check_discrete_action(action: Any, space: spaces.Discrete) -> int:
    """Return ``action`` as an int or raise a ValueError/TypeError naming the expected space."""
    if isinstance(action, np.ndarray) and action.shape == ():
        action = action.item()
    if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
        raise TypeError(
            f"action {action!r} has type {type(action).__name__}: expected an int in {space}"
        )
    if not space.contains(np.int64(action)):
        raise ValueError(f"action {action!r} is out of range: expected an int in {space}")
    return int(action)


class ContextualBanditEnv(gym.Env):
    """An S-context, K-arm bandit: one context per episode, one action, one reward.

    ## Description
    A context is drawn uniformly at reset; the agent pulls one arm and gets a reward drawn from
    that arm's distribution in that context. The policy's "pretrained" starting logits are
    ``env.unwrapped.problem.prior_logits`` (see ``envs.bandit_problem``).

    ## Action Space
    ``Discrete(num_arms)``: the arm to pull.

    ## Observation Space
    ``Discrete(num_contexts)``: the context index.

    ## Rewards
    Bernoulli (1 with probability ``reward_means[s, a]``, else 0) or Gaussian with mean
    ``reward_means[s, a]`` and standard deviation ``reward_std``.

    ## Starting State
    A context drawn uniformly from ``range(num_contexts)``.

    ## Episode End
    Terminated after the single step. Never truncated.

    ## Arguments
    Every argument of ``envs.bandit_problem.make_bandit_problem`` (num_contexts, num_arms,
    reward_means, reward_dist, reward_std, prior, prior_exponent, best_arm_rank, prior_seed).

    ## Version History
    - v0: initial version.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, num_contexts: int = 4, num_arms: int = 10, **problem_kwargs: Any) -> None:
        self.problem: BanditProblem = make_bandit_problem(num_contexts, num_arms, **problem_kwargs)
        self.observation_space = spaces.Discrete(self.problem.num_contexts)
        self.action_space = spaces.Discrete(self.problem.num_arms)
        self._context: int | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        super().reset(seed=seed)
        self._context = int(self.np_random.integers(self.problem.num_contexts))
        return self._context, {}

    def step(self, action: Any) -> tuple[int, float, bool, bool, dict[str, Any]]:
        if self._context is None:
            raise RuntimeError("step() called before reset()")
        arm = check_discrete_action(action, self.action_space)
        mean = float(self.problem.reward_means[self._context, arm])
        if self.problem.reward_dist == "bernoulli":
            reward = float(self.np_random.random() < mean)
        else:
            reward = float(mean + self.problem.reward_std * self.np_random.standard_normal())
        info = {"expected_reward": mean}
        return self._context, reward, True, False, info


class BanditEnv(ContextualBanditEnv):
    """A K-armed bandit: the contextual bandit with a single context (observation always 0).

    ## Arguments
    ``num_arms`` and the other arguments of ``make_bandit_problem`` except ``num_contexts``.

    ## Version History
    - v0: initial version.
    """

    def __init__(self, num_arms: int = 10, **problem_kwargs: Any) -> None:
        if "num_contexts" in problem_kwargs:
            raise TypeError("Bandit-v0 has one context; use ContextualBandit-v0 for num_contexts")
        super().__init__(num_contexts=1, num_arms=num_arms, **problem_kwargs)
