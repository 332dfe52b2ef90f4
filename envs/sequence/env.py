"""Gymnasium single environment: generate one response to a sampled prompt, token by token."""

from __future__ import annotations

from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from toy_entropy.envs.sequence.task import (
    PromptBatch,
    SequenceTask,
    Split,
    check_split,
    through_first,
)
from toy_entropy.envs.sequence.tasks import make_task

ActionMode = Literal["token", "response"]
ACTION_MODES = ("token", "response")


def build_task(task: str | SequenceTask, task_kwargs: dict[str, Any]) -> SequenceTask:
    """The task instance of an env's ``task`` argument (a name plus kwargs, or an instance)."""
    if isinstance(task, SequenceTask):
        if task_kwargs:
            raise ValueError(f"task is an instance; unexpected task kwargs {sorted(task_kwargs)}")
        return task
    if not isinstance(task, str):
        raise TypeError(f"task must be a task name or a SequenceTask, got {type(task).__name__}")
    return make_task(task, **task_kwargs)


def check_env_args(split: object, render_mode: object, action_mode: object) -> None:
    """ValueError unless ``split`` is a split, ``render_mode`` None or ``"ansi"`` and
    ``action_mode`` one of ``ACTION_MODES``."""
    check_split(split)
    if render_mode not in (None, "ansi"):
        raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
    if action_mode not in ACTION_MODES:
        raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {action_mode!r}")


def single_action_space(
    task: SequenceTask, action_mode: ActionMode, max_response_length: int
) -> spaces.Space:
    """``Discrete(V)`` (one token, ``"token"``) or ``MultiDiscrete([V] * T)`` (a whole
    response, ``"response"``)."""
    if action_mode == "token":
        return spaces.Discrete(task.vocab.size)
    return spaces.MultiDiscrete(np.full(max_response_length, task.vocab.size, dtype=np.int64))


