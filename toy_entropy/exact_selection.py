"""Noise-free Clip-Cov and KL-Cov: the expected selection and update of a tabular prefix policy.

For a :class:`~toy_entropy.prefix_policy.PrefixPolicy` every response is enumerated, so the
batch of the limit of infinitely many sampled responses is known exactly: every token (prompt
p, response r, position t) is an atom of token-mean weight ``w = P(r|p) / sum P(r'|p')|r'|``
over the prompts the group filter keeps (the prompts whose rewards are not all equal), with the
sampled token's log-prob ``lp`` and the exact GRPO advantage ``A = (R - mu_p) / (sigma_p +
1e-6)`` (mu, sigma: the mean and std of the reward under pi(.|p)). The token covariance of the
algorithms (THEORY.md s.4) is ``cov = (lp - E_w lp)(A - E_w A)``, and a selection rule becomes
the expected fraction of each atom's gradient that it keeps:

- Clip-Cov (r, lb, ub): atoms with ``lb < cov < ub`` are candidates; ``n = r N`` of the N
  tokens are removed uniformly among the candidates, so each candidate loses a share
  ``min(1, r / m)`` of its gradient, m the candidates' weight;
- KL-Cov (k), in its strong-penalty limit: the top weight k of the atoms by covariance is
  held at its rollout log-prob, i.e. keeps no policy gradient (the atom at the boundary keeps
  the rest of its weight). With beta = 1 and |A| > 1 the real penalty holds less; this is the
  limit that isolates what the selection itself does.

The expected update of the token-mean surrogate ``sum_i w_i keep_i A_i log pi(y_i | s_i)`` is,
per state s and action a, with ``M(s, a) = sum_{i at (s, a)} w_i keep_i A_i`` and
``D(s, a) = sum_{i at (s, a)} w_i``: ``dz = eta (M - pi sum_b M(s, b))`` (rule "pg", the plain
gradient) or ``dz = eta M / D`` (rule "npg", the natural gradient of a tabular softmax: the kept
advantage expected at (s, a); without selection, the normalised ``Q(s, a) - mu_p``). No
sampling noise enters anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from toy_entropy.losses.diagnostics import COV_TOP_FRACTIONS
from toy_entropy.prefix_policy import PrefixPolicy

__all__ = [
    "exact_group_advantages",
    "TokenTable",
    "token_table",
    "top_mass",
    "tail_statistics",
    "keep_fraction",
    "expected_logit_update",
    "expected_run",
    "SELECTIONS",
]

SELECTIONS = ("none", "clip_cov", "kl_cov")
STD_EPS = 1e-6  # as compute_advantages("grpo")


@dataclass(frozen=True)
class TokenTable:
    """The exact token batch: one entry per (prompt, response, position) atom, all ``(n,)``.

    Attributes:
        atom: ``p * S * V + s * V + a``, the (prompt, state, action) of the token.
        weight: token-mean weight (sums to 1 over the kept prompts; 0 on filtered ones).
        log_prob: log pi of the token at its state.
        advantage: the exact GRPO advantage of its response.
        cov: ``(lp - E_w lp) * (A - E_w A)``.
    """

    atom: torch.Tensor
    weight: torch.Tensor
    log_prob: torch.Tensor
    advantage: torch.Tensor
    cov: torch.Tensor


@torch.no_grad()
def exact_group_advantages(
    probs: torch.Tensor, rewards: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO advantages of infinitely many samples per prompt.

    Args:
        probs: ``(P, R)`` probability of every enumerated response given its prompt.
        rewards: ``(P, R)`` its reward.

    Returns:
        ``(advantage, kept)``: ``(P, R)`` ``(r - mu_p) / (sigma_p + 1e-6)`` with the mean and
        std of the reward under pi(.|p), and ``(P, 1)`` 0/1 in ``probs.dtype``, 0 for the prompts
        the all-equal group filter drops (sigma_p = 0).
    """
    rewards = rewards.to(probs.dtype)
    mean = (probs * rewards).sum(dim=1, keepdim=True)  # (P, 1)
    std = (probs * (rewards - mean) ** 2).sum(dim=1, keepdim=True).sqrt()  # (P, 1)
    kept = (std > 1e-12).to(probs.dtype)  # (P, 1): the all-equal group filter's limit
    return (rewards - mean) / (std + STD_EPS), kept


