"""Synthetic sequence-generation tasks with 1/0 verifiers, as a task API and as Gymnasium envs.

Tasks (``TASKS``; ``make_task(name, **kwargs)``), default sizes in brackets (V, L, T):

- ``countdown``   reach a target with each given number once, postfix: ``<bos> 3 5 2 : 1 6 =``
                  -> ``3 5 + 2 *`` or ``2 3 5 + *`` or ...; many answers (18, 8, 6).
- ``addition``    ``<bos> 0 7 + 5 8 =`` -> ``5 6 0`` (sum digits reversed by default) (15, 7, 4).
- ``reverse``     ``<bos> 3 1 4 1 5 =`` -> ``5 1 4 1 3`` (14, 7, 6).
- ``sort``        ``<bos> 3 1 4 1 5 =`` -> ``1 1 3 4 5`` (14, 7, 6).
- ``hard_prompt`` reverse, but 30% of prompts are marked ``?`` and need ``!`` first:
                  ``<bos> 3 1 4 ? =`` -> ``! 4 1 3``; their warm-start demonstrations usually
                  show the common answer ``4 1 3`` instead (16, 8, 7).
- ``fork``        LLM-like: long answers of determined scaffold tokens with a few forking
                  tokens, ``<bos> k3 k1 k0 k5 =`` -> ``f3 s3 s4 .. f1 s1 s2 .. <eos>``; fork
                  count, segment length, placement, distractors and exploration value are
                  arguments (37, 7, 65).

Every answer ends with ``<eos>`` (counted in T). Sizes are arguments (``num_digits``,
``list_length``, ``min_list_length``, ``num_values``, ``num_numbers``, ``max_target``) and
``extra_tokens`` widens the vocabulary with distractors, so 4k-32k-token vocabularies and
256-1024-token answers are presets, e.g. ``make_task("sort", list_length=512,
num_values=1000, extra_tokens=31000)``.

Task API (what a trainer uses, without the envs)::

    task = make_task("reverse", list_length=5)
    task.vocab                       # Vocabulary: size, pad_id=0, bos_id=1, eos_id=2,
                                     # encode(str | list[str]) -> list[int], decode(ids) -> str
    task.prompt_length               # L: prompts are LEFT-padded to L columns, so every
    task.max_response_length         # response starts at column L of [prompt, response]
    prompts = task.sample_prompts(64, "train", generator=rng_or_seed, device="cuda")
    prompts.tokens                   # (P, L) long
    responses, mask = task.demonstrations(prompts, rng)      # (P, T) long, (P, T) bool
    rewards = task.score(prompts, prompt_index, responses, mask)  # (B,) float in {0, 1}
    task.warm_start_demonstrations(prompts, rng)  # what a supervised warm start imitates
    task.is_hard(prompts)            # (P,) bool, the hard bucket (hard_prompt only)
    task.is_eval(prompts)            # (P,) bool, split membership (a hash of the prompt)

``score`` reads a response up to its first ``<eos>`` (later tokens are ignored) and compares it
with the target on the responses' device (countdown evaluates the expression on the CPU).
The eval split is a fixed hashed share (``eval_fraction``, 10%) of all prompts, disjoint from
train whatever the seed.

Environments: ``ToyEntropy/Countdown-v0``, ``Addition-v0``, ``Reverse-v0``, ``Sort-v0``,
``HardPrompt-v0``, ``Fork-v0``; ``gymnasium.make`` gives a ``SequenceEnv`` (one token per step) and
``gymnasium.make_vec(id, num_envs=B, vectorization_mode="vector_entry_point", device=...)`` a
``SequenceVectorEnv`` (torch tensors, ``reset(options={"group_size": G})`` for GRPO groups);
``action_mode="response"`` (both) takes a whole response per row in one step, scored at once,
which is how ``Trainer.rollout`` uses it.
Task arguments pass through both, e.g. ``gymnasium.make("ToyEntropy/Sort-v0", list_length=8)``.
"""

from __future__ import annotations

from collections.abc import Callable

from toy_entropy.envs.sequence.env import SequenceEnv
from toy_entropy.envs.sequence.task import PromptBatch, SequenceTask
from toy_entropy.envs.sequence.tasks import TASKS, make_task
from toy_entropy.envs.sequence.vector_env import SequenceVectorEnv
from toy_entropy.envs.sequence.vocab import Vocabulary


def env_name(task: str) -> str:
    """The registered env name of a task: ``"hard_prompt"`` -> ``"HardPrompt-v0"``."""
    return "".join(part.capitalize() for part in task.split("_")) + "-v0"


def register_sequence_envs(register: Callable[..., None]) -> None:
    """Register one env id per task with ``register(name, entry_point, vector_entry_point,
    **gymnasium_register_kwargs)``. No ``max_episode_steps``: the env truncates at the task's
    answer limit itself, which depends on the task's arguments."""
    for task in TASKS:
        register(
            env_name(task),
            entry_point="toy_entropy.envs.sequence.env:SequenceEnv",
            vector_entry_point="toy_entropy.envs.sequence.vector_env:SequenceVectorEnv",
            kwargs={"task": task},
        )


__all__ = [
    "TASKS",
    "PromptBatch",
    "SequenceEnv",
    "SequenceTask",
    "SequenceVectorEnv",
    "Vocabulary",
    "env_name",
    "make_task",
    "register_sequence_envs",
]
