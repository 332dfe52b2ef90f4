"""Diagnostics of a policy-loss step as 0-dim device tensors (convert them when logging).

Two kinds:

- :func:`clip_metrics` and :func:`rollout_kl_metrics`, per micro-batch and additive: every
  value is a sum over this slice's tokens divided by the whole-batch token count, so summing
  over micro-batches (and ranks) gives the whole-batch value, like the loss.
- :func:`covariance_metrics`, once per optimisation batch, global over ranks: statistics of
  the per-token covariance ``cov_i = (lp_i - mean lp) * (A_i - mean A)`` (THEORY.md s.4), the
  mean of its top 0.02% / 0.2% / 2% / 20% (the paper's Table 1), the share of the summed
  positive covariance those tokens hold, the tail ratio (top-0.02% mean / overall mean; the
  paper's step 1 on a 7B model: 5.654 / 0.003, about 1900), and for clip-higher the mean
  covariance of the tokens that ``clip_ratio_high`` admits beyond the symmetric clip (the
  paper reports about -0.03).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from toy_entropy.algorithms.losses.aggregation import AggregationNorm
from toy_entropy.algorithms.losses.config import PolicyLossConfig
from toy_entropy.algorithms.losses.distributed import Collectives, global_row_sum, global_top_values
from toy_entropy.algorithms.losses.ratio import RatioTerms

__all__ = [
    "COV_TOP_FRACTIONS",
    "PAPER_TABLE1",
    "count_of_fraction",
    "rollout_kl_metrics",
    "clip_metrics",
    "covariance_metrics",
]

COV_TOP_FRACTIONS = (2e-4, 2e-3, 2e-2, 0.2)
"""Fractions of tokens (not percents) whose mean top covariance the paper's Table 1 reports."""

PAPER_TABLE1 = {"top_0.02%_mean": 5.654, "mean": 0.003, "tail_ratio": 5.654 / 0.003}
"""The paper's Table 1 (Qwen2.5-7B, step 1): mean covariance of the top 0.02% of tokens, of all
tokens, and their ratio (about 1900)."""


def count_of_fraction(fraction: float, n_tokens: torch.Tensor) -> torch.Tensor:
    """``max(1, floor(fraction * n_tokens))`` as a 0-dim int64 tensor, on the device.

    Computed in float64 like Python's ``int(fraction * n)``, so that e.g. 2e-4 * 10000 is 2.
    """
    return torch.floor(n_tokens.to(torch.float64) * fraction).clamp(min=1).to(torch.int64)


@torch.no_grad()
def rollout_kl_metrics(
    terms: RatioTerms, valid: torch.Tensor, norm: AggregationNorm
) -> dict[str, torch.Tensor]:
    """KL to the rollout policy over a (micro-)batch, additive over micro-batches.

    Args:
        terms: ratio terms of the slice, ``(B, T)`` each.
        valid: ``(B, T)`` bool response mask.
        norm: whole-batch normalisers.

    Returns:
        ``kl/rollout_k1`` (mean of log pi_old - log pi, verl's ppo_kl) and ``kl/rollout_k3``
        (mean of ratio - 1 - log ratio >= 0, CleanRL's approx_kl).
    """
    weights = valid.to(terms.log_ratio.dtype)  # (B, T)
    k3 = (terms.ratio - terms.log_ratio).sub_(1.0).mul_(weights)  # (B, T)
    return {
        "kl/rollout_k1": -(terms.log_ratio * weights).sum() / norm.n_tokens,
        "kl/rollout_k3": k3.sum() / norm.n_tokens,
    }


@torch.no_grad()
def clip_metrics(
    terms: RatioTerms,
    advantages: torch.Tensor,
    valid: torch.Tensor,
    config: PolicyLossConfig,
    norm: AggregationNorm,
) -> dict[str, torch.Tensor]:
    """Fractions of the valid tokens that PPO clips, additive over micro-batches.

    Args:
        terms: ratio terms of the slice, ``(B, T)`` each.
        advantages: ``(B, T)``.
        valid: ``(B, T)`` bool response mask.
        config: the loss config (for the dual clip).
        norm: whole-batch normalisers.

    Returns:
        ``ratio/clipfrac_high`` (A > 0 and ratio above 1 + clip_ratio_high),
        ``ratio/clipfrac_low`` (A < 0 and ratio below 1 - clip_ratio_low) and, with
        clip_ratio_c, ``ratio/clipfrac_dual`` (A < 0 and the dual clip active).
    """
    clipped = (terms.pg2 > terms.pg1).logical_and_(valid)  # (B, T); implies A != 0
    n_clipped = clipped.sum(dtype=torch.int32)
    n_high = clipped.logical_and_(advantages > 0).sum(dtype=torch.int32)
    metrics = {
        "ratio/clipfrac_high": n_high / norm.n_tokens,
        "ratio/clipfrac_low": (n_clipped - n_high) / norm.n_tokens,
    }
    if config.clip_ratio_c is not None:
        dual = valid & (advantages < 0)
        dual &= torch.maximum(terms.pg1, terms.pg2) > -advantages * config.clip_ratio_c
        metrics["ratio/clipfrac_dual"] = dual.sum() / norm.n_tokens
    return metrics