@torch.no_grad()
def token_table(
    policy: PrefixPolicy, rewards: torch.Tensor, current_logits: torch.Tensor | None = None
) -> TokenTable:
    """The exact token batch of ``policy`` under ``rewards`` (P, R), see the module docstring.

    ``current_logits`` (P, S, V): the log-probs (and so the covariance) are those of this
    policy while the batch (weights, advantages) is the rollout policy's, as on the later
    updates of a rollout; None: the policy's own logits (on-policy).

    Raises:
        ValueError: every prompt's rewards are constant under the policy (nothing to learn).
    """
    P, S, V = policy.logits.shape
    probs = policy.response_probs()  # (P, R)
    advantage, kept = exact_group_advantages(probs, rewards)  # (P, R), (P, 1)
    if not kept.any():
        raise ValueError("token_table: every prompt has a constant reward; nothing to learn")
    mask = policy.response_mask  # (R, L)
    lengths = policy.response_lengths.to(probs.dtype)  # (R,)
    norm = (probs * kept * lengths).sum()
    logits = policy.logits if current_logits is None else current_logits
    flat_log_probs = torch.log_softmax(logits, dim=-1).reshape(P, S * V)  # (P, S*V)
    index = policy.response_states * V + policy.responses.clamp(min=0)  # (R, L)
    log_prob = flat_log_probs[:, index]  # (P, R, L)
    weight = (probs * kept / norm)[:, :, None].expand(-1, -1, mask.shape[1])  # (P, R, L)
    atom = torch.arange(P, device=index.device)[:, None, None] * (S * V) + index  # (P, R, L)
    valid = mask.expand(P, -1, -1)  # (P, R, L)
    weight, log_prob, atom = weight[valid], log_prob[valid], atom[valid]  # (n,)
    advantage = advantage[:, :, None].expand(-1, -1, mask.shape[1])[valid]  # (n,)
    lp_mean, a_mean = (weight * log_prob).sum(), (weight * advantage).sum()
    cov = (log_prob - lp_mean) * (advantage - a_mean)
    return TokenTable(atom, weight, log_prob, advantage, cov)


def _sorted_by_cov(table: TokenTable) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Atoms with weight, by descending covariance: order (m,), weights (m,), mass before (m,)."""
    order = torch.argsort(table.cov, descending=True, stable=True)
    weight = table.weight[order]
    before = torch.cumsum(weight, dim=0) - weight
    return order, weight, before


def top_mass(table: TokenTable, fraction: float) -> torch.Tensor:
    """(n,) share of each atom's weight inside the top ``fraction`` of the weight by covariance
    (1 for atoms wholly inside, a part for the one at the boundary, 0 below)."""
    order, weight, before = _sorted_by_cov(table)
    share = ((fraction - before) / weight.clamp(min=1e-300)).clamp(0.0, 1.0)
    share = torch.where(weight > 0, share, 0.0)
    return torch.zeros_like(share).scatter_(0, order, share)


def tail_statistics(
    table: TokenTable, fractions: Sequence[float] = COV_TOP_FRACTIONS
) -> dict[str, float]:
    """The Table-1 statistics of the exact batch: ``mean``, ``top_<q>%_mean``,
    ``top_<q>%_share`` (of the positive covariance) and ``tail_ratio`` (smallest q)."""
    w, cov = table.weight, table.cov
    positive = (w * cov.clamp(min=0)).sum()
    stats = {"mean": float((w * cov).sum())}
    for q in fractions:
        inside = top_mass(table, q) * w  # (n,) weight inside the top q
        stats[f"top_{100 * q:g}%_mean"] = float((inside * cov).sum() / inside.sum())
        stats[f"top_{100 * q:g}%_share"] = float((inside * cov.clamp(min=0)).sum() / positive)
    stats["tail_ratio"] = stats[f"top_{100 * min(fractions):g}%_mean"] / stats["mean"]
    return stats


def keep_fraction(
    table: TokenTable,
    selection: str,
    ratio: float = 0.0,
    lower: float = 1.0,
    upper: float = 5.0,
) -> torch.Tensor:
    """(n,) expected share of each atom's policy gradient that ``selection`` keeps.

    Args:
        table: the exact batch.
        selection: ``"none"``, ``"clip_cov"`` (r = ``ratio``, candidates in (lower, upper)) or
            ``"kl_cov"`` (k = ``ratio``, strong-penalty limit).
        ratio: r or k, a fraction of the tokens in [0, 1].
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be a fraction in [0, 1], got {ratio}")
    if selection == "none":
        return torch.ones_like(table.weight)
    if selection == "kl_cov":
        return 1.0 - top_mass(table, ratio)
    candidate = (table.cov > lower) & (table.cov < upper) & (table.weight > 0)  # (n,)
    mass = (table.weight * candidate).sum()
    removed = (ratio / mass).clamp(max=1.0) if mass > 0 else mass
    return torch.where(candidate, 1.0 - removed, 1.0)


