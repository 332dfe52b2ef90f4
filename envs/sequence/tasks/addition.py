"""Multi-digit addition, ``a + b =``, with the answer digits optionally reversed."""

from __future__ import annotations

import numpy as np

from toy_entropy.envs.sequence.task import Content, SequenceTask, check_int

DIGITS = tuple(str(d) for d in range(10))


class AdditionTask(SequenceTask):
    """Add two ``num_digits``-digit numbers.

    Prompt: ``<bos> a ... + b ... =`` with both operands zero-padded to ``num_digits`` digits,
    most significant digit first (``num_digits=2``: ``<bos> 0 7 + 5 8 =``, 7 tokens).
    Answer: the ``num_digits + 1`` digits of the sum, zero-padded, least significant first when
    ``reverse_answer`` (as in minGPT's adder: the model writes digits in the order it can carry),
    then ``<eos>``: ``5 6 0 <eos>`` for 07 + 58 = 065. The answer is unique.

    Args:
        num_digits: digits per operand (prompt ``2 n + 3`` tokens, answer ``n + 2`` tokens).
        reverse_answer: write the sum least significant digit first.
        extra_tokens, eval_fraction, format_reward: see ``SequenceTask``.
    """

    name = "addition"

    def __init__(
        self,
        num_digits: int = 2,
        reverse_answer: bool = True,
        extra_tokens: int = 0,
        eval_fraction: float = 0.1,
        format_reward: float = 0.0,
    ) -> None:
        self.num_digits = check_int("num_digits", num_digits, 1)
        self.reverse_answer = bool(reverse_answer)
        super().__init__(
            symbols=(*DIGITS, "+", "="),
            prompt_length=2 * self.num_digits + 3,
            max_response_length=self.num_digits + 2,
            answer_symbols=DIGITS,
            extra_tokens=extra_tokens,
            eval_fraction=eval_fraction,
            format_reward=format_reward,
        )
        self._digit0 = self.vocab.id("0")

    def _sample_content(self, num: int, rng: np.random.Generator) -> Content:
        shape = (num, self.num_digits)
        return {"a": rng.integers(0, 10, shape), "b": rng.integers(0, 10, shape)}

    def _prompt_tokens(self, content: Content) -> np.ndarray:
        a, b = content["a"], content["b"]  # (N, n) digits, most significant first

        def column(token: str) -> np.ndarray:
            return np.full((len(a), 1), self.vocab.id(token))

        return np.concatenate(
            [column("<bos>"), a + self._digit0, column("+"), b + self._digit0, column("=")], axis=1
        )

    def _targets(self, content: Content) -> np.ndarray:
        a, b = content["a"], content["b"]  # (N, n)
        total = np.zeros((len(a), self.num_digits + 1), dtype=np.int64)  # most significant first
        carry = np.zeros(len(a), dtype=np.int64)
        for i in range(self.num_digits - 1, -1, -1):  # digit-wise: operands may exceed int64
            column_sum = a[:, i] + b[:, i] + carry
            total[:, i + 1] = column_sum % 10
            carry = column_sum // 10
        total[:, 0] = carry
        if self.reverse_answer:
            total = total[:, ::-1]
        eos = np.full((len(a), 1), self.vocab.eos_id)
        return np.concatenate([total + self._digit0, eos], axis=1)

    def _parse(self, tokens: list[str]) -> Content:
        n = self.num_digits
        a, b = tokens[:n], tokens[n + 1 : 2 * n + 1]
        if (
            len(tokens) != 2 * n + 2
            or tokens[n] != "+"
            or tokens[-1] != "="
            or not all(t in DIGITS for t in a + b)
        ):
            raise ValueError(
                f"an addition prompt with num_digits={n} is '<n digits> + <n digits> =', "
                f"got {' '.join(tokens)!r}"
            )
        return {"a": np.array([int(t) for t in a]), "b": np.array([int(t) for t in b])}
