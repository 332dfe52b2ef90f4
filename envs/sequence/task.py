"""The sequence-task interface: prompt batches, seeded train/eval prompt sampling, verification.

A task owns a vocabulary, draws prompts from a seeded numpy generator, and scores batches of
responses on the responses' device. Subclasses say how to sample a prompt's content, how to
write it as tokens, what the reference answer is and how to read a prompt back from text; the
base class does the split, the padding conventions, the input checks and the 1/0 comparison.

Conventions (every task):
- A prompt is ``<bos> ... =``, LEFT-padded with ``<pad>`` to ``prompt_length`` columns, so every
  response starts at column ``prompt_length`` of ``[prompt tokens, response tokens]``.
- A response is the generated tokens up to and including the first ``<eos>``; later tokens are
  ignored. It has at most ``max_response_length`` tokens (``<eos>`` included).
- The train/eval split is a property of the prompt text: a 64-bit hash of its non-pad token ids
  puts a fraction ``eval_fraction`` of all possible prompts in ``eval``. The splits are disjoint
  by construction, do not depend on the seed, and do not move when distractors are added.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
import torch

from toy_entropy.envs.sequence.vocab import Vocabulary

Split = Literal["train", "eval"]
SPLITS = ("train", "eval")
GeneratorLike = np.random.Generator | int | None
Content = dict[str, np.ndarray]

_MAX_SAMPLING_ROUNDS = 1000
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """P prompts of one task and what its verifier needs, as tensors on one device.

    Attributes:
        tokens: (P, prompt_length) long, left-padded with ``pad_id``; ``<bos>`` first.
        lengths: (P,) long, number of non-pad prompt tokens.
        targets: (P, max_response_length) long, one correct response ending in ``<eos>``,
            ``pad_id`` after it (the only one, except for countdown).
        target_lengths: (P,) long, length of ``targets`` rows including ``<eos>``.
        hard: (P,) bool, prompts of the hard bucket (all False except for ``hard_prompt``).
        content: task-specific content, each tensor with leading dimension P (e.g. countdown's
            ``numbers`` (P, k) and ``target`` (P,)).
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    targets: torch.Tensor
    target_lengths: torch.Tensor
    hard: torch.Tensor
    content: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    def to(self, device: torch.device | str) -> PromptBatch:
        """The same prompts with every tensor on ``device``."""
        return self._map(lambda t: t.to(device))

    def __getitem__(self, index: torch.Tensor | slice | Sequence[int]) -> PromptBatch:
        """The prompts at ``index`` (a slice, index tensor or boolean mask over P)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return self._map(lambda t: t[index])

    def _map(self, fn) -> PromptBatch:
        changes = {
            f.name: fn(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name != "content"
        }
        changes["content"] = {key: fn(value) for key, value in self.content.items()}
        return dataclasses.replace(self, **changes)


def as_generator(generator: GeneratorLike) -> np.random.Generator:
    """A numpy Generator from a Generator (used as is), an int seed, or None (fresh entropy)."""
    if isinstance(generator, np.random.Generator):
        return generator
    if generator is None or (isinstance(generator, int) and not isinstance(generator, bool)):
        return np.random.default_rng(generator)
    raise TypeError(
        f"generator must be a numpy Generator, an int seed or None, got {type(generator).__name__}"
    )


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijective scramble of uint64 arrays (wraps modulo 2**64)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def prompt_hash(tokens: np.ndarray, pad_id: int = Vocabulary.pad_id) -> np.ndarray:
    """64-bit hash of each row's non-pad tokens, independent of how many pads precede them.

    Args:
        tokens: (P, L) integer token ids.

    Returns:
        (P,) uint64.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    h = np.full(tokens.shape[0], _GOLDEN, dtype=np.uint64)
    for column in tokens.T:
        mixed = _mix64((h ^ column.astype(np.uint64)) + _GOLDEN)
        h = np.where(column == pad_id, h, mixed)
    return h


def in_eval_split(tokens: np.ndarray, eval_fraction: float) -> np.ndarray:
    """Whether each prompt (P, L) belongs to the eval split: (P,) bool."""
    unit = (prompt_hash(tokens) >> np.uint64(11)).astype(np.float64) * 2.0**-53  # in [0, 1)
    return unit < eval_fraction


