"""Noise-free Clip-Cov and KL-Cov: the expected selection and update of a tabular prefix policy.

For a :class:`~toy_entropy.models.prefix_policy.PrefixPolicy` every response is enumerated, so the
batch of the limit of infinitely many sampled responses is known exactly: every token (prompt
p, response r, position t) is an atom of token-mean weight ``w = P(r|p) / sum P(r'|p')|r'|``
over the prompts the group filter keeps (the prompts whose rewards are not all equal), with the
sampled token's log-prob ``lp`` and the exact GRPO advantage ``A = (R - mu_p) / (sigma_p +
1e-6)`` (mu, sigma: the mean and std of the reward under pi(.|p)). The token covariance of the
algorithms (THEORY.md s.4) is ``cov = (lp - E_w lp)(A - E_w A)``, and a selection rule becomes
the expected fraction of each atom's gradient that it keeps:

- Clip-Cov (r, lb, ub): atoms with ``lb < cov < ub`` are candidates (either bound may be
  infinite); ``n = r N`` of the N tokens are removed among the candidates: uniformly at random
  (the reference code), so each candidate loses a share ``min(1, r / m)`` of its gradient, m
  the candidates' weight, or (``candidates="top"``) the candidates of largest covariance,
  the top weight r of them;
- KL-Cov (k), in its strong-penalty limit: the top weight k of the atoms by covariance is
  held at its rollout log-prob, i.e. keeps no policy gradient (the atom at the boundary keeps
  the rest of its weight). With beta = 1 and |A| > 1 the real penalty holds less; this is the
  limit that isolates what the selection itself does.

The covariance that ranks the tokens is Theorem 2's ``Cov(log pi, A)`` (``score="natural"``,
what the algorithms use) or Theorem 1's ``Cov(log pi, pi A)`` (``score="vanilla"``, the
covariance that drives the entropy change of a plain policy-gradient step), per token
``(lp - E_w lp)(p A - E_w[p A])`` with ``p = exp(lp)`` (:func:`with_score`).

The expected update of the token-mean surrogate ``sum_i w_i keep_i A_i log pi(y_i | s_i)`` is,
per state s and action a, with ``M(s, a) = sum_{i at (s, a)} w_i keep_i A_i`` and
``D(s, a) = sum_{i at (s, a)} w_i``: ``dz = eta (M - pi sum_b M(s, b))`` (rule "pg", the plain
gradient) or ``dz = eta M / D`` (rule "npg", the natural gradient of a tabular softmax: the kept
advantage expected at (s, a); without selection, the normalised ``Q(s, a) - mu_p``). No
sampling noise enters anywhere.

Several updates per rollout (:func:`expected_run`'s ``updates_per_rollout``) keep the rollout's
weights and advantages and move the policy away from it: the surrogate's token terms carry the
importance ratio ``rho = pi / pi_rollout``, PPO's clip drops the tokens it holds, and the
selection ranks by the covariance under the current policy. The plain gradient is then
``eta (c - pi sum_b c)`` with ``c(s, a) = sum w keep A rho``; the natural gradient (Fisher of
the current policy at the rollout's state weights ``D(s)``) is ``c / (D(s) pi(a|s))``, and
since ``D(s, a) = D(s) pi_rollout(a|s)`` the ratio cancels: it stays ``eta M / D``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from toy_entropy.algorithms.losses.diagnostics import COV_TOP_FRACTIONS
from toy_entropy.models.prefix_policy import PrefixPolicy

__all__ = [
    "exact_group_advantages",
    "TokenTable",
    "token_table",
    "top_mass",
    "tail_statistics",
    "keep_fraction",
    "expected_logit_update",
    "expected_run",
    "with_score",
    "entropy_bonus_update",
    "optimum_distance",
    "refreshed",
    "ppo_clip_keep",
    "SELECTIONS",
    "CANDIDATE_RULES",
    "SCORES",
    "ADVANTAGES",
]

SELECTIONS = ("none", "clip_cov", "kl_cov")
CANDIDATE_RULES = ("random", "top")
"""How Clip-Cov picks its r N tokens among the candidates: uniformly, or largest covariance."""
SCORES = ("natural", "vanilla")
"""The covariance that ranks tokens: Theorem 2 (natural PG) or Theorem 1 (vanilla PG)."""
STD_EPS = 1e-6  # as compute_advantages("grpo")
ADVANTAGES = ("grpo", "dr_grpo")


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
    probs: torch.Tensor, rewards: torch.Tensor, advantage: str = "grpo"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group advantages of infinitely many samples per prompt.

    Args:
        probs: ``(P, R)`` probability of every enumerated response given its prompt.
        rewards: ``(P, R)`` its reward.
        advantage: ``"grpo"``: ``(r - mu_p) / (sigma_p + 1e-6)``; ``"dr_grpo"``: ``r - mu_p``
            (no std normalisation: the gradient of the plain expected reward), with the mean
            and std of the reward under pi(.|p).

    Returns:
        ``(advantage, kept)``: ``(P, R)`` advantages and ``(P, 1)`` 0/1 in ``probs.dtype``, 0
        for the prompts the all-equal group filter drops (sigma_p = 0).
    """
    if advantage not in ADVANTAGES:
        raise ValueError(f"advantage must be one of {ADVANTAGES}, got {advantage!r}")
    rewards = rewards.to(probs.dtype)
    mean = (probs * rewards).sum(dim=1, keepdim=True)  # (P, 1)
    std = (probs * (rewards - mean) ** 2).sum(dim=1, keepdim=True).sqrt()  # (P, 1)
    kept = (std > 1e-12).to(probs.dtype)  # (P, 1): the all-equal group filter's limit
    centred = rewards - mean  # (P, R)
    return (centred / (std + STD_EPS) if advantage == "grpo" else centred), kept