def end_responses(
    task: SequenceTask, responses: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Whole responses as written by a ``"response"`` step.

    Args:
        responses: (B, T) long token ids; what follows a row's first ``<eos>`` is ignored.

    Returns:
        ``(written, mask, terminated)``: (B, T) long, the responses with ``<pad>`` after the
        first ``<eos>``; (B, T) bool, True up to and including it (every column without one);
        (B,) bool, whether the row wrote ``<eos>`` (otherwise it is truncated at T).
    """
    is_eos = responses == task.vocab.eos_id  # (B, T)
    mask = through_first(is_eos)  # (B, T)
    return torch.where(mask, responses, task.vocab.pad_id), mask, is_eos.any(dim=1)


def render_text(task: SequenceTask, tokens: np.ndarray | torch.Tensor) -> str:
    """``"<prompt> | <response>"`` of one row of prompt and response tokens (L + T,)."""
    prompt = task.vocab.decode(tokens[: task.prompt_length])
    return f"{prompt} | {task.vocab.decode(tokens[task.prompt_length :])}"


def sequence_observation_space(task: SequenceTask, max_response_length: int) -> spaces.Dict:
    """``Dict(tokens=MultiDiscrete([V] * (L + T)), length=Discrete(T + 1, start=L))``."""
    width = task.prompt_length + max_response_length
    return spaces.Dict(
        {
            "tokens": spaces.MultiDiscrete(np.full(width, task.vocab.size, dtype=np.int64)),
            "length": spaces.Discrete(max_response_length + 1, start=task.prompt_length),
        }
    )


class SequenceEnv(gym.Env[dict[str, np.ndarray], np.int64 | np.ndarray]):
    """Generate the answer to a prompt of a sequence task, one token per step (or at once).

    ## Description

    Each episode draws a prompt of a synthetic task (``countdown``, ``addition``, ``reverse``,
    ``sort``, ``hard_prompt``; see ``envs.sequence``) from the chosen split, and the agent
    writes its answer token by token, as a language model samples a response. A verifier scores
    the finished answer 1 or 0.

    ## Action Space

    ``Discrete(V)``: the next token id (V = ``task.vocab.size``, distractors included). Any
    token may be written; only the task's answer tokens can make a correct answer.
    With ``action_mode="response"``: ``MultiDiscrete([V] * T)``, the whole response in one
    step; the tokens after its first ``<eos>`` are ignored (written as ``<pad>``).

    ## Observation Space

    ``Dict(tokens=MultiDiscrete([V] * (L + T)), length=Discrete(T + 1, start=L))`` with L the
    padded prompt length and T the response limit: ``tokens`` holds the left-padded prompt and
    then the response so far, padded with ``<pad>`` (id 0); ``length`` is the number of filled
    columns, ``L`` plus the tokens written.

    ## Rewards

    0 on every step except the last, which gets the verifier's score of the response: 1.0 if it
    is a correct answer followed by ``<eos>``, else ``format_reward`` (0 by default) if it is
    well formed, else 0.

    ## Starting State

    A prompt drawn with ``self.np_random`` from the ``split`` of the task, no response tokens.
    ``reset(options={"prompt": "3 1 4 ="})`` starts from a given prompt instead.

    ## Episode End

    Terminated when the agent writes ``<eos>``; truncated after T tokens without ``<eos>``.
    With ``action_mode="response"`` every episode is one step, ended by one of the two.

    ## Arguments

    ``gymnasium.make("ToyEntropy/Reverse-v0", split="train", render_mode=None, **task_kwargs)``

    - ``task``: task name (set by each registered id) or a ``SequenceTask`` instance.
    - ``split``: ``"train"`` or ``"eval"`` (disjoint prompt sets).
    - ``render_mode``: None or ``"ansi"`` (the prompt and response as text).
    - ``action_mode``: ``"token"`` (one token a step) or ``"response"`` (a whole response).
    - ``**task_kwargs``: the task's arguments (``list_length``, ``num_digits``,
      ``extra_tokens``, ...; see ``envs.sequence.make_task``).

    ## Version History

    - v0: initial version; ``action_mode`` added later (the default keeps v0's behaviour).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        task: str | SequenceTask = "reverse",
        split: Split = "train",
        render_mode: str | None = None,
        action_mode: ActionMode = "token",
        **task_kwargs: Any,
    ) -> None:
        self.task = build_task(task, task_kwargs)
        check_env_args(split, render_mode, action_mode)
        self.split = split
        self.render_mode = render_mode
        self.action_mode = action_mode
        self.action_space = single_action_space(
            self.task, action_mode, self.task.max_response_length
        )
        self.observation_space = sequence_observation_space(
            self.task, self.task.max_response_length
        )
        self._prompts: PromptBatch | None = None
        self._tokens = np.zeros(0, dtype=np.int64)
        self._steps = 0
        self._over = True

    def _observation(self) -> dict[str, np.ndarray]:
        length = np.int64(self.task.prompt_length + self._steps)
        return {"tokens": self._tokens.copy(), "length": length}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        prompt = (options or {}).get("prompt")
        if prompt is None:
            self._prompts = self.task.sample_prompts(1, self.split, self.np_random)
        else:
            self._prompts = self.task.prompts_from_text([prompt])
        response = np.full(self.task.max_response_length, self.task.vocab.pad_id)
        self._tokens = np.concatenate([self._prompts.tokens[0].numpy(), response])
        self._steps = 0
        self._over = False
        hard = bool(self._prompts.hard[0])
        return self._observation(), {
            "prompt": self.task.decode_prompts(self._prompts)[0],
            "hard": hard,
        }

    def step(
        self, action: int | np.integer | np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        if self.action_mode == "response":
            return self._step_response(action)
        if isinstance(action, np.ndarray) and action.shape == () and action.dtype.kind in "iu":
            action = action.item()
        if isinstance(action, bool) or not isinstance(action, int | np.integer):
            raise TypeError(
                f"action must be an integer token id in the action space {self.action_space}, "
                f"got {type(action).__name__}"
            )
        if not 0 <= action < self.task.vocab.size:
            raise ValueError(f"action {action} is outside the action space {self.action_space}")
        if self._prompts is None or self._over:
            raise RuntimeError("the episode is over (or never started): call reset() first")
        self._tokens[self.task.prompt_length + self._steps] = action
        self._steps += 1
        terminated = bool(action == self.task.vocab.eos_id)
        truncated = not terminated and self._steps == self.task.max_response_length
        reward = 0.0
        if terminated or truncated:
            self._over = True
            response = torch.from_numpy(self._tokens[None, self.task.prompt_length :])  # (1, T)
            mask = torch.arange(response.shape[1])[None, :] < self._steps  # (1, T)
            score = self.task.score(self._prompts, torch.zeros(1, dtype=torch.long), response, mask)
            reward = float(score[0])
        return self._observation(), reward, terminated, truncated, {}

    def _step_response(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        """Write a whole (T,) response, score it and end the episode."""
        if not isinstance(action, np.ndarray) or action.dtype.kind not in "iu":
            kind = f"dtype {action.dtype}" if hasattr(action, "dtype") else type(action).__name__
            raise TypeError(
                f"action must be an integer numpy array of token ids in the action space "
                f"{self.action_space}, got {kind}"
            )
        if action.shape != self.action_space.shape:
            raise ValueError(
                f"action must have shape {self.action_space.shape} (the action space "
                f"{self.action_space}), got {action.shape}"
            )
        if not self.action_space.contains(action.astype(np.int64)):
            raise ValueError(f"action {action} is outside the action space {self.action_space}")
        if self._prompts is None or self._over:
            raise RuntimeError("the episode is over (or never started): call reset() first")
        written, mask, terminated = end_responses(
            self.task, torch.from_numpy(action[None].astype(np.int64))
        )
        self._tokens[self.task.prompt_length :] = written[0].numpy()
        self._steps = int(mask.sum())
        self._over = True
        score = self.task.score(self._prompts, torch.zeros(1, dtype=torch.long), written, mask)
        terminated = bool(terminated[0])
        return self._observation(), float(score[0]), terminated, not terminated, {}

    def render(self) -> str | None:
        if self.render_mode is None:
            gym.logger.warn(
                "render() was called without a render_mode; make the env with render_mode='ansi'"
            )
            return None
        return render_text(self.task, self._tokens)