def right_align(rows: np.ndarray, lengths: np.ndarray, fill: int) -> np.ndarray:
    """Move the first ``lengths[i]`` entries of each row of (N, W) to its end; ``fill`` before."""
    width = rows.shape[1]
    src = np.arange(width)[None, :] - (width - lengths)[:, None]  # (N, W)
    gathered = np.take_along_axis(rows, np.clip(src, 0, width - 1), axis=1)
    return np.where(src >= 0, gathered, fill)


def check_split(split: object) -> None:
    """ValueError unless ``split`` is ``"train"`` or ``"eval"``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def through_first(flags: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: True up to and including each row's first True of ``flags`` (B, T) bool."""
    flags = flags.long()
    return (flags.cumsum(dim=1) - flags) == 0


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """Validate an int argument in [low, high] and return it as a Python int."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return int(value)


def check_fraction(name: str, value: object, high_inclusive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    ok = 0.0 <= value <= 1.0 if high_inclusive else 0.0 <= value < 1.0
    if not ok:
        raise ValueError(f"{name} must be in [0, 1{']' if high_inclusive else ')'}, got {value}")
    return float(value)


class SequenceTask(ABC):
    """A prompt distribution with a 1/0 verifier over token responses.

    Args:
        symbols: the task's tokens (see ``Vocabulary``).
        prompt_length: padded prompt length L.
        max_response_length: longest correct response T, ``<eos>`` included.
        answer_symbols: the symbols a well-formed answer may use (for ``format_reward``).
        extra_tokens: distractor tokens appended to the vocabulary.
        eval_fraction: share of the prompt space held out for the eval split, in [0, 1).
        format_reward: reward of a wrong answer of the right form (right length, answer symbols
            only, then ``<eos>``); 0 (the default) gives plain 1/0 rewards.
    """

    name: ClassVar[str]

    def __init__(
        self,
        symbols: Sequence[str],
        prompt_length: int,
        max_response_length: int,
        answer_symbols: Sequence[str],
        extra_tokens: int = 0,
        eval_fraction: float = 0.1,
        format_reward: float = 0.0,
    ) -> None:
        self.vocab = Vocabulary(symbols, extra_tokens)
        self.prompt_length = prompt_length
        self.max_response_length = max_response_length
        self.eval_fraction = check_fraction("eval_fraction", eval_fraction, high_inclusive=False)
        self.format_reward = check_fraction("format_reward", format_reward, high_inclusive=True)
        answer_table = torch.zeros(self.vocab.size, dtype=torch.bool)
        answer_table[self.vocab.encode(answer_symbols)] = True
        self._answer_table = answer_table  # (V,)

    # ---- subclass hooks -------------------------------------------------------------------

    @abstractmethod
    def _sample_content(self, num: int, rng: np.random.Generator) -> Content:
        """Up to ``num`` random prompt contents: arrays with a leading dimension of rows."""

    @abstractmethod
    def _prompt_tokens(self, content: Content) -> np.ndarray:
        """The left-padded prompts (N, prompt_length) int64 of ``content``."""

    @abstractmethod
    def _targets(self, content: Content) -> np.ndarray:
        """One correct response per row (N, max_response_length) int64, ``<eos>`` then pad."""

    @abstractmethod
    def _parse(self, tokens: list[str]) -> Content:
        """The content of one prompt given as tokens (without ``<bos>``); ValueError if bad."""

    def _hard(self, content: Content) -> np.ndarray | None:
        """Which rows are in the hard bucket: (N,) bool, or None for none of them."""
        return None

    # ---- prompts --------------------------------------------------------------------------

    def sample_prompts(
        self,
        num: int,
        split: Split = "train",
        generator: GeneratorLike = None,
        device: torch.device | str = "cpu",
    ) -> PromptBatch:
        """Draw ``num`` i.i.d. prompts of ``split`` (duplicates possible in small spaces).

        Args:
            num: number of prompts P >= 1.
            split: ``"train"`` or ``"eval"`` (disjoint, see the module docstring).
            generator: numpy Generator (advanced in place), int seed, or None.
            device: where the returned tensors live.
        """
        num = check_int("num", num, 1)
        check_split(split)
        want_eval = split == "eval"
        share = self.eval_fraction if want_eval else 1.0 - self.eval_fraction
        if share == 0.0:
            raise ValueError(f"the {split} split is empty with eval_fraction={self.eval_fraction}")
        rng = as_generator(generator)
        chunks: list[Content] = []
        have = 0
        for _ in range(_MAX_SAMPLING_ROUNDS):
            draw = math.ceil((num - have) / share * 1.25) + 8  # rejection sampling of the split
            content = self._sample_content(draw, rng)
            keep = in_eval_split(self._prompt_tokens(content), self.eval_fraction) == want_eval
            index = np.flatnonzero(keep)[: num - have]
            chunks.append({key: value[index] for key, value in content.items()})
            have += len(index)
            if have == num:
                break
        else:
            raise RuntimeError(f"could not draw {num} {split} prompts of task {self.name!r}")
        merged = {key: np.concatenate([chunk[key] for chunk in chunks]) for key in chunks[0]}
        return self._batch(merged, device)

    def prompts_from_text(
        self, texts: Sequence[str], device: torch.device | str = "cpu"
    ) -> PromptBatch:
        """Prompts written as text, e.g. ``["1 2 + 3 4 ="]`` (a leading ``<bos>`` is optional)."""
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError(f"texts must be a non-empty sequence of strings, got {texts!r}")
        rows = []
        for text in texts:
            tokens = text.split()
            if tokens[:1] == [self.vocab.tokens[self.vocab.bos_id]]:
                tokens = tokens[1:]
            self.vocab.encode(tokens)  # unknown tokens raise here, naming the token
            rows.append(self._parse(tokens))
        content = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
        return self._batch(content, device)

    def is_eval(self, prompts: PromptBatch) -> torch.Tensor:
        """Whether each prompt belongs to the eval split: (P,) bool on the prompts' device."""
        mask = in_eval_split(prompts.tokens.cpu().numpy(), self.eval_fraction)
        return torch.from_numpy(mask).to(prompts.device)

    def is_hard(self, prompts: PromptBatch) -> torch.Tensor:
        """Whether each prompt is in the hard bucket: (P,) bool (all False unless hard_prompt)."""
        return prompts.hard

    def decode_prompts(self, prompts: PromptBatch) -> list[str]:
        """Each prompt as text, without padding."""
        return [self.vocab.decode(row) for row in prompts.tokens.cpu()]

    def _batch(self, content: Content, device: torch.device | str) -> PromptBatch:
        tokens = self._prompt_tokens(content)  # (P, L)
        targets = self._targets(content)  # (P, T)
        hard = self._hard(content)  # (P,) or None
        assert tokens.shape[1] == self.prompt_length
        assert targets.shape[1] == self.max_response_length

        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(array), device=device)

        return PromptBatch(
            tokens=tensor(tokens.astype(np.int64)),
            lengths=tensor((tokens != self.vocab.pad_id).sum(axis=1).astype(np.int64)),
            targets=tensor(targets.astype(np.int64)),
            target_lengths=tensor(np.argmax(targets == self.vocab.eos_id, axis=1) + 1),
            hard=tensor(np.zeros(len(tokens), dtype=bool) if hard is None else hard),
            content={key: tensor(value) for key, value in content.items()},
        )

    # ---- verification ---------------------------------------------------------------------

    def score(
        self,
        prompts: PromptBatch,
        prompt_index: torch.Tensor,
        responses: torch.Tensor,
        response_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Reward of each response: 1.0 if correct, else ``format_reward`` if well formed, else 0.

        A response is its masked tokens up to and including its first ``<eos>``; it is correct
        when it equals a correct answer exactly (so a missing ``<eos>`` or an extra token is
        wrong). One host synchronisation validates the indices and token ids.

        Args:
            prompts: the P prompts.
            prompt_index: (B,) integer, the prompt row of each response.
            responses: (B, T) integer token ids, any T.
            response_mask: (B, T) bool, True on generated positions.

        Returns:
            (B,) float32 on ``responses.device``.
        """
        prompt_index, valid, cleaned = self._clean(prompts, prompt_index, responses, response_mask)
        correct, well_formed = self._verify(prompts, prompt_index, cleaned, valid)
        reward = correct.float()
        if self.format_reward > 0.0:
            reward = torch.where(well_formed & ~correct, self.format_reward, reward)
        return reward

    def _clean(
        self,
        prompts: PromptBatch,
        prompt_index: torch.Tensor,
        responses: torch.Tensor,
        response_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Validate score inputs; return ``prompt_index`` (B,) on the responses' device,
        ``valid`` (B, T) bool (the mask up to the first ``<eos>``) and ``cleaned`` (B, T) long
        (the responses with ``pad_id`` outside ``valid``)."""
        for name, value in (("responses", responses), ("prompt_index", prompt_index)):
            if (
                not isinstance(value, torch.Tensor)
                or value.is_floating_point()
                or (value.dtype == torch.bool or value.is_complex())
            ):
                raise TypeError(f"{name} must be an integer torch.Tensor, got {_describe(value)}")
        if not isinstance(response_mask, torch.Tensor) or response_mask.dtype != torch.bool:
            raise TypeError(
                f"response_mask must be a bool torch.Tensor, got {_describe(response_mask)}"
            )
        if responses.ndim != 2:
            raise ValueError(f"responses must be (B, T), got shape {tuple(responses.shape)}")
        if response_mask.shape != responses.shape:
            raise ValueError(
                f"response_mask shape {tuple(response_mask.shape)} must equal responses shape "
                f"{tuple(responses.shape)}"
            )
        if prompt_index.shape != responses.shape[:1]:
            raise ValueError(
                f"prompt_index must be (B,) = ({responses.shape[0]},), got "
                f"{tuple(prompt_index.shape)}"
            )
        prompt_index = prompt_index.to(responses.device)
        response_mask = response_mask.to(responses.device)
        if responses.numel() > 0:
            bad_index, bad_token = torch.stack(
                [
                    ((prompt_index < 0) | (prompt_index >= len(prompts))).any(),
                    (((responses < 0) | (responses >= self.vocab.size)) & response_mask).any(),
                ]
            ).tolist()
            if bad_index:
                raise ValueError(f"prompt_index must be in [0, {len(prompts)}) (the prompts)")
            if bad_token:
                raise ValueError(f"responses must hold token ids in [0, {self.vocab.size})")
        responses = responses.long()
        valid = response_mask & through_first((responses == self.vocab.eos_id) & response_mask)
        cleaned = torch.where(valid, responses, self.vocab.pad_id)
        return prompt_index, valid, cleaned

    def _verify(
        self,
        prompts: PromptBatch,
        prompt_index: torch.Tensor,
        cleaned: torch.Tensor,
        valid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(correct, well_formed)`` (B,) bool by comparison with the unique target."""
        device = cleaned.device
        targets = prompts.targets.to(device).index_select(0, prompt_index)  # (B, T_target)
        width = max(cleaned.shape[1], targets.shape[1])
        pad = self.vocab.pad_id
        response = torch.nn.functional.pad(cleaned, (0, width - cleaned.shape[1]), value=pad)
        target = torch.nn.functional.pad(targets, (0, width - targets.shape[1]), value=pad)
        correct = (response == target).all(dim=1)  # (B,)
        if self.format_reward == 0.0:
            return correct, correct
        target_lengths = prompts.target_lengths.to(device)[prompt_index]  # (B,)
        return correct, self._well_formed(cleaned, valid, target_lengths)

    def _well_formed(
        self, cleaned: torch.Tensor, valid: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """(B,) bool: answer symbols only, then ``<eos>``, ``lengths`` tokens in all."""
        is_eos = (cleaned == self.vocab.eos_id) & valid  # (B, T)
        allowed = self._answer_table.to(cleaned.device)[cleaned] | is_eos | ~valid  # (B, T)
        return is_eos.any(dim=1) & (valid.sum(dim=1) == lengths) & allowed.all(dim=1)

    # ---- demonstrations -------------------------------------------------------------------

    def demonstrations(
        self, prompts: PromptBatch, generator: GeneratorLike = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One correct response per prompt (a random one where there are several).

        Returns:
            ``(responses, mask)``: (P, max_response_length) long ending in ``<eos>`` with
            ``pad_id`` after, and (P, max_response_length) bool, True up to ``<eos>``.
        """
        responses = prompts.targets.clone()
        return responses, self._mask_of(responses)

    def warm_start_demonstrations(
        self, prompts: PromptBatch, generator: GeneratorLike = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The responses a supervised warm start should imitate; ``demonstrations`` except for
        ``hard_prompt``, whose hard prompts usually get a wrong "common" answer instead."""
        return self.demonstrations(prompts, generator)

    def _mask_of(self, responses: torch.Tensor) -> torch.Tensor:
        """(P, T) bool, True up to and including the first ``<eos>`` of each row."""
        return through_first(responses == self.vocab.eos_id)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab.size}, prompt_length="
            f"{self.prompt_length}, max_response_length={self.max_response_length})"
        )


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of dtype {value.dtype}"
    return type(value).__name__
