"""List transformations: reverse or sort a list of value tokens, ``<bos> 3 1 4 =`` -> ``4 1 3``."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import numpy as np

from toy_entropy.envs.sequence.task import Content, SequenceTask, check_int, right_align

_ABSENT = -1  # fills the values array beyond a list's length


class ListTask(SequenceTask):
    """A deterministic transformation of a list of ``num_values`` value tokens.

    Prompt: ``<bos> v_1 ... v_m =`` with m uniform in ``[min_list_length, list_length]`` and the
    values i.i.d. uniform; value v is the token ``str(v)`` (digits by default). Answer: the
    transformed list then ``<eos>``; it is unique. Subclasses choose the transformation and may
    declare a ``MARKER`` token and an ``ANSWER_PREFIX`` token (``hard_prompt`` does): rows whose
    content has ``marked`` True carry the marker before ``=`` and their answer starts with the
    prefix, ``<bos> 3 1 4 ? =`` -> ``! 4 1 3 <eos>``.

    Args:
        list_length: longest list (prompt ``list_length + 2`` tokens).
        min_list_length: shortest list; None means ``list_length`` (fixed length).
        num_values: distinct values, tokens ``"0" ... str(num_values - 1)``.
        extra_tokens, eval_fraction, format_reward: see ``SequenceTask``.
    """

    MARKER: ClassVar[str | None] = None
    ANSWER_PREFIX: ClassVar[str | None] = None

    def __init__(
        self,
        list_length: int = 5,
        min_list_length: int | None = None,
        num_values: int = 10,
        extra_tokens: int = 0,
        eval_fraction: float = 0.1,
        format_reward: float = 0.0,
    ) -> None:
        self.list_length = check_int("list_length", list_length, 1)
        if min_list_length is None:
            min_list_length = self.list_length
        self.min_list_length = check_int("min_list_length", min_list_length, 1, self.list_length)
        self.num_values = check_int("num_values", num_values, 2)
        values = tuple(str(v) for v in range(self.num_values))
        marker = () if self.MARKER is None else (self.MARKER,)
        prefix = () if self.ANSWER_PREFIX is None else (self.ANSWER_PREFIX,)
        super().__init__(
            symbols=(*values, "=", *marker, *prefix),
            prompt_length=self.list_length + 2 + len(marker),
            max_response_length=self.list_length + 1 + len(prefix),
            answer_symbols=(*values, *prefix),
            extra_tokens=extra_tokens,
            eval_fraction=eval_fraction,
            format_reward=format_reward,
        )
        self._value0 = self.vocab.id("0")

    @abstractmethod
    def _transform(self, values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The answer lists (N, W), left-aligned, of the lists ``values`` (N, W) of ``lengths``."""

    def _marked(self, content: Content) -> np.ndarray:
        """(N,) bool: rows with ``MARKER`` in the prompt and ``ANSWER_PREFIX`` in the answer."""
        return content.get("marked", np.zeros(len(content["lengths"]), dtype=bool))

    def _sample_content(self, num: int, rng: np.random.Generator) -> Content:
        lengths = rng.integers(self.min_list_length, self.list_length + 1, num)
        values = rng.integers(0, self.num_values, (num, self.list_length))
        present = np.arange(self.list_length)[None, :] < lengths[:, None]  # (N, W)
        return {"values": np.where(present, values, _ABSENT), "lengths": lengths}

    def _prompt_tokens(self, content: Content) -> np.ndarray:
        values, lengths = content["values"], content["lengths"]  # (N, W), (N,)
        marked = self._marked(content)  # (N,)
        rows = np.arange(len(lengths))
        body = np.full((len(lengths), self.prompt_length), self.vocab.pad_id)  # left-aligned
        body[:, 0] = self.vocab.bos_id
        body[:, 1 : 1 + self.list_length] = np.where(
            values == _ABSENT, self.vocab.pad_id, values + self._value0
        )
        equals = self.vocab.id("=")
        if marked.any():
            body[rows[marked], 1 + lengths[marked]] = self.vocab.id(self.MARKER)
        body[rows, 1 + lengths + marked] = equals
        return right_align(body, 2 + lengths + marked, self.vocab.pad_id)

    def _targets(self, content: Content) -> np.ndarray:
        values, lengths = content["values"], content["lengths"]
        answer = self._transform(values, lengths)  # (N, W), left-aligned
        prefix = self._marked(content).astype(np.int64)  # (N,) 0 or 1
        rows = np.arange(len(lengths))
        targets = np.full((len(lengths), self.max_response_length), self.vocab.pad_id)
        if prefix.any():
            targets[rows[prefix == 1], 0] = self.vocab.id(self.ANSWER_PREFIX)
        present = np.arange(self.list_length)[None, :] < lengths[:, None]  # (N, W)
        columns = prefix[:, None] + np.arange(self.list_length)[None, :]  # (N, W)
        row_index = np.broadcast_to(rows[:, None], columns.shape)
        targets[row_index[present], columns[present]] = answer[present] + self._value0
        targets[rows, prefix + lengths] = self.vocab.eos_id
        return targets

    def _parse(self, tokens: list[str]) -> Content:
        marked = self.MARKER is not None and tokens[-2:-1] == [self.MARKER]
        items = tokens[: -2 if marked else -1]
        value_symbols = self.vocab.symbols[: self.num_values]
        if (
            tokens[-1:] != ["="]
            or not self.min_list_length <= len(items) <= self.list_length
            or not all(t in value_symbols for t in items)
        ):
            marker = "" if self.MARKER is None else f" [{self.MARKER}]"
            raise ValueError(
                f"a {self.name} prompt is '<{self.min_list_length} to {self.list_length} values "
                f"in 0..{self.num_values - 1}>{marker} =', got {' '.join(tokens)!r}"
            )
        values = np.full(self.list_length, _ABSENT)
        values[: len(items)] = [int(t) for t in items]
        content = {"values": values, "lengths": np.array(len(items))}
        if self.MARKER is not None:
            content["marked"] = np.array(marked)
        return content


def reverse_lists(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Each row's first ``lengths[i]`` entries of (N, W) in reverse order, left-aligned."""
    positions = np.arange(values.shape[1])[None, :]
    source = np.clip(lengths[:, None] - 1 - positions, 0, None)  # (N, W)
    return np.where(positions < lengths[:, None], np.take_along_axis(values, source, 1), _ABSENT)


class ReverseTask(ListTask):
    """Reverse the list: ``<bos> 3 1 4 =`` -> ``4 1 3 <eos>``. See ``ListTask``."""

    name = "reverse"

    def _transform(self, values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return reverse_lists(values, lengths)


class SortTask(ListTask):
    """Sort the list ascending: ``<bos> 3 1 4 1 =`` -> ``1 1 3 4 <eos>``. See ``ListTask``."""

    name = "sort"

    def _transform(self, values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        present = np.arange(values.shape[1])[None, :] < lengths[:, None]  # (N, W)
        ordered = np.sort(np.where(present, values, self.num_values), axis=1)  # absent last
        return np.where(present, ordered, _ABSENT)
