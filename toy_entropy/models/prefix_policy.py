"""A tabular prefix policy whose response distribution can be enumerated exactly.

For tiny vocabularies V and response lengths L, every state of an autoregressive policy, a
(prompt p, response prefix y_<t) pair, gets its own row of free logits. Everything the theory
talks about is then exact: the probability of every complete response, the dataset entropy
H(pi, D), the expected reward J, the true expected policy-gradient and natural-gradient updates,
and how the entropy change after an update splits into the per-state part that the covariance
identity (docs/THEORY.md section 3) predicts and the state-distribution shift it ignores.

States. A prefix contains no EOS (EOS ends a response). Per prompt there are
``S = sum_{t<L} (V-1)^t`` prefixes, ordered by length and then lexicographically by the ranks of
their tokens among the V-1 non-EOS tokens; the root (empty prefix) is state 0. The logits are a
dense ``(P, S, V)`` parameter.

Truncation. Every state, including those at depth L-1, has all V actions. A response ends when
it emits EOS (which belongs to it) or after its L-th token, whatever that token is: this is
what :meth:`toy_entropy.models.model.GPT.generate` does with ``max_new_tokens = L``.

Responses. The ``R = S + (V-1)^L`` complete responses are enumerated in a fixed order: first
"prefix s + EOS" for every state s in state order, then the truncated ones "prefix s + a" for
the states s at depth L-1 and the non-EOS tokens a in rank order. Rewards are a ``(P, R)``
tensor in this order (:meth:`PrefixPolicy.reward_table` builds one from a Python function).

Visitation weights. Both dataset entropies are ``sum_{p,s} w(p, s) H(pi(.|p, s))``:

- response-mean (the paper's H): ``w(p, s) = (1/P) sum_{y through s} P(y | p) / |y|``;
- token-mean (all tokens pooled): ``w(p, s) = d(p, s) / sum_{p', s'} d(p', s')``, where
  ``d(p, s)`` is the probability that a response to p passes through s. This is the limit of
  :func:`toy_entropy.theory.entropy.masked_token_mean` over many sampled responses.

In both modes the weights sum to 1 over all (prompt, state) pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from toy_entropy.models.model import sample_categorical
from toy_entropy.theory.entropy import (
    entropy_from_logits,
    npg_logit_update,
    pg_logit_update,
    predicted_entropy_change,
)

__all__ = ["EntropyChangeSplit", "PrefixPolicy", "ENTROPY_MODES", "UPDATE_RULES", "ESTIMATORS"]

ENTROPY_MODES = ("response-mean", "token-mean")
UPDATE_RULES = ("pg", "npg")
ESTIMATORS = ("reinforce", "rloo")
MAX_TABLE_ENTRIES = 20_000_000
"""Upper bound on P * S * V and on R * L: this policy is meant for tiny V and L."""

RewardSpec = torch.Tensor | Callable[[int, tuple[int, ...]], float]


@dataclass(frozen=True)
class EntropyChangeSplit:
    """Exact split of a dataset-entropy change after a logit update dz (all in nats).

    ``total = per_state + distribution_shift`` up to rounding, where with old/new weights w and
    per-state entropies H:

    - ``total = H(pi_new, D) - H(pi_old, D)``;
    - ``per_state = sum_s w_old(s) (H_new(s) - H_old(s))``: the part the paper's identity covers;
    - ``distribution_shift = sum_s (w_new(s) - w_old(s)) H_new(s)``: the part it ignores;
    - ``first_order = sum_s w_old(s) (-Cov_{a ~ pi_old(.|s)}(log pi_old(a|s), dz(s, a)))``:
      the first-order prediction of ``per_state``.
    """

    total: float
    per_state: float
    distribution_shift: float
    first_order: float


def _prefix_tables(
    vocab_size: int, max_length: int, eos_id: int, pad_id: int, level_starts: list[int]
) -> dict[str, torch.Tensor]:
    """Index tables of the prefix tree, in the order described in the module docstring.

    Returns ``non_eos`` (V-1,) the non-EOS tokens by rank; ``child`` (S, V) the state reached
    by each action (-1 where the response ends); ``terminal_response`` (S, V) the response an
    action ends (-1 where it goes on); ``state_depth`` (S,); ``responses`` (R, L) the tokens of
    every response (``pad_id`` after its end), ``response_states`` (R, L) the state each token
    is drawn in (0 after the end), ``response_lengths`` (R,) and ``response_mask`` (R, L).
    """
    V, L, K = vocab_size, max_length, vocab_size - 1
    S = level_starts[L]
    R = S + K**L
    non_eos = [a for a in range(V) if a != eos_id]
    child = [[-1] * V for _ in range(S)]
    terminal = [[-1] * V for _ in range(S)]
    tokens: list[list[int]] = [[]] * R
    states: list[list[int]] = [[]] * R
    prefixes: list[list[int]] = [[]]  # tokens of every state's prefix, in state order
    paths: list[list[int]] = [[0]]  # states visited up to and including each state
    for s in range(S):
        t = len(prefixes[s])
        ends = [(eos_id, s)]  # (action, response index) pairs that end a response
        if t + 1 < L:
            first_child = level_starts[t + 1] + (s - level_starts[t]) * K
            for rank, a in enumerate(non_eos):
                child[s][a] = first_child + rank
                prefixes.append(prefixes[s] + [a])
                paths.append(paths[s] + [first_child + rank])
        else:
            first_truncated = S + (s - level_starts[t]) * K
            ends += [(a, first_truncated + rank) for rank, a in enumerate(non_eos)]
        for a, r in ends:
            terminal[s][a] = r
            tokens[r] = prefixes[s] + [a]
            states[r] = paths[s]
    lengths = torch.tensor([len(y) for y in tokens])  # (R,)
    mask = torch.arange(L)[None, :] < lengths[:, None]  # (R, L)
    padded_tokens = torch.full((R, L), pad_id, dtype=torch.long)
    padded_tokens[mask] = torch.tensor([a for y in tokens for a in y])
    padded_states = torch.zeros(R, L, dtype=torch.long)
    padded_states[mask] = torch.tensor([s for path in states for s in path])
    return {
        "non_eos": torch.tensor(non_eos),
        "child": torch.tensor(child),
        "terminal_response": torch.tensor(terminal),
        "state_depth": torch.tensor([len(prefix) for prefix in prefixes]),
        "responses": padded_tokens,
        "response_states": padded_states,
        "response_lengths": lengths,
        "response_mask": mask,
    }


class PrefixPolicy(nn.Module):
    """Tabular softmax policy over (prompt, response prefix) states with exact enumeration.

    Args:
        num_prompts: P, the number of prompts (prompts are indices 0..P-1).
        vocab_size: V >= 2 response tokens, EOS included.
        max_length: L >= 1, the maximal response length (responses are truncated after it).
        eos_id: the EOS token in [0, V).
        pad_id: filler after the end of a response in token tensors (masked out there).
        init_std: standard deviation of the initial logits (0: uniform policy).
        generator: source of the initial logits when ``init_std > 0``.
        dtype: dtype of the logits; float64 by default so that exact identities hold tightly.
    """

    def __init__(
        self,
        num_prompts: int,
        vocab_size: int,
        max_length: int,
        eos_id: int = 0,
        pad_id: int = 0,
        init_std: float = 0.0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("num_prompts", num_prompts, 1),
            ("vocab_size", vocab_size, 2),
            ("max_length", max_length, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"PrefixPolicy: {name} must be an int >= {low}, got {value!r}")
        if not 0 <= eos_id < vocab_size:
            raise ValueError(f"PrefixPolicy: eos_id must be in [0, {vocab_size}), got {eos_id}")
        if init_std < 0:
            raise ValueError(f"PrefixPolicy: init_std must be >= 0, got {init_std}")
        P, V, L, K = num_prompts, vocab_size, max_length, vocab_size - 1
        self.num_prompts, self.vocab_size, self.max_length = P, V, L
        self.eos_id, self.pad_id = eos_id, pad_id
        self.level_sizes = [K**t for t in range(L)]  # states per depth
        self.level_starts = [sum(self.level_sizes[:t]) for t in range(L + 1)]
        self.num_states = S = self.level_starts[L]
        self.num_responses = R = S + K**L
        if P * S * V > MAX_TABLE_ENTRIES or R * L > MAX_TABLE_ENTRIES:
            raise ValueError(
                f"PrefixPolicy: P={P}, V={V}, L={L} gives {P * S * V} logits and {R} responses; "
                f"at most {MAX_TABLE_ENTRIES} table entries are allowed (use tiny V and L)"
            )

        logits = torch.zeros(P, S, V, dtype=dtype)
        if init_std > 0:
            logits = init_std * torch.randn(P, S, V, generator=generator, dtype=dtype)
        self.logits = nn.Parameter(logits)

        tables = _prefix_tables(V, L, eos_id, pad_id, self.level_starts)
        for name, value in tables.items():
            self.register_buffer(name, value, persistent=False)

    # ----- exact distributions -------------------------------------------------------------

    def _logits(self, logits: torch.Tensor | None) -> torch.Tensor:
        if logits is None:
            return self.logits
        if logits.shape != self.logits.shape:
            raise ValueError(
                f"PrefixPolicy: logits must have shape {tuple(self.logits.shape)}, "
                f"got {tuple(logits.shape)}"
            )
        return logits

    def reach_probs(self, logits: torch.Tensor | None = None) -> torch.Tensor:
        """d(p, s): probability that a response to prompt p passes through state s. (P, S)."""
        probs = torch.softmax(self._logits(logits), dim=-1)  # (P, S, V)
        P = probs.shape[0]
        levels = [probs.new_ones(P, 1)]
        for t in range(self.max_length - 1):
            start, end = self.level_starts[t], self.level_starts[t + 1]
            go_on = probs[:, start:end][:, :, self.non_eos]  # (P, S_t, V-1)
            levels.append((levels[-1][:, :, None] * go_on).reshape(P, -1))  # (P, S_{t+1})
        return torch.cat(levels, dim=1)

    def response_probs(self, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Probability of every enumerated complete response given its prompt. (P, R)."""
        logits = self._logits(logits)
        probs = torch.softmax(logits, dim=-1)  # (P, S, V)
        reach = self.reach_probs(logits)  # (P, S)
        last = self.level_starts[self.max_length - 1]
        ended = reach * probs[:, :, self.eos_id]  # (P, S)
        truncated = reach[:, last:, None] * probs[:, last:][:, :, self.non_eos]  # (P, S_L-1, V-1)
        return torch.cat([ended, truncated.reshape(probs.shape[0], -1)], dim=1)

    def state_entropy(self, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Full-distribution entropy H(pi(.|p, s)) of every state, in nats. (P, S)."""
        return entropy_from_logits(self._logits(logits))

    def state_weights(
        self, mode: str = "response-mean", logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Visitation weights w(p, s) with ``H(pi, D) = sum w * state_entropy``. (P, S).

        See the module docstring for the two modes; the weights sum to 1.
        """
        if mode not in ENTROPY_MODES:
            raise ValueError(f"PrefixPolicy: mode must be one of {ENTROPY_MODES}, got {mode!r}")
        logits = self._logits(logits)
        if mode == "token-mean":
            reach = self.reach_probs(logits)  # (P, S)
            return reach / reach.sum()
        per_response = self.response_probs(logits) / self.response_lengths  # (P, R)
        # Every response adds P(y)/|y| to each state it passes through.
        weights = per_response.new_zeros(per_response.shape[0], self.num_states)
        states = self.response_states[self.response_mask]  # (n_tokens,)
        rows = self.response_mask.nonzero()[:, 0]  # (n_tokens,) response of each token
        weights.index_add_(1, states, per_response[:, rows])
        return weights / per_response.shape[0]

    def entropy(
        self, mode: str = "response-mean", logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Exact dataset entropy H(pi, D) in nats (scalar); ``mode`` as in :meth:`state_weights`."""
        logits = self._logits(logits)
        return (self.state_weights(mode, logits) * self.state_entropy(logits)).sum()

    # ----- rewards and exact updates -------------------------------------------------------

    def reward_table(self, reward_fn: Callable[[int, tuple[int, ...]], float]) -> torch.Tensor:
        """Rewards (P, R) of all enumerated responses, ``reward_fn(prompt_index, tokens)``.

        ``tokens`` is the response as a tuple of ints, EOS included when it ended with EOS.
        """
        lengths = self.response_lengths.tolist()
        rows = [tuple(y[:n]) for y, n in zip(self.responses.tolist(), lengths, strict=True)]
        table = [[float(reward_fn(p, y)) for y in rows] for p in range(self.num_prompts)]
        return torch.tensor(table, dtype=self.logits.dtype, device=self.logits.device)

    def _reward_tensor(self, rewards: RewardSpec) -> torch.Tensor:
        if callable(rewards):
            return self.reward_table(rewards)
        shape = (self.num_prompts, self.num_responses)
        if not isinstance(rewards, torch.Tensor) or rewards.shape != shape:
            got = tuple(rewards.shape) if isinstance(rewards, torch.Tensor) else type(rewards)
            raise ValueError(
                f"PrefixPolicy: rewards must be a {shape} tensor or a callable, got {got}"
            )
        return rewards.to(self.logits.dtype)

    def expected_reward(
        self, rewards: RewardSpec, logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Exact J = mean over prompts of E_{y ~ pi(.|p)} r(p, y) (scalar tensor).

        Differentiable with respect to :attr:`logits` when ``logits`` is None.
        """
        r = self._reward_tensor(rewards)  # (P, R)
        return (self.response_probs(logits) * r).sum(dim=1).mean()

    @torch.no_grad()
    def pass_at_k(
        self, rewards: RewardSpec, ks, logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Exact pass@k: mean over prompts of ``1 - (1 - p_correct)^k``, for each k in ``ks``.

        ``p_correct(p)`` is the exact probability that a response to prompt p is correct
        (reward > 0), from the enumerated response probabilities; no sampling is involved.

        Returns:
            ``(K,)`` float64 tensor, one value in [0, 1] per k (k >= 1 integers).
        """
        ks = torch.as_tensor(ks, dtype=torch.float64).reshape(-1)  # (K,)
        if ks.numel() == 0 or not bool((ks >= 1).all()) or not bool((ks == ks.round()).all()):
            raise ValueError(f"PrefixPolicy.pass_at_k: ks must be integers >= 1, got {ks.tolist()}")
        correct = (self._reward_tensor(rewards) > 0).to(torch.float64)  # (P, R)
        p_correct = (self.response_probs(logits).double() * correct).sum(dim=1).clamp(0, 1)  # (P,)
        miss = (1 - p_correct)[:, None] ** ks[None, :]  # (P, K)
        return (1 - miss).mean(dim=0)

    @torch.no_grad()
    def action_values(
        self, rewards: RewardSpec, logits: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact Q(p, s, a) (P, S, V) and V(p, s) = E_{a ~ pi} Q (P, S) of the expected reward.

        Q of a terminal (state, action) is the reward of that response; otherwise it is the
        value of the child state. Not differentiable (computed level by level in place).
        """
        r = self._reward_tensor(rewards)  # (P, R)
        probs = torch.softmax(self._logits(logits), dim=-1)  # (P, S, V)
        q_values = r[:, self.terminal_response.clamp(min=0)]  # (P, S, V); non-terminal: below
        values = torch.empty_like(probs[..., 0])  # (P, S)
        for t in reversed(range(self.max_length)):
            start, end = self.level_starts[t], self.level_starts[t + 1]
            if t + 1 < self.max_length:
                child_values = values[:, end : self.level_starts[t + 2]]  # (P, S_{t+1})
                q_values[:, start:end, self.non_eos] = child_values.reshape(
                    probs.shape[0], end - start, -1
                )
            values[:, start:end] = (probs[:, start:end] * q_values[:, start:end]).sum(-1)
        return q_values, values

    def expected_update(
        self, rewards: RewardSpec, step_size: float, rule: str = "pg"
    ) -> torch.Tensor:
        """Exact expected logit update dz (P, S, V) of one policy-gradient step.

        - ``"pg"`` (plain policy gradient):
          ``dz = eta * dJ/dz = eta * d(p, s) / P * pi(a|s) * (Q(s, a) - V(s))``, the true
          gradient of :meth:`expected_reward` (d = :meth:`reach_probs`);
        - ``"npg"``: ``dz = eta * (Q(s, a) - V(s))``, the natural gradient of J for a tabular
          softmax (the Fisher matrix carries the same d(p, s) / P, which cancels).
        """
        if rule not in UPDATE_RULES:
            raise ValueError(f"PrefixPolicy: rule must be one of {UPDATE_RULES}, got {rule!r}")
        with torch.no_grad():
            logits = self.logits
            q_values, _ = self.action_values(rewards, logits)
            if rule == "npg":
                return npg_logit_update(logits, q_values, step_size)
            scale = self.reach_probs(logits)[..., None] / self.num_prompts  # (P, S, 1)
            return scale * pg_logit_update(logits, q_values, step_size)

    def sampled_update(
        self,
        rewards: RewardSpec,
        step_size: float,
        group_size: int,
        generator: torch.Generator | None = None,
        estimator: str = "rloo",
    ) -> torch.Tensor:
        """Monte-Carlo estimate (P, S, V) of the ``"pg"`` update from G responses per prompt.

        ``dz = eta / (P G) * sum_{p, g} A_{p,g} * grad_z log pi(y_{p,g} | p)`` with
        ``A = r`` (``"reinforce"``) or ``A = r - mean of the other G-1 rewards`` (``"rloo"``,
        needs G >= 2); both are unbiased for ``expected_update(rule="pg")``.
        """
        if estimator not in ESTIMATORS:
            raise ValueError(
                f"PrefixPolicy: estimator must be one of {ESTIMATORS}, got {estimator!r}"
            )
        min_group = 2 if estimator == "rloo" else 1
        if not isinstance(group_size, int) or group_size < min_group:
            raise ValueError(
                f"PrefixPolicy: group_size must be an int >= {min_group} for {estimator!r}, "
                f"got {group_size!r}"
            )
        r = self._reward_tensor(rewards)  # (P, R)
        P, G = self.num_prompts, group_size
        prompts = torch.arange(P, device=r.device).repeat_interleave(G)  # (P*G,)
        index = self._sample_response_indices(prompts, generator)  # (P*G,)
        sampled_rewards = r[prompts, index].view(P, G)
        advantages = sampled_rewards
        if estimator == "rloo":
            others = (sampled_rewards.sum(dim=1, keepdim=True) - sampled_rewards) / (G - 1)
            advantages = sampled_rewards - others  # (P, G)
        logits = self.logits.detach().requires_grad_()
        token_log_probs = self._token_log_probs(logits, prompts, index)  # (P*G, L)
        surrogate = (advantages.reshape(-1) * token_log_probs.sum(dim=1)).sum() / (P * G)
        (grad,) = torch.autograd.grad(surrogate, logits)
        return step_size * grad

    @torch.no_grad()
    def apply_update(self, logit_change: torch.Tensor) -> None:
        """Add ``logit_change`` (P, S, V) to the logits in place."""
        self.logits.add_(self._logits(logit_change))

    @torch.no_grad()
    def entropy_change_split(
        self, logit_change: torch.Tensor, mode: str = "response-mean"
    ) -> EntropyChangeSplit:
        """Exact entropy change of the update ``z -> z + logit_change`` and its parts.

        The policy itself is not changed. See :class:`EntropyChangeSplit`.
        """
        old = self.logits
        new = old + self._logits(logit_change)
        w_old, w_new = self.state_weights(mode, old), self.state_weights(mode, new)  # (P, S)
        h_old, h_new = self.state_entropy(old), self.state_entropy(new)  # (P, S)
        first_order = (w_old * predicted_entropy_change(old, logit_change)).sum()
        return EntropyChangeSplit(
            total=float((w_new * h_new).sum() - (w_old * h_old).sum()),
            per_state=float((w_old * (h_new - h_old)).sum()),
            distribution_shift=float(((w_new - w_old) * h_new).sum()),
            first_order=float(first_order),
        )

    # ----- sampling and scoring like a language model --------------------------------------

    def _check_prompts(self, prompt_indices: torch.Tensor) -> None:
        if prompt_indices.dim() != 1 or prompt_indices.dtype != torch.long:
            raise ValueError(
                "PrefixPolicy: prompt_indices must be a (B,) long tensor, got "
                f"{tuple(prompt_indices.shape)} {prompt_indices.dtype}"
            )
        if prompt_indices.numel() and not (
            0 <= int(prompt_indices.min()) and int(prompt_indices.max()) < self.num_prompts
        ):
            raise ValueError(
                f"PrefixPolicy: prompt_indices must lie in [0, {self.num_prompts}), got "
                f"[{int(prompt_indices.min())}, {int(prompt_indices.max())}]"
            )

    @torch.no_grad()
    def _sample_response_indices(
        self, prompt_indices: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Indices (B,) into the enumeration of responses sampled for ``prompt_indices`` (B,)."""
        return sample_categorical(self.response_probs()[prompt_indices], generator)

    def _token_log_probs(
        self, logits: torch.Tensor, prompt_indices: torch.Tensor, response_index: torch.Tensor
    ) -> torch.Tensor:
        """log pi of every token (B, L) of enumerated responses, 0 after their end."""
        log_probs = torch.log_softmax(logits, dim=-1)  # (P, S, V)
        states = self.response_states[response_index]  # (B, L)
        tokens = self.responses[response_index].clamp(0, self.vocab_size - 1)  # (B, L), pad ok
        per_token = log_probs[prompt_indices[:, None], states, tokens]  # (B, L)
        return per_token * self.response_mask[response_index]

    def sample(
        self,
        prompt_indices: torch.Tensor,
        generator: torch.Generator | None = None,
        return_log_probs: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """Sample one response per entry of ``prompt_indices`` (B,), like ``GPT.generate``.

        Returns ``responses`` (B, L) long (``pad_id`` after the end), ``response_mask``
        (B, L) bool (1 up to and including EOS) and, with ``return_log_probs``, the (B, L)
        log-probs of the sampled tokens (0 where masked).
        """
        self._check_prompts(prompt_indices)
        index = self._sample_response_indices(prompt_indices, generator)  # (B,)
        out = (self.responses[index], self.response_mask[index])
        if return_log_probs:
            with torch.no_grad():
                out += (self._token_log_probs(self.logits, prompt_indices, index),)
        return out

    def logits_for(
        self,
        prompt_indices: torch.Tensor,
        responses: torch.Tensor,
        response_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits (B, T, V) at every response position, differentiable.

        ``logits[b, t]`` are the logits of the state (prompt_indices[b], responses[b, :t]),
        from which ``responses[b, t]`` was drawn: plug them into the same loss code as the
        transformer's. Positions outside ``response_mask`` (default: up to and including the
        first EOS, at most L) get the root state's logits.

        Args:
            prompt_indices: (B,) long in [0, P).
            responses: (B, T) long with T <= L.
            response_mask: (B, T) 1 for valid positions; must be a prefix of each row that
                ends at EOS or at position L.
        """
        self._check_prompts(prompt_indices)
        B, T = responses.shape if responses.dim() == 2 else (-1, -1)
        if responses.dim() != 2 or B != prompt_indices.shape[0] or T > self.max_length:
            raise ValueError(
                f"PrefixPolicy: responses must be ({prompt_indices.shape[0]}, T <= "
                f"{self.max_length}), got {tuple(responses.shape)}"
            )
        is_eos = responses == self.eos_id  # (B, T)
        if response_mask is None:
            ended_before = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
            response_mask = ~ended_before
        response_mask = response_mask.bool()
        if response_mask.shape != responses.shape or bool(
            (response_mask[:, 1:] & ~response_mask[:, :-1]).any()
        ):
            raise ValueError(
                "PrefixPolicy: response_mask must have the shape of responses "
                f"{tuple(responses.shape)} and be a prefix (1s then 0s) of every row"
            )
        tokens = torch.where(response_mask, responses, self.non_eos[0])  # (B, T)
        if tokens.min() < 0 or tokens.max() >= self.vocab_size:
            raise ValueError(
                f"PrefixPolicy: response tokens must lie in [0, {self.vocab_size}), got "
                f"[{int(tokens.min())}, {int(tokens.max())}]"
            )
        states = torch.zeros_like(tokens)  # (B, T), the root for t = 0
        for t in range(1, T):
            nxt = self.child[states[:, t - 1], tokens[:, t - 1]]  # (B,), -1 after an end
            if bool((response_mask[:, t] & (nxt < 0)).any()):
                raise ValueError(
                    "PrefixPolicy: response_mask marks a position after the end of a response"
                )
            states[:, t] = nxt.clamp(min=0)
        states = torch.where(response_mask, states, 0)
        return self.logits[prompt_indices[:, None], states]  # (B, T, V)
