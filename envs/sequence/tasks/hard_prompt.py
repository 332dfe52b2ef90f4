"""Hard prompts: list reversal where marked prompts need an answer the warm start rarely shows."""

from __future__ import annotations

import numpy as np
import torch

from toy_entropy.envs.sequence.task import (
    Content,
    GeneratorLike,
    PromptBatch,
    as_generator,
    check_fraction,
)
from toy_entropy.envs.sequence.tasks.lists import ListTask, reverse_lists


class HardPromptTask(ListTask):
    """Reverse a list; on hard prompts the answer also starts with a rare token.

    Prompts are ``reverse`` prompts; a fraction ``hard_fraction`` of them (drawn independently)
    are hard and say so with the marker ``?`` before ``=``:

    - easy: ``<bos> 3 1 4 =``   -> ``4 1 3 <eos>``
    - hard: ``<bos> 3 1 4 ? =`` -> ``! 4 1 3 <eos>``; the common answer ``4 1 3 <eos>`` is wrong.

    The mechanism is in ``warm_start_demonstrations``: each hard prompt's demonstration is the
    common (wrong) answer with probability ``decoy_rate``, the correct one otherwise. A policy
    fit to those demonstrations opens a hard answer with ``!`` about ``1 - decoy_rate`` of the
    time, so RL has to find and reinforce that rare first token: exploration is what pays, and
    an entropy collapse driven by the easy prompts (whose answers open with a value) hides it.
    ``demonstrations`` stay correct (they score 1.0); ``is_hard`` gives the bucket of each
    prompt and ``common_answers`` the answer the warm start prefers.

    Args:
        list_length, min_list_length, num_values: the lists, as in ``reverse``.
        hard_fraction: probability that a sampled prompt is hard.
        decoy_rate: probability that a hard prompt's warm-start demonstration is the common one.
        extra_tokens, eval_fraction, format_reward: see ``SequenceTask``.
    """

    name = "hard_prompt"
    MARKER = "?"
    ANSWER_PREFIX = "!"

    def __init__(
        self,
        list_length: int = 5,
        min_list_length: int | None = None,
        num_values: int = 10,
        hard_fraction: float = 0.3,
        decoy_rate: float = 0.95,
        extra_tokens: int = 0,
        eval_fraction: float = 0.1,
        format_reward: float = 0.0,
    ) -> None:
        self.hard_fraction = check_fraction("hard_fraction", hard_fraction, high_inclusive=True)
        self.decoy_rate = check_fraction("decoy_rate", decoy_rate, high_inclusive=True)
        super().__init__(
            list_length=list_length,
            min_list_length=min_list_length,
            num_values=num_values,
            extra_tokens=extra_tokens,
            eval_fraction=eval_fraction,
            format_reward=format_reward,
        )

    def _transform(self, values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return reverse_lists(values, lengths)

    def _sample_content(self, num: int, rng: np.random.Generator) -> Content:
        content = super()._sample_content(num, rng)
        content["marked"] = rng.random(num) < self.hard_fraction
        return content

    def _hard(self, content: Content) -> np.ndarray:
        return content["marked"]

    def common_answers(self, prompts: PromptBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The reversed list then ``<eos>`` for every prompt: correct on easy prompts only.

        Returns:
            ``(responses, mask)``, each (P, max_response_length), as ``demonstrations``.
        """
        targets = prompts.targets  # (P, T); hard rows start with the prefix token
        shifted = torch.nn.functional.pad(targets[:, 1:], (0, 1), value=self.vocab.pad_id)
        responses = torch.where(prompts.hard[:, None], shifted, targets)
        return responses, self._mask_of(responses)

    def warm_start_demonstrations(
        self, prompts: PromptBatch, generator: GeneratorLike = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Demonstrations in which each hard prompt gets its common (wrong) answer with
        probability ``decoy_rate``; easy prompts get their correct answer.

        Returns:
            ``(responses, mask)``, each (P, max_response_length), as ``demonstrations``.
        """
        rng = as_generator(generator)
        draw = torch.from_numpy(rng.random(len(prompts)) < self.decoy_rate)  # (P,)
        use_decoy = prompts.hard & draw.to(prompts.device)
        common, _ = self.common_answers(prompts)
        responses = torch.where(use_decoy[:, None], common, prompts.targets)
        return responses, self._mask_of(responses)