@torch.no_grad()
def expected_logit_update(
    policy: PrefixPolicy,
    table: TokenTable,
    keep: torch.Tensor,
    step_size: float,
    rule: str = "npg",
) -> torch.Tensor:
    """The exact expected logit change (P, S, V) of one step on the kept token surrogate.

    Args:
        policy: the policy the table was made from.
        table: its exact batch.
        keep: (n,) share of each atom's gradient kept (:func:`keep_fraction`).
        step_size: eta.
        rule: ``"npg"`` (``eta M / D``) or ``"pg"`` (``eta (M - pi sum_b M)``, plain gradient).
    """
    shape = policy.logits.shape  # (P, S, V)
    size = shape.numel()
    M = torch.zeros(size, dtype=table.weight.dtype, device=table.weight.device)
    M.index_add_(0, table.atom, table.weight * keep * table.advantage)
    if rule == "npg":
        D = torch.zeros_like(M).index_add_(0, table.atom, table.weight)
        dz = torch.where(D > 0, M / D.clamp(min=1e-300), 0.0)
        return step_size * dz.view(shape)
    if rule == "pg":
        M = M.view(shape)
        pi = torch.softmax(policy.logits, dim=-1)
        return step_size * (M - pi * M.sum(dim=-1, keepdim=True))
    raise ValueError(f"rule must be 'npg' or 'pg', got {rule!r}")


@torch.no_grad()
def expected_run(
    policy: PrefixPolicy,
    rewards: torch.Tensor,
    selection: str,
    ratio: float,
    steps: int,
    step_size: float,
    rule: str = "npg",
) -> dict[str, list[float]]:
    """``steps`` exact expected updates from the policy's current logits (restored after).

    Returns per-step lists (``steps + 1`` entries, the start included) of ``entropy`` (nats,
    response-mean H(pi, D)), ``reward`` (expected), ``cov_mean`` and ``removed`` (the weight
    whose gradient the selection removes; 0 at the last entry).
    """
    start = policy.logits.detach().clone()
    curves: dict[str, list[float]] = {"entropy": [], "reward": [], "cov_mean": [], "removed": []}
    try:
        for step in range(steps + 1):
            curves["entropy"].append(float(policy.entropy()))
            curves["reward"].append(float(policy.expected_reward(rewards)))
            try:
                table = token_table(policy, rewards)
            except ValueError:  # every prompt's reward is constant: the filter leaves nothing
                table = None
            curves["cov_mean"].append(
                0.0 if table is None else float((table.weight * table.cov).sum())
            )
            if step == steps or table is None:
                curves["removed"].append(0.0)
                continue
            keep = keep_fraction(table, selection, ratio)
            curves["removed"].append(float((table.weight * (1.0 - keep)).sum()))
            policy.apply_update(expected_logit_update(policy, table, keep, step_size, rule))
    finally:
        policy.logits.copy_(start)
    return curves
