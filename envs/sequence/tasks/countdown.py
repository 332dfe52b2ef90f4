"""Countdown: reach a target by combining every given number once with + - * (postfix answers)."""

from __future__ import annotations

import operator

import numpy as np
import torch

from toy_entropy.envs.sequence.task import (
    Content,
    GeneratorLike,
    PromptBatch,
    SequenceTask,
    as_generator,
    check_int,
    right_align,
)

DIGITS = tuple(str(d) for d in range(10))
OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


class CountdownTask(SequenceTask):
    """Write an expression over the given numbers that evaluates to the target.

    Prompt: ``<bos> n_1 ... n_k : t ... =``: k numbers in ``[1, max_number]`` (one digit token
    each), then the target in decimal digits (``<bos> 3 5 2 : 1 6 =``).
    Answer: a postfix (reverse Polish) expression that uses each number exactly once and the
    operators ``+ - *`` (``a b -`` is a - b), whose value is the target, then ``<eos>``; every
    answer has ``2 k`` tokens. ``<bos> 3 5 2 : 1 6 =`` has ``3 5 + 2 *``, ``5 3 + 2 *``,
    ``2 3 5 + *``, ... so a prompt has several correct answers and diversity (pass@k) matters.

    The target of a sampled prompt is the value of an expression drawn uniformly among those
    over its numbers with a value in ``[1, max_target]``: targets reachable in many ways are
    more likely. Verification runs in Python on the CPU (the task is small by design).

    Args:
        num_numbers: k, in [2, 4] (4 numbers: 3240 expressions per prompt to enumerate).
        max_number: largest number, in [1, 9].
        max_target: largest target.
        extra_tokens, eval_fraction, format_reward: see ``SequenceTask``; a well-formed answer
            is a valid expression over exactly the prompt's numbers, whatever its value.
    """

    name = "countdown"

    def __init__(
        self,
        num_numbers: int = 3,
        max_number: int = 9,
        max_target: int = 99,
        extra_tokens: int = 0,
        eval_fraction: float = 0.1,
        format_reward: float = 0.0,
    ) -> None:
        self.num_numbers = check_int("num_numbers", num_numbers, 2, 4)
        self.max_number = check_int("max_number", max_number, 1, 9)
        self.max_target = check_int("max_target", max_target, 1)
        super().__init__(
            symbols=(*DIGITS, *OPERATORS, ":", "="),
            prompt_length=self.num_numbers + len(str(self.max_target)) + 3,
            max_response_length=2 * self.num_numbers,
            answer_symbols=(*DIGITS, *OPERATORS),
            extra_tokens=extra_tokens,
            eval_fraction=eval_fraction,
            format_reward=format_reward,
        )
        self._digit0 = self.vocab.id("0")
        self._operators = {self.vocab.id(symbol): fn for symbol, fn in OPERATORS.items()}
        self._cache: dict[tuple[int, ...], tuple[dict[int, list[bytes]], np.ndarray]] = {}

    # ---- expressions ----------------------------------------------------------------------

    def _expressions(self, numbers: tuple[int, ...]) -> tuple[dict[int, list[bytes]], np.ndarray]:
        """All distinct expressions over ``numbers`` with a value in [1, max_target].

        Returns:
            ``(by_value, values)``: token-id strings (as bytes) keyed by value, and the value of
            every expression (one entry per expression, for uniform sampling).
        """
        key = tuple(sorted(numbers))
        if key in self._cache:
            return self._cache[key]
        by_value: dict[int, list[bytes]] = {}

        def extend(remaining: tuple[int, ...], stack: tuple[int, ...], tokens: tuple[int, ...]):
            if not remaining and len(stack) == 1:
                if 1 <= stack[0] <= self.max_target:
                    by_value.setdefault(stack[0], []).append(bytes(tokens))
                return
            for i, number in enumerate(remaining):
                if number not in remaining[:i]:  # equal numbers give the same expressions
                    rest = remaining[:i] + remaining[i + 1 :]
                    extend(rest, (*stack, number), (*tokens, self._digit0 + number))
            if len(stack) >= 2:
                for op_id, fn in self._operators.items():
                    extend(remaining, (*stack[:-2], fn(stack[-2], stack[-1])), (*tokens, op_id))

        extend(key, (), ())
        values = np.array([v for v, found in by_value.items() for _ in found], dtype=np.int64)
        self._cache[key] = (by_value, values)
        return by_value, values

    def _evaluate(self, tokens: list[int]) -> tuple[int, list[int]] | None:
        """Value and numbers used of a postfix expression (token ids), None if malformed."""
        stack: list[int] = []
        used: list[int] = []
        for token in tokens:
            if self._digit0 <= token < self._digit0 + 10:
                stack.append(token - self._digit0)
                used.append(token - self._digit0)
            elif token in self._operators and len(stack) >= 2:
                right = stack.pop()
                stack.append(self._operators[token](stack.pop(), right))
            else:
                return None
        return (stack[0], used) if len(stack) == 1 else None

    def solutions(self, prompts: PromptBatch) -> list[list[str]]:
        """Every correct answer of each prompt, as text without ``<eos>``."""
        return [
            [self.vocab.decode(list(expr)) for expr in self._solutions_of(numbers, target)]
            for numbers, target in self._rows(prompts)
        ]

    def num_solutions(self, prompts: PromptBatch) -> torch.Tensor:
        """Number of distinct correct answers of each prompt: (P,) long on the prompts' device."""
        counts = [len(self._solutions_of(numbers, t)) for numbers, t in self._rows(prompts)]
        return torch.tensor(counts, dtype=torch.long, device=prompts.device)

    def _solutions_of(self, numbers: list[int], target: int) -> list[bytes]:
        return self._expressions(tuple(numbers))[0].get(target, [])

    def _rows(self, prompts: PromptBatch) -> list[tuple[list[int], int]]:
        numbers = prompts.content["numbers"].tolist()
        return list(zip(numbers, prompts.content["target"].tolist(), strict=True))

    # ---- SequenceTask hooks ---------------------------------------------------------------

    def _sample_content(self, num: int, rng: np.random.Generator) -> Content:
        numbers = rng.integers(1, self.max_number + 1, (num, self.num_numbers))
        pick = rng.random(num)
        targets = np.zeros(num, dtype=np.int64)
        for i, row in enumerate(numbers):
            values = self._expressions(tuple(row.tolist()))[1]
            if len(values):
                targets[i] = values[int(pick[i] * len(values))]
        reachable = targets > 0  # numbers with no expression in range are dropped
        return {"numbers": numbers[reachable], "target": targets[reachable]}

    def _prompt_tokens(self, content: Content) -> np.ndarray:
        body = np.full((len(content["target"]), self.prompt_length), self.vocab.pad_id)
        lengths = np.zeros(len(body), dtype=np.int64)
        for i, (numbers, target) in enumerate(
            zip(content["numbers"], content["target"], strict=True)
        ):
            row = ["<bos>", *map(str, numbers.tolist()), ":", *str(int(target)), "="]
            body[i, : len(row)] = self.vocab.encode(row)
            lengths[i] = len(row)
        return right_align(body, lengths, self.vocab.pad_id)

    def _targets(self, content: Content) -> np.ndarray:
        targets = np.full((len(content["target"]), self.max_response_length), self.vocab.pad_id)
        for i, (numbers, target) in enumerate(
            zip(content["numbers"], content["target"], strict=True)
        ):
            reference = self._solutions_of(numbers.tolist(), int(target))[0]
            targets[i, : len(reference)] = list(reference)
            targets[i, len(reference)] = self.vocab.eos_id
        return targets

    def _parse(self, tokens: list[str]) -> Content:
        k = self.num_numbers
        numbers, target = tokens[:k], "".join(tokens[k + 1 : -1])
        allowed = DIGITS[1 : self.max_number + 1]
        if (
            tokens[k : k + 1] != [":"]
            or tokens[-1:] != ["="]
            or not all(t in allowed for t in numbers)
            or not target.isdigit()
            or str(int(target)) != target
            or not 1 <= int(target) <= self.max_target
        ):
            raise ValueError(
                f"a countdown prompt is '<{k} numbers in 1..{self.max_number}> : <target in "
                f"1..{self.max_target}, digits> =', got {' '.join(tokens)!r}"
            )
        content = {"numbers": np.array([int(t) for t in numbers]), "target": np.array(int(target))}
        if not self._solutions_of(content["numbers"].tolist(), int(target)):
            raise ValueError(f"countdown prompt {' '.join(tokens)!r} has no solution")
        return content

    def _verify(
        self,
        prompts: PromptBatch,
        prompt_index: torch.Tensor,
        cleaned: torch.Tensor,
        valid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self._rows(prompts)
        lengths = valid.sum(dim=1).tolist()
        correct, well_formed = [], []
        for response, length, index in zip(
            cleaned.tolist(), lengths, prompt_index.tolist(), strict=True
        ):
            numbers, target = rows[index]
            ends = length > 0 and response[length - 1] == self.vocab.eos_id
            result = self._evaluate(response[: length - 1]) if ends else None
            ok = result is not None and sorted(result[1]) == sorted(numbers)
            well_formed.append(ok)
            correct.append(ok and result[0] == target)
        device = cleaned.device
        return torch.tensor(correct, device=device), torch.tensor(well_formed, device=device)

    def demonstrations(
        self, prompts: PromptBatch, generator: GeneratorLike = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A correct answer drawn uniformly among each prompt's solutions (see ``solutions``)."""
        rng = as_generator(generator)
        responses = torch.full(
            (len(prompts), self.max_response_length), self.vocab.pad_id, dtype=torch.long
        )
        for i, (numbers, target) in enumerate(self._rows(prompts)):
            found = self._solutions_of(numbers, target)
            expression = list(found[int(rng.integers(len(found)))])
            responses[i, : len(expression)] = torch.tensor(expression)
            responses[i, len(expression)] = self.vocab.eos_id
        responses = responses.to(prompts.device)
        return responses, self._mask_of(responses)
