"""Token vocabulary of a sequence task: special tokens, the task's symbols, distractor tokens.

Ids are laid out as ``[<pad>, <bos>, <eos>, *symbols, <d0>, <d1>, ...]`` so the special ids
are the same for every task (pad 0, bos 1, eos 2) and a task's symbol ids do not move when the
vocabulary is widened with distractors. Distractors never occur in prompts or answers; they only
widen the policy's action space (a 32k-token vocabulary for scale runs).

Text is whitespace-separated tokens: ``encode("3 1 4 =")`` and ``decode(ids)`` round-trip.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

PAD = "<pad>"
BOS = "<bos>"
EOS = "<eos>"
SPECIAL_TOKENS = (PAD, BOS, EOS)


class Vocabulary:
    """A fixed list of string tokens and their integer ids.

    Args:
        symbols: the task's own tokens (digits, operators, separators), in id order.
        extra_tokens: number of distractor tokens ``<d0> ... <d{n-1}>`` appended at the end.
    """

    pad_id = 0
    bos_id = 1
    eos_id = 2

    def __init__(self, symbols: Sequence[str], extra_tokens: int = 0) -> None:
        if isinstance(extra_tokens, bool) or not isinstance(extra_tokens, int | np.integer):
            raise TypeError(f"extra_tokens must be an int, got {type(extra_tokens).__name__}")
        if extra_tokens < 0:
            raise ValueError(f"extra_tokens must be >= 0, got {extra_tokens}")
        distractors = [f"<d{i}>" for i in range(int(extra_tokens))]
        tokens = (*SPECIAL_TOKENS, *symbols, *distractors)
        for token in symbols:
            if not isinstance(token, str) or not token or any(c.isspace() for c in token):
                raise ValueError(f"symbols must be non-empty strings without spaces, got {token!r}")
        if len(set(tokens)) != len(tokens):
            raise ValueError(f"symbols must be unique and differ from {SPECIAL_TOKENS}: {symbols}")
        self.tokens: tuple[str, ...] = tokens
        self.symbols: tuple[str, ...] = tuple(symbols)
        self.extra_tokens = int(extra_tokens)
        self._ids = {token: i for i, token in enumerate(tokens)}

    @property
    def size(self) -> int:
        """Number of tokens, V."""
        return len(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def special_ids(self) -> tuple[int, int, int]:
        """Ids of ``(<pad>, <bos>, <eos>)``."""
        return (self.pad_id, self.bos_id, self.eos_id)

    @property
    def distractor_ids(self) -> range:
        """Ids of the distractor tokens (empty range without ``extra_tokens``)."""
        return range(self.size - self.extra_tokens, self.size)

    def id(self, token: str) -> int:
        """The id of one token; ValueError naming the token if it is not in the vocabulary."""
        try:
            return self._ids[token]
        except KeyError:
            raise ValueError(
                f"token {token!r} is not in the vocabulary; known: "
                f"{', '.join(self.tokens[: 3 + len(self.symbols)])}"
                + (f", <d0>..<d{self.extra_tokens - 1}>" if self.extra_tokens else "")
            ) from None

    def encode(self, text: str | Iterable[str]) -> list[int]:
        """Ids of a whitespace-separated string or of a sequence of tokens."""
        tokens = text.split() if isinstance(text, str) else list(text)
        return [self.id(token) for token in tokens]

    def decode(self, ids: Iterable[int] | torch.Tensor | np.ndarray, skip_pad: bool = True) -> str:
        """Space-joined tokens of 1-D ``ids``; ``<pad>`` is dropped unless ``skip_pad=False``."""
        if isinstance(ids, torch.Tensor | np.ndarray):
            if ids.ndim != 1:
                raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        out = []
        for i in ids:
            if not 0 <= i < self.size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.size})")
            if skip_pad and i == self.pad_id:
                continue
            out.append(self.tokens[i])
        return " ".join(out)

    def __repr__(self) -> str:
        extra = self.extra_tokens
        return f"Vocabulary(size={self.size}, symbols={self.symbols}, extra_tokens={extra})"
