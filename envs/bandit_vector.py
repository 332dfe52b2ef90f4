"""Batched bandits that step a whole batch as torch tensors on one device.

Registered as the ``vector_entry_point`` of the bandit ids, so
``gymnasium.make_vec("ToyEntropy/ContextualBandit-v0", num_envs=B, device="cuda")`` returns one.
Every episode is one step long; each ``step`` returns the rewards of the pulled arms and the
*next* round's contexts (``AutoresetMode.SAME_STEP``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from toy_entropy.envs.bandit_problem import make_bandit_problem

__all__ = ["ContextualBanditVectorEnv", "BanditVectorEnv", "check_batched_actions"]


def check_batched_actions(actions: Any, num_envs: int, num_actions: int, device: torch.device):
    """Return ``actions`` as a LongTensor ``(num_envs,)`` on ``device`` or raise a clear error."""
    if isinstance(actions, np.ndarray):
        actions = torch.from_numpy(actions)
    if not isinstance(actions, torch.Tensor):
        raise TypeError(
            f"actions must be a torch.Tensor or numpy array of shape ({num_envs},) with ints in "
            f"[0, {num_actions}), got {type(actions).__name__}"
        )
    if actions.shape != (num_envs,):
        raise ValueError(
            f"actions have shape {tuple(actions.shape)}: expected ({num_envs},) "
            f"with ints in [0, {num_actions})"
        )
    if actions.dtype.is_floating_point or actions.dtype.is_complex or actions.dtype == torch.bool:
        raise TypeError(f"actions have dtype {actions.dtype}: expected an integer dtype")
    actions = actions.to(device=device, dtype=torch.long)
    # One host sync per step: the price of naming a bad action instead of indexing garbage.
    if bool(((actions < 0) | (actions >= num_actions)).any()):
        raise ValueError(
            f"actions out of range: expected ints in [0, {num_actions}) "
            f"(Discrete({num_actions})), got min {int(actions.min())}, max {int(actions.max())}"
        )
    return actions


class ContextualBanditVectorEnv(VectorEnv):
    """``num_envs`` independent S-context, K-arm bandits stepped as tensors.

    Args:
        num_envs: B, the batch size.
        device: torch device of observations, rewards and flags.
        max_episode_steps: accepted for Gymnasium's ``make_vec``; must be 1 if given.
        **problem_kwargs: arguments of ``envs.bandit_problem.make_bandit_problem``.

    ``reset(options={"contexts": LongTensor (B,)})`` sets the contexts explicitly (e.g. G copies
    of each context for group-relative advantages); otherwise they are drawn uniformly.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        device: str | torch.device = "cpu",
        max_episode_steps: int | None = None,
        num_contexts: int = 4,
        num_arms: int = 10,
        **problem_kwargs: Any,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs={num_envs!r} is invalid: expected an int >= 1")
        if max_episode_steps not in (None, 1):
            raise ValueError(
                f"max_episode_steps={max_episode_steps!r}: bandit episodes last 1 step"
            )
        self.problem = make_bandit_problem(num_contexts, num_arms, **problem_kwargs)
        self.device = torch.device(device)
        self.num_envs = num_envs
        self.single_observation_space = spaces.Discrete(self.problem.num_contexts)
        self.single_action_space = spaces.Discrete(self.problem.num_arms)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.reward_means = torch.as_tensor(
            self.problem.reward_means, dtype=torch.float32, device=self.device
        )  # (S, K)
        self._generator = torch.Generator(device=self.device)
        self._contexts: torch.Tensor | None = None
        self._np_random, self._np_random_seed = seeding.np_random(None)
        self._seed_generator()

    def _seed_generator(self) -> None:
        self._generator.manual_seed(int(self._np_random.integers(2**62)))

    def _draw_contexts(self) -> torch.Tensor:
        return torch.randint(
            self.problem.num_contexts,
            (self.num_envs,),
            generator=self._generator,
            device=self.device,
        )

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        if seed is not None:
            if isinstance(seed, list):  # Gymnasium passes per-env seeds; the batch shares one RNG
                seed = seed[0]
            self._np_random, self._np_random_seed = seeding.np_random(seed)
            self._seed_generator()
        contexts = (options or {}).get("contexts")
        if contexts is None:
            self._contexts = self._draw_contexts()
        else:
            self._contexts = check_batched_actions(
                contexts, self.num_envs, self.problem.num_contexts, self.device
            )
        return self._contexts, {}

    def step(self, actions: Any):
        if self._contexts is None:
            raise RuntimeError("step() called before reset()")
        arms = check_batched_actions(actions, self.num_envs, self.problem.num_arms, self.device)
        means = self.reward_means[self._contexts, arms]  # (B,)
        if self.problem.reward_dist == "bernoulli":
            noise = torch.rand(means.shape, generator=self._generator, device=self.device)
            rewards = (noise < means).to(torch.float32)
        else:
            noise = torch.randn(means.shape, generator=self._generator, device=self.device)
            rewards = means + self.problem.reward_std * noise
        terminations = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        truncations = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        info = {"expected_reward": means, "context": self._contexts}
        self._contexts = self._draw_contexts()
        return self._contexts, rewards, terminations, truncations, info


class BanditVectorEnv(ContextualBanditVectorEnv):
    """``num_envs`` K-armed bandits (one context) stepped as tensors."""

    def __init__(
        self,
        num_envs: int = 1,
        device: str | torch.device = "cpu",
        max_episode_steps: int | None = None,
        num_arms: int = 10,
        **problem_kwargs: Any,
    ) -> None:
        if "num_contexts" in problem_kwargs:
            raise TypeError("Bandit-v0 has one context; use ContextualBandit-v0 for num_contexts")
        super().__init__(num_envs, device, max_episode_steps, 1, num_arms, **problem_kwargs)
