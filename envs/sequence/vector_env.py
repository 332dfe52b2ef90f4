"""Torch-native vector environment: B responses generated in lock-step (or written at once),
with grouped resets."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from toy_entropy.envs.sequence.env import (
    ActionMode,
    build_task,
    check_env_args,
    end_responses,
    render_text,
    sequence_observation_space,
    single_action_space,
)
from toy_entropy.envs.sequence.task import PromptBatch, SequenceTask, Split, check_int


class SequenceVectorEnv(VectorEnv):
    """B copies of ``SequenceEnv`` stepped as torch tensors on ``device``.

    ``reset(seed=s, options={"group_size": G})`` draws P = B // G prompts with
    ``self.np_random`` and repeats each G times contiguously (rows ``p * G ... p * G + G - 1``
    share prompt p), the layout GRPO groups use. With ``world_size`` > 1 the env holds rank
    ``rank``'s block of a batch of ``world_size * B`` rows: each reset draws the prompts of the
    whole batch (``world_size * P``) and keeps the contiguous block of prompts
    ``rank * P ... rank * P + P - 1``, so ranks whose ``np_random`` are alike hold disjoint
    whole groups of one global draw.

    With ``action_mode="token"`` every step takes one token per row; a row that has ended
    (``<eos>`` or the length limit) ignores its later actions and returns reward 0 and False
    flags. With ``action_mode="response"`` one step takes every row's whole response, (B, T)
    token ids (tokens after a row's first ``<eos>`` are ignored and written as ``<pad>``), ends
    every row (terminated where it wrote ``<eos>``, truncated otherwise) and scores them all with
    one ``task.score``; later steps return reward 0 and False flags. There is no autoreset
    (``AutoresetMode.DISABLED``): a rollout ends when every row has ended (``env.done.all()``),
    and the next ``reset`` starts the next one.

    Observations are ``{"tokens": (B, L + T) long, "length": (B,) long}`` tensors on ``device``
    (as in ``SequenceEnv``); rewards are (B,) float32, terminations and truncations (B,) bool.
    Actions are a (B,) or (B, T) integer tensor (or numpy array) of token ids; their shape,
    dtype and range are checked at every step with one host synchronisation. A token step
    synchronises once more (whether a row ended) and again when rows end (their scoring); a
    response step once more (the scoring's input check).

    Args:
        num_envs: B, the rows this env holds.
        task: task name or ``SequenceTask`` instance.
        split: ``"train"`` or ``"eval"``.
        device: where the tensors live.
        max_episode_steps: response length limit T; None means ``task.max_response_length``.
        render_mode: None or ``"ansi"``.
        action_mode: ``"token"`` (one token per row a step) or ``"response"`` (whole responses).
        world_size: data-parallel ranks sharing each reset's prompt draw (1: none).
        rank: which block of the draw this env holds, in ``[0, world_size)``.
        **task_kwargs: the task's arguments.
    """

    metadata = {"render_modes": ["ansi"], "autoreset_mode": AutoresetMode.DISABLED}

    def __init__(
        self,
        num_envs: int = 1,
        task: str | SequenceTask = "reverse",
        split: Split = "train",
        device: torch.device | str = "cpu",
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        action_mode: ActionMode = "token",
        world_size: int = 1,
        rank: int = 0,
        **task_kwargs: Any,
    ) -> None:
        self.task = build_task(task, task_kwargs)
        self.num_envs = check_int("num_envs", num_envs, 1)
        check_env_args(split, render_mode, action_mode)
        if max_episode_steps is None:
            max_episode_steps = self.task.max_response_length
        self.max_episode_steps = check_int("max_episode_steps", max_episode_steps, 1)
        self.world_size = check_int("world_size", world_size, 1)
        self.rank = check_int("rank", rank, 0, self.world_size - 1)
        self.split = split
        self.render_mode = render_mode
        self.action_mode = action_mode
        self.device = torch.device(device)

        self.single_action_space = single_action_space(
            self.task, action_mode, self.max_episode_steps
        )
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.single_observation_space = sequence_observation_space(
            self.task, self.max_episode_steps
        )
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)

        width = self.task.prompt_length + self.max_episode_steps
        self.prompts: PromptBatch | None = None
        self.prompt_index = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self._tokens = torch.zeros(self.num_envs, width, dtype=torch.long, device=self.device)
        self._steps = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self._done = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        self._ended = True  # response mode: the last step ended every row (a host flag)

    @property
    def done(self) -> torch.Tensor:
        """(B,) bool: rows whose episode has ended since the last reset."""
        return self._done.clone()

    def _observation(self) -> dict[str, torch.Tensor]:
        return {"tokens": self._tokens.clone(), "length": self.task.prompt_length + self._steps}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Start B new responses; ``options={"group_size": G}`` repeats each prompt G times.

        Returns:
            ``(observation, info)`` with ``info["prompt_index"]`` (B,) long, the row of
            ``self.prompts`` of each response, and ``info["hard"]`` (B,) bool.
        """
        super().reset(seed=seed)
        group_size = check_int("options['group_size']", (options or {}).get("group_size", 1), 1)
        if self.num_envs % group_size:
            raise ValueError(
                f"options['group_size'] must divide num_envs={self.num_envs}, got {group_size}"
            )
        num_prompts = self.num_envs // group_size
        self.prompts = self.task.sample_prompts(
            num_prompts * self.world_size, self.split, self.np_random, device=self.device
        )[self.rank * num_prompts : (self.rank + 1) * num_prompts]
        self.prompt_index = torch.arange(num_prompts, device=self.device).repeat_interleave(
            group_size
        )  # (B,)
        self._tokens.fill_(self.task.vocab.pad_id)
        self._tokens[:, : self.task.prompt_length] = self.prompts.tokens[self.prompt_index]
        self._steps.zero_()
        self._done.zero_()
        self._ended = False
        info = {
            "prompt_index": self.prompt_index.clone(),
            "hard": self.prompts.hard[self.prompt_index],
        }
        return self._observation(), info

    def _check_actions(self, actions: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The actions as a (B,) or (B, T) long tensor on the device (the action space's
        shape); TypeError/ValueError if invalid. One host synchronisation (the range)."""
        if isinstance(actions, np.ndarray) and actions.dtype.kind in "iu":
            actions = torch.from_numpy(actions)
        if not isinstance(actions, torch.Tensor) or (
            actions.is_floating_point() or actions.is_complex() or actions.dtype == torch.bool
        ):
            kind = f"dtype {actions.dtype}" if hasattr(actions, "dtype") else type(actions).__name__
            raise TypeError(
                f"actions must be an integer tensor of token ids in the action space "
                f"{self.action_space}, got {kind}"
            )
        if actions.shape != self.action_space.shape:
            raise ValueError(
                f"actions must have shape {self.action_space.shape} (the action space "
                f"{self.action_space}), got {tuple(actions.shape)}"
            )
        actions = actions.to(self.device, torch.long)
        if bool(((actions < 0) | (actions >= self.task.vocab.size)).any()):
            raise ValueError(
                f"actions must be token ids in [0, {self.task.vocab.size}) (the action space "
                f"{self.action_space}), got min {int(actions.min())}, max {int(actions.max())}"
            )
        return actions

    def step(
        self, actions: torch.Tensor | np.ndarray
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        if self.prompts is None:
            raise RuntimeError("call reset() before step()")
        actions = self._check_actions(actions)
        if self.action_mode == "response":
            return self._step_responses(actions)
        active = ~self._done  # (B,)
        column = (self.task.prompt_length + self._steps).clamp(max=self._tokens.shape[1] - 1)
        current = self._tokens.gather(1, column[:, None]).squeeze(1)  # (B,)
        self._tokens.scatter_(1, column[:, None], torch.where(active, actions, current)[:, None])
        self._steps += active.long()
        terminated = active & (actions == self.task.vocab.eos_id)  # (B,)
        truncated = active & ~terminated & (self._steps == self.max_episode_steps)  # (B,)
        ended = terminated | truncated
        rewards = torch.zeros(self.num_envs, dtype=torch.float32, device=self.device)
        if bool(ended.any()):
            rows = ended.nonzero().squeeze(1)  # (E,)
            responses = self._tokens[rows, self.task.prompt_length :]  # (E, T)
            positions = torch.arange(self.max_episode_steps, device=self.device)
            mask = positions[None, :] < self._steps[rows, None]  # (E, T)
            rewards[rows] = self.task.score(self.prompts, self.prompt_index[rows], responses, mask)
        self._done |= ended
        return self._observation(), rewards, terminated, truncated, {}

    def _step_responses(
        self, responses: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Write every row's whole response (B, T), end the rows and score them."""
        flags = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        if self._ended:  # every row ended at the last step: later actions are ignored
            rewards = torch.zeros(self.num_envs, dtype=torch.float32, device=self.device)
            return self._observation(), rewards, flags, flags.clone(), {}
        written, mask, terminated = end_responses(self.task, responses)  # (B, T) x2, (B,)
        self._tokens[:, self.task.prompt_length :] = written
        self._steps = mask.sum(dim=1)  # (B,)
        self._done.fill_(True)
        self._ended = True
        rewards = self.task.score(self.prompts, self.prompt_index, written, mask)  # (B,)
        return self._observation(), rewards, terminated, ~terminated, {}

    def render(self) -> tuple[str, ...] | None:
        """Each row's prompt and response as text (``render_mode="ansi"``)."""
        if self.render_mode is None:
            gym.logger.warn(
                "render() was called without a render_mode; make the env with render_mode='ansi'"
            )
            return None
        return tuple(render_text(self.task, row) for row in self._tokens.cpu())
