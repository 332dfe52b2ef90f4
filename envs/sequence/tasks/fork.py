"""Forking paths: long answers of determined scaffold tokens with a few forking tokens.

An LLM-like regime for the entropy experiments: most tokens of a reasoning response are
determined (formatting, copying, intermediate steps that follow from earlier choices) and a few
are forks where the answer is decided (about 80% of chain-of-thought tokens are low-entropy,
arXiv 2506.01939). Here the share and placement of the forks, the answer length and the
vocabulary are arguments, and the warm-start demonstrations set how unsure the policy starts at
the forks, how much mass it puts on distractor tokens, and which correct forks it rarely takes.
"""

from __future__ import annotations

import numpy as np
import torch

from toy_entropy.envs.sequence.task import (
    Content,
    GeneratorLike,
    PromptBatch,
    SequenceTask,
    as_generator,
    check_fraction,
    check_int,
    right_align,
)

PLACEMENTS = ("spread", "front")


class ForkTask(SequenceTask):
    """Answer ``num_forks`` forks, each followed by ``segment_length`` determined tokens.

    Prompt: ``<bos> k_1 ... k_F [?] =`` with keys ``k_j`` uniform in ``k0 .. k{K-1}`` and the
    hard marker ``?`` on a fraction ``hard_fraction`` of prompts. The correct option of fork j
    is ``f{k_j}``, except on hard prompts, where the first fork's is ``f{(k_1 + 1) mod K}``.
    After the fork with option o come ``segment_length`` scaffold tokens ``s{(o + t) mod n}``,
    t = 0, 1, ..., which follow from the fork. ``placement="spread"`` puts each fork before its
    segment (``f s s s f s s s ... <eos>``); ``"front"`` puts the forks first, then the
    segments (``f f s s s s s s <eos>``). Answer length ``F * (segment_length + 1) + 1``
    (``<eos>`` included); fork density ``F / T``. The correct answer is unique.

    Warm start (``warm_start_demonstrations``): from the correct options, each fork is replaced
    by a uniform option with probability ``fork_noise`` (sets the forks' starting entropy); on
    hard prompts the first fork shows the common option ``f{k_1}`` with probability
    ``decoy_rate`` (so the warm start rarely takes the correct one: exploration value); the
    scaffold follows the options shown; each scaffold token is replaced by a uniform distractor
    with probability ``distractor_rate`` (sets the small but non-zero distractor probability;
    needs ``extra_tokens > 0``). ``demonstrations`` stay correct.

    Args:
        num_forks: forks per answer F >= 1.
        fork_options: options per fork K >= 2 (also the number of prompt keys).
        segment_length: scaffold tokens after each fork, >= 0.
        scaffold_symbols: distinct scaffold tokens n >= 1.
        placement: ``"spread"`` or ``"front"``.
        hard_fraction: probability that a sampled prompt is hard.
        decoy_rate: probability that a hard prompt's warm-start demonstration shows the common
            first fork.
        fork_noise: probability that a warm-start demonstration's fork is a uniform option.
        distractor_rate: probability that a warm-start scaffold token is a uniform distractor.
        extra_tokens, eval_fraction, format_reward: see ``SequenceTask``.
    """

    name = "fork"
    MARKER = "?"

    def __init__(
        self,
        num_forks: int = 4,
        fork_options: int = 8,
        segment_length: int = 15,
        scaffold_symbols: int = 8,
        placement: str = "spread",
        hard_fraction: float = 0.3,
        decoy_rate: float = 0.9,
        fork_noise: float = 0.3,
        distractor_rate: float = 0.0,
        extra_tokens: int = 0,
        eval_fraction: float = 0.1,
        format_reward: float = 0.0,
    ) -> None:
        self.num_forks = check_int("num_forks", num_forks, 1)
        self.fork_options = check_int("fork_options", fork_options, 2)
        self.segment_length = check_int("segment_length", segment_length, 0)
        self.scaffold_symbols = check_int("scaffold_symbols", scaffold_symbols, 1)
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        self.placement = placement
        self.hard_fraction = check_fraction("hard_fraction", hard_fraction, high_inclusive=True)
        self.decoy_rate = check_fraction("decoy_rate", decoy_rate, high_inclusive=True)
        self.fork_noise = check_fraction("fork_noise", fork_noise, high_inclusive=True)
        self.distractor_rate = check_fraction(
            "distractor_rate", distractor_rate, high_inclusive=True
        )
        if self.distractor_rate > 0 and extra_tokens == 0:
            raise ValueError("distractor_rate > 0 needs distractor tokens: set extra_tokens > 0")
        keys = [f"k{i}" for i in range(self.fork_options)]
        options = [f"f{i}" for i in range(self.fork_options)]
        scaffold = [f"s{i}" for i in range(self.scaffold_symbols)]
        length = self.num_forks * (self.segment_length + 1) + 1
        super().__init__(
            symbols=(*keys, *options, *scaffold, "=", self.MARKER),
            prompt_length=self.num_forks + 3,
            max_response_length=length,
            answer_symbols=(*options, *scaffold),
            extra_tokens=extra_tokens,
            eval_fraction=eval_fraction,
            format_reward=format_reward,
        )
        self._key0 = self.vocab.id("k0")
        self._option0 = self.vocab.id("f0")
        self._scaffold0 = self.vocab.id("s0")
        self.fork_positions, self.scaffold_positions = self._layout()

    def _layout(self) -> tuple[np.ndarray, np.ndarray]:
        """Answer columns of the forks (F,) and of the scaffold (F, segment_length)."""
        forks, segment = self.num_forks, self.segment_length
        if self.placement == "spread":
            starts = np.arange(forks) * (segment + 1)
            return starts, starts[:, None] + 1 + np.arange(segment)[None, :]
        scaffold = forks + np.arange(forks * segment).reshape(forks, segment)
        return np.arange(forks), scaffold

    @property
    def fork_density(self) -> float:
        """Share of the answer's tokens (``<eos>`` included) that are forks."""
        return self.num_forks / self.max_response_length

    # ---- content, prompts, answers ---------------------------------------------------------

    def _sample_content(self, num: int, rng: np.random.Generator) -> Content:
        keys = rng.integers(0, self.fork_options, (num, self.num_forks))
        return {"keys": keys, "marked": rng.random(num) < self.hard_fraction}

    def _hard(self, content: Content) -> np.ndarray:
        return content["marked"]

    def _prompt_tokens(self, content: Content) -> np.ndarray:
        keys, marked = content["keys"], content["marked"]  # (N, F), (N,)
        num = len(keys)
        body = np.full((num, self.prompt_length), self.vocab.pad_id)  # left-aligned
        body[:, 0] = self.vocab.bos_id
        body[:, 1 : 1 + self.num_forks] = keys + self._key0
        rows = np.arange(num)
        body[rows[marked], 1 + self.num_forks] = self.vocab.id(self.MARKER)
        body[rows, 1 + self.num_forks + marked] = self.vocab.id("=")
        return right_align(body, 2 + self.num_forks + marked, self.vocab.pad_id)

    def correct_options(self, content: Content) -> np.ndarray:
        """(N, F) the correct option index of every fork."""
        options = content["keys"].copy()
        options[:, 0] = (options[:, 0] + content["marked"]) % self.fork_options
        return options

    def answers(self, options: np.ndarray) -> np.ndarray:
        """The answers (N, T) int64 that take the fork options (N, F): forks, their
        scaffold, ``<eos>``."""
        num = len(options)
        out = np.full((num, self.max_response_length), self.vocab.pad_id, dtype=np.int64)
        out[:, self.fork_positions] = options + self._option0
        steps = np.arange(self.segment_length)[None, None, :]  # (1, 1, S)
        scaffold = (options[:, :, None] + steps) % self.scaffold_symbols  # (N, F, S)
        out[:, self.scaffold_positions] = scaffold + self._scaffold0
        out[:, -1] = self.vocab.eos_id
        return out

    def _targets(self, content: Content) -> np.ndarray:
        return self.answers(self.correct_options(content))

    def _parse(self, tokens: list[str]) -> Content:
        marked = tokens[-2:-1] == [self.MARKER]
        items = tokens[: -2 if marked else -1]
        key_symbols = self.vocab.symbols[: self.fork_options]
        if (
            tokens[-1:] != ["="]
            or len(items) != self.num_forks
            or not all(t in key_symbols for t in items)
        ):
            raise ValueError(
                f"a fork prompt is '<{self.num_forks} keys in k0..k{self.fork_options - 1}> "
                f"[{self.MARKER}] =', got {' '.join(tokens)!r}"
            )
        keys = np.array([key_symbols.index(t) for t in items])
        return {"keys": keys, "marked": np.array(marked)}

    # ---- the warm start -------------------------------------------------------------------

    def warm_start_demonstrations(
        self, prompts: PromptBatch, generator: GeneratorLike = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noisy demonstrations (see the class docstring): decoy first forks on hard prompts,
        uniform forks with probability ``fork_noise``, distractors in the scaffold.

        Returns:
            ``(responses, mask)``, each (P, max_response_length), as ``demonstrations``.
        """
        rng = as_generator(generator)
        content = {k: v.cpu().numpy() for k, v in prompts.content.items()}
        options = self.correct_options(content)  # (P, F)
        num = len(options)
        decoy = content["marked"] & (rng.random(num) < self.decoy_rate)  # (P,)
        options[decoy, 0] = content["keys"][decoy, 0]
        noisy = rng.random(options.shape) < self.fork_noise  # (P, F)
        options = np.where(noisy, rng.integers(0, self.fork_options, options.shape), options)
        responses = self.answers(options)  # (P, T)
        if self.distractor_rate > 0:
            columns = self.scaffold_positions.reshape(-1)  # (F * S,)
            hit = rng.random((num, columns.size)) < self.distractor_rate
            first = self.vocab.distractor_ids.start
            drawn = rng.integers(first, first + self.vocab.extra_tokens, hit.shape)
            responses[:, columns] = np.where(hit, drawn, responses[:, columns])
        responses = torch.as_tensor(responses, device=prompts.device)
        return responses, self._mask_of(responses)