@torch.no_grad()
def covariance_metrics(
    cov: torch.Tensor,
    valid: torch.Tensor,
    advantages: torch.Tensor,
    ratio: torch.Tensor,
    config: PolicyLossConfig,
    n_tokens: torch.Tensor,
    comm: Collectives,
    top_fractions: Sequence[float] = COV_TOP_FRACTIONS,
) -> dict[str, torch.Tensor]:
    """Batch-level statistics of the per-token covariance, identical on every rank.

    Args:
        cov: ``(B, T)`` per-token covariance with batch-global means (any values at invalid
            positions), as from :func:`~toy_entropy.algorithms.losses.selection.token_covariance`.
        valid: ``(B, T)`` bool response mask.
        advantages: ``(B, T)``.
        ratio: ``(B, T)`` importance ratio at the start of the optimisation step.
        config: the loss config (clip_ratio_low / clip_ratio_high).
        n_tokens: 0-dim global count of valid tokens (>= 1).
        comm: the data-parallel group.
        top_fractions: fractions q (in (0, 1]) for ``cov/top_{100q}%_mean``, the mean of the
            ``max(1, floor(q * N))`` largest covariances; empty for none (the top-k over
            ``max(q) * B * T`` positions is the costly part).

    Returns:
        ``cov/mean``, ``cov/pos_frac``, ``cov/valid_tokens`` (N, the optimisation batch's
        valid tokens), ``cov/top_...%_mean``, ``cov/top_...%_share`` (the
        sum of the top tokens' positive covariances over the sum of all positive
        covariances, in [0, 1]; NaN when no covariance is positive), ``cov/tail_ratio`` (the
        smallest fraction's top mean over ``cov/mean``; with the default fractions the top
        0.02%, as the paper's Table 1) and, when clip_ratio_high >
        clip_ratio_low, ``cov/clip_higher_admitted_mean`` (NaN when no token is admitted, as
        on the first, on-policy update) and ``cov/clip_higher_admitted_frac``. The admitted
        tokens have A > 0 and 1 + clip_ratio_low < ratio <= 1 + clip_ratio_high.
    """
    for q in top_fractions:
        if not 0 < q <= 1:
            raise ValueError(f"cov_top_fractions must be fractions in (0, 1], got {q!r}")
    positive = valid & (cov > 0)  # (B, T)
    row_stats = [
        torch.where(valid, cov, 0.0).sum(dim=-1, dtype=torch.float64),
        positive.sum(dim=-1, dtype=torch.float64),
        torch.where(positive, cov, 0.0).sum(dim=-1, dtype=torch.float64),
    ]  # each (B,)
    clip_higher = config.clip_ratio_high > config.clip_ratio_low
    if clip_higher:
        admitted = valid & (advantages > 0)
        admitted &= (ratio > 1.0 + config.clip_ratio_low) & (ratio <= 1.0 + config.clip_ratio_high)
        row_stats.append(admitted.sum(dim=-1, dtype=torch.float64))
        row_stats.append(torch.where(admitted, cov, 0.0).sum(dim=-1, dtype=torch.float64))
    totals = global_row_sum(comm, torch.stack(row_stats, dim=-1))  # (K,)
    metrics = {
        "cov/mean": totals[0] / n_tokens,
        "cov/pos_frac": totals[1] / n_tokens,
        "cov/valid_tokens": n_tokens.to(torch.float64),
    }
    if clip_higher:
        metrics["cov/clip_higher_admitted_mean"] = totals[4] / totals[3]
        metrics["cov/clip_higher_admitted_frac"] = totals[3] / n_tokens
    if top_fractions:
        k = max(1, int(max(top_fractions) * comm.world_size * cov.numel()))
        score = torch.where(valid, cov, float("-inf"))  # (B, T)
        top = global_top_values(comm, score, k).to(torch.float64)  # (k,) descending
        prefix = top.cumsum(dim=0)  # (k,)
        positive_prefix = top.clamp(min=0.0).cumsum(dim=0)  # (k,); -inf -> 0
        for q in top_fractions:
            count = count_of_fraction(q, n_tokens)  # <= N, so the prefix holds no -inf
            at = (count - 1).reshape(1)
            metrics[f"cov/top_{100 * q:g}%_mean"] = prefix.gather(0, at).squeeze(0) / count
            share = positive_prefix.gather(0, at).squeeze(0) / totals[2]
            metrics[f"cov/top_{100 * q:g}%_share"] = share
        smallest = min(top_fractions)
        metrics["cov/tail_ratio"] = (
            metrics[f"cov/top_{100 * smallest:g}%_mean"] / metrics["cov/mean"]
        )
    return metrics