@torch.no_grad()
def token_table(
    policy: PrefixPolicy,
    rewards: torch.Tensor,
    advantage: str = "grpo",
    current_logits: torch.Tensor | None = None,
) -> TokenTable:
    """The exact token batch of ``policy`` under ``rewards`` (P, R), see the module docstring.

    ``advantage``: as in :func:`exact_group_advantages`. ``current_logits`` (P, S, V): the
    log-probs (and so the covariance) are those of this policy while the batch (weights,
    advantages) is the rollout policy's, as on the later updates of a rollout; None: the
    policy's own logits (on-policy).

    Raises:
        ValueError: every prompt's rewards are constant under the policy (nothing to learn).
    """
    P, S, V = policy.logits.shape
    probs = policy.response_probs()  # (P, R)
    advantages, kept = exact_group_advantages(probs, rewards, advantage)  # (P, R), (P, 1)
    if not kept.any():
        raise ValueError("token_table: every prompt has a constant reward; nothing to learn")
    mask = policy.response_mask  # (R, L)
    lengths = policy.response_lengths.to(probs.dtype)  # (R,)
    norm = (probs * kept * lengths).sum()
    flat_log_probs = torch.log_softmax(policy.logits, dim=-1).reshape(P, S * V)  # (P, S*V)
    index = policy.response_states * V + policy.responses.clamp(min=0)  # (R, L)
    log_prob = flat_log_probs[:, index]  # (P, R, L)
    weight = (probs * kept / norm)[:, :, None].expand(-1, -1, mask.shape[1])  # (P, R, L)
    atom = torch.arange(P, device=index.device)[:, None, None] * (S * V) + index  # (P, R, L)
    valid = mask.expand(P, -1, -1)  # (P, R, L)
    weight, log_prob, atom = weight[valid], log_prob[valid], atom[valid]  # (n,)
    token_advantage = advantages[:, :, None].expand(-1, -1, mask.shape[1])[valid]  # (n,)
    table = TokenTable(
        atom, weight, log_prob, token_advantage, _token_cov(weight, log_prob, token_advantage)
    )
    return table if current_logits is None else refreshed(table, current_logits)


def _token_cov(
    weight: torch.Tensor, log_prob: torch.Tensor, advantage: torch.Tensor
) -> torch.Tensor:
    """(n,) ``(lp - E_w lp)(A - E_w A)``, the algorithms' token covariance."""
    return (log_prob - (weight * log_prob).sum()) * (advantage - (weight * advantage).sum())


def with_score(table: TokenTable, score: str) -> TokenTable:
    """The table with ``cov`` replaced by the covariance named ``score`` (see :data:`SCORES`).

    ``"natural"``: Theorem 2, ``(lp - E_w lp)(A - E_w A)``, the table as it is.
    ``"vanilla"``: Theorem 1, ``(lp - E_w lp)(p A - E_w[p A])`` with ``p = exp(lp)`` the
    probability of the token at its state (unit: nats x advantage, like ``cov``).
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if score == "natural":
        return table
    w, lp = table.weight, table.log_prob
    scaled = lp.exp() * table.advantage  # (n,) pi * A
    cov = (lp - (w * lp).sum()) * (scaled - (w * scaled).sum())  # (n,)
    return replace(table, cov=cov)


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
    candidates: str = "random",
) -> torch.Tensor:
    """(n,) expected share of each atom's policy gradient that ``selection`` keeps.

    Args:
        table: the exact batch (its ``cov`` ranks the tokens; see :func:`with_score`).
        selection: ``"none"``, ``"clip_cov"`` (r = ``ratio``, candidates in (lower, upper)) or
            ``"kl_cov"`` (k = ``ratio``, strong-penalty limit).
        ratio: r or k, a fraction of the tokens in [0, 1].
        lower, upper: Clip-Cov's covariance band, open; ``-inf`` / ``inf`` drop a bound.
        candidates: Clip-Cov's pick among the candidates, ``"random"`` or ``"top"``.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be a fraction in [0, 1], got {ratio}")
    if candidates not in CANDIDATE_RULES:
        raise ValueError(f"candidates must be one of {CANDIDATE_RULES}, got {candidates!r}")
    if not lower < upper:
        raise ValueError(f"the band needs lower < upper, got ({lower}, {upper})")
    if selection == "none":
        return torch.ones_like(table.weight)
    if selection == "kl_cov":
        return 1.0 - top_mass(table, ratio)
    candidate = (table.cov > lower) & (table.cov < upper) & (table.weight > 0)  # (n,)
    if candidates == "top":  # the top weight r of the candidates by covariance
        return 1.0 - top_mass(replace(table, weight=table.weight * candidate), ratio)
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
def entropy_bonus_update(
    policy: PrefixPolicy, table: TokenTable, step_size: float, coeff: float, rule: str = "npg"
) -> torch.Tensor:
    """The logit change (P, S, V) of ``coeff`` times the token-mean entropy bonus, one step.

    The bonus is ``coeff * sum_s D(s) H(pi(.|s))``, ``D(s)`` the table's token weight at state
    s (the limit of the loss's ``-entropy_coeff * token-mean entropy``). Its gradient in the
    logits is ``coeff D(s) (-pi (log pi + H(s)))`` (rule ``"pg"``); the natural gradient of a
    tabular softmax divides out ``D(s) (diag pi - pi pi^T)`` and leaves
    ``-coeff (log pi + H(s))`` at every visited state (rule ``"npg"``). Unit: logits.
    """
    shape = policy.logits.shape  # (P, S, V)
    P, S, V = shape
    state_weight = torch.zeros(P * S, dtype=table.weight.dtype, device=table.weight.device)
    state_weight.index_add_(0, table.atom // V, table.weight)  # (P*S,)
    state_weight = state_weight.view(P, S, 1)
    log_pi = torch.log_softmax(policy.logits, dim=-1)  # (P, S, V)
    pi = log_pi.exp()
    entropy = -(pi * log_pi).sum(dim=-1, keepdim=True)  # (P, S, 1)
    if rule == "npg":
        return step_size * coeff * torch.where(state_weight > 0, -(log_pi + entropy), 0.0)
    if rule == "pg":
        return step_size * coeff * state_weight * (-pi * (log_pi + entropy))
    raise ValueError(f"rule must be 'npg' or 'pg', got {rule!r}")


@torch.no_grad()
def optimum_distance(policy: PrefixPolicy, rewards: torch.Tensor) -> float:
    """``-mean_p log J_p`` (nats), J_p the expected 0/1 reward of prompt p.

    When every prompt has exactly one rewarded response, the unregularised optimum is the
    deterministic policy that always answers it, and this is ``KL(pi* || pi)`` averaged over
    the prompts: 0 at the optimum, ``log(1/J)`` away from it.
    """
    success = (policy.response_probs() * rewards.to(policy.logits.dtype)).sum(dim=1)  # (P,)
    distance = -success.clamp(max=1.0).log().mean()  # the clamp absorbs rounding above 1
    return float(distance) + 0.0  # + 0.0 turns -0.0 into 0.0


@torch.no_grad()
def refreshed(table: TokenTable, logits: torch.Tensor) -> TokenTable:
    """The rollout batch ``table`` with the log-probs and covariance of the policy ``logits``
    (P, S, V): the weights and advantages stay the rollout's, as on a rollout's later updates."""
    log_prob = torch.log_softmax(logits, dim=-1).reshape(-1)[table.atom]  # (n,)
    return replace(
        table, log_prob=log_prob, cov=_token_cov(table.weight, log_prob, table.advantage)
    )


def ppo_clip_keep(ratio: torch.Tensor, advantage: torch.Tensor, eps: float) -> torch.Tensor:
    """(n,) 1 where PPO's clipped surrogate still has a gradient, 0 where the clip holds the
    token: ``A > 0`` and ``ratio > 1 + eps``, or ``A < 0`` and ``ratio < 1 - eps``."""
    clipped = ((advantage > 0) & (ratio > 1.0 + eps)) | ((advantage < 0) & (ratio < 1.0 - eps))
    return (~clipped).to(ratio.dtype)


@torch.no_grad()
def expected_run(
    policy: PrefixPolicy,
    rewards: torch.Tensor,
    selection: str,
    ratio: float,
    steps: int,
    step_size: float,
    rule: str = "npg",
    *,
    lower: float = 1.0,
    upper: float = 5.0,
    candidates: str = "random",
    score: str = "natural",
    ratio_schedule: Callable[[int], float] | None = None,
    entropy_coeff: float = 0.0,
    advantage: str = "grpo",
    record: Callable[[PrefixPolicy], dict[str, float]] | None = None,
    updates_per_rollout: int = 1,
    clip_ratio: float | None = None,
    stop_below: float | None = None,
) -> dict[str, list[float]]:
    """``steps`` exact expected updates from the policy's current logits (restored after).

    Args:
        policy, rewards: the prefix policy and its (P, R) reward table.
        selection, ratio, lower, upper, candidates: the rule, as :func:`keep_fraction`.
        steps: number of updates.
        step_size: eta.
        rule: ``"npg"`` or ``"pg"`` (:func:`expected_logit_update`).
        score: the covariance that ranks the tokens (:func:`with_score`).
        ratio_schedule: step -> multiplier of ``ratio`` (e.g. an annealing to 0); None: 1.
        entropy_coeff: coefficient of an entropy bonus added to each update
            (:func:`entropy_bonus_update`).
        advantage: ``"grpo"`` or ``"dr_grpo"`` (:func:`token_table`).
        record: extra per-step values of the policy, appended under their keys.
        updates_per_rollout: U, updates on each rollout's batch (the paper's 8 mini-batches,
            each the whole batch in this limit): update u > 0 ranks the tokens by the
            covariance under the current policy (:func:`refreshed`) and weights the plain
            gradient by the importance ratio (the natural gradient's ratio cancels).
        clip_ratio: PPO's symmetric clip eps: a token with ``A > 0`` and ratio above
            ``1 + eps`` or ``A < 0`` and ratio below ``1 - eps`` keeps no gradient
            (:func:`ppo_clip_keep`); None: no clip (KL-Cov's reference loss).
        stop_below: end the run at the first rollout whose entropy is below this fraction of
            the start (that rollout is the last entry); None: run all ``steps``.

    Returns per-rollout lists (``steps + 1`` entries, the start included, fewer with
    ``stop_below``) of ``entropy`` (nats,
    response-mean H(pi, D)), ``reward`` (expected), ``cov_mean`` and ``removed`` (the weight
    whose gradient the selection removes, the mean over the rollout's updates; 0 at the last
    entry), and the ``record`` keys.
    """
    if updates_per_rollout < 1:
        raise ValueError(f"updates_per_rollout must be >= 1, got {updates_per_rollout}")
    start = policy.logits.detach().clone()
    curves: dict[str, list[float]] = {"entropy": [], "reward": [], "cov_mean": [], "removed": []}
    try:
        for step in range(steps + 1):
            curves["entropy"].append(float(policy.entropy()))
            curves["reward"].append(float(policy.expected_reward(rewards)))
            for key, value in (record(policy) if record is not None else {}).items():
                curves.setdefault(key, []).append(value)
            entropies = curves["entropy"]
            last = step == steps or (
                stop_below is not None and entropies[-1] < stop_below * entropies[0]
            )
            try:
                table = token_table(policy, rewards, advantage)
            except ValueError:  # every prompt's reward is constant: the filter leaves nothing
                table = None
            curves["cov_mean"].append(
                0.0 if table is None else float((table.weight * table.cov).sum())
            )
            if last or table is None:
                curves["removed"].append(0.0)
                if last:
                    break
                continue
            step_ratio = ratio * (1.0 if ratio_schedule is None else ratio_schedule(step))
            removed = 0.0
            for update in range(updates_per_rollout):
                current = table if update == 0 else refreshed(table, policy.logits)
                keep = keep_fraction(
                    with_score(current, score), selection, step_ratio, lower, upper, candidates
                )
                removed += float((table.weight * (1.0 - keep)).sum()) / updates_per_rollout
                ratio_now = (current.log_prob - table.log_prob).exp()  # (n,) pi / pi_rollout
                if clip_ratio is not None:
                    keep = keep * ppo_clip_keep(ratio_now, table.advantage, clip_ratio)
                if rule == "pg":  # the natural gradient's ratio cancels (module docstring)
                    keep = keep * ratio_now
                dz = expected_logit_update(policy, table, keep, step_size, rule)
                if entropy_coeff:
                    dz += entropy_bonus_update(policy, table, step_size, entropy_coeff, rule)
                policy.apply_update(dz)
            curves["removed"].append(removed)
    finally:
        policy.logits.copy_(start)
    return curves
