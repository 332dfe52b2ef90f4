"""Batch-global token selection of Clip-Cov, KL-Cov and the top entropy quantile, and the
batch-level normalisers.

Phase one of a loss step. :func:`select_tokens` runs once per optimisation step over the whole
optimisation batch (all micro-batches, all data-parallel ranks) and returns a
:class:`TokenSelection`: the selected-token mask, the normalisers of the aggregation and
batch-level diagnostics. Phase two, :func:`toy_entropy.algorithms.losses.compute_policy_loss`, runs
per micro-batch on row slices ``selection[rows]``. So the micro-batch size and the number of ranks
change neither the selected tokens nor the loss nor its gradient (docs/THEORY.md s.6). The
``top_entropy_quantile`` selection (``TokenSelection.entropy_kept``) is made the same way, by
the KL-Cov top-n machinery on the per-token entropy.

Clip-Cov's selection depends on the current importance ratio (tokens PPO already clips are not
candidates), so pass the detached current log-probs of the whole batch at the start of the
step, e.g. from a no-grad forward pass; within the step the parameters do not change, so they
equal the log-probs of the micro-batch forward passes.

Everything runs on the tensors' device with static shapes: no ``.item()``, no ``nonzero``, no
boolean indexing, no host branch on values. Selecting the n best of N positions, where n is
a device tensor, uses a top-k with the static bound ``k = max(1, floor(ratio * B * T))`` >= n
and takes the n-th value as a threshold. KL-Cov breaks ties at the threshold by the lowest
global token index; Clip-Cov's scores never tie (each candidate's random key is a seeded
bijection of its global position, :mod:`toy_entropy.algorithms.losses.fused`). So the result is
deterministic and identical on any split of the rows across ranks. The single exception: on
CPU, where reading a value is free, an all-zero response mask raises ValueError; on
accelerators the check would need a host sync, so it is skipped and such a batch gives a zero
loss.

Performance: on CPU, the page faults of fresh (B, T) buffers cost as much as the arithmetic,
so the selection works in two float buffers that it overwrites in place (see
:class:`_BatchView`). Clip-Cov's per-token chain (covariance, band, PPO-clip test, random
key) is one pass, compiled by ``torch.compile`` for batches of 2^16 tokens and more
(:func:`toy_entropy.algorithms.losses.fused.fused`); its n largest scores are marked by a scatter of
k entries instead of a pass over the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from toy_entropy.algorithms.losses import fused as fused_kernels
from toy_entropy.algorithms.losses.aggregation import AggregationNorm, zero_invalid
from toy_entropy.algorithms.losses.checks import check_token_tensors
from toy_entropy.algorithms.losses.config import PolicyLossConfig
from toy_entropy.algorithms.losses.diagnostics import (
    COV_TOP_FRACTIONS,
    count_of_fraction,
    covariance_metrics,
)
from toy_entropy.algorithms.losses.distributed import (
    Collectives,
    as_collectives,
    global_row_sum,
    global_top_values,
    top_entries,
)
from toy_entropy.algorithms.losses.ratio import ratio_terms

__all__ = ["TokenSelection", "select_tokens", "token_covariance"]


@dataclass(frozen=True)
class TokenSelection:
    """The result of :func:`select_tokens` for this rank's rows of the optimisation batch."""

    selected: torch.Tensor
    """``(B, T)`` bool: the tokens Clip-Cov removes / KL-Cov penalises (all False otherwise)."""
    norm: AggregationNorm
    """Normalisers of the whole batch (all ranks), for :func:`aggregate`."""
    metrics: dict[str, torch.Tensor]
    """Batch-level 0-dim diagnostics (``select/...``, ``cov/...``), the same on every rank.
    Log them once per step; do not sum them over micro-batches."""
    entropy_kept: torch.Tensor | None = None
    """``(B, T)`` bool: the tokens ``top_entropy_quantile`` leaves a policy gradient (the
    highest-entropy ones of the whole batch); None when the quantile is 1 (every token)."""

    def __getitem__(self, rows: slice | torch.Tensor) -> TokenSelection:
        """The selection of a micro-batch: ``selected[rows]``, the global normalisers kept."""
        kept = None if self.entropy_kept is None else self.entropy_kept[rows]
        return replace(self, selected=self.selected[rows], entropy_kept=kept)


@dataclass(frozen=True)
class _BatchView:
    """This rank's detached batch with the global statistics a selector needs.

    ``cov`` and ``work`` are the selection's own buffers: a selector may overwrite both.
    """

    config: PolicyLossConfig
    log_probs: torch.Tensor  # (B, T) detached current log-probs
    old_log_probs: torch.Tensor  # (B, T)
    advantages: torch.Tensor  # (B, T)
    valid: torch.Tensor  # (B, T) bool
    log_prob_mean: torch.Tensor  # () float64 global mean of the valid log-probs
    advantage_mean: torch.Tensor  # () float64 global mean of the valid advantages
    cov: torch.Tensor | None  # (B, T) per-token covariance, raw at invalid; None if not needed
    work: torch.Tensor  # (B, T) float; KL-Cov: a scratch buffer; Clip-Cov: the 0/1 mask weights
    n_tokens: torch.Tensor  # () float64 global valid-token count
    comm: Collectives
    generator: torch.Generator | None


Selector = Callable[[_BatchView], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@torch.no_grad()
def token_covariance(
    log_probs: torch.Tensor,
    advantages: torch.Tensor,
    log_prob_mean: torch.Tensor,
    advantage_mean: torch.Tensor,
    out: torch.Tensor | None = None,
    scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token covariance ``(lp - mean lp) * (A - mean A)`` (docs/THEORY.md s.4), without grad.

    Args:
        log_probs: ``(B, T)`` log-probs of the sampled tokens (used detached).
        advantages: ``(B, T)``.
        log_prob_mean: 0-dim mean of ``log_probs`` over the valid tokens of the whole batch.
        advantage_mean: 0-dim mean of ``advantages`` over the same tokens.
        out: optional ``(B, T)`` float buffer for the result.
        scratch: optional ``(B, T)`` float buffer for the centred advantages (overwritten).

    Returns:
        ``(B, T)`` covariance (in ``out``'s dtype, else ``log_probs.dtype``); entries at
        invalid positions are meaningless and must be masked by the caller.
    """
    cov = torch.sub(log_probs, log_prob_mean.to(log_probs.dtype), out=out)  # (B, T)
    return cov.mul_(torch.sub(advantages, advantage_mean.to(advantages.dtype), out=scratch))


def masked_token_covariance(
    log_probs: torch.Tensor, advantages: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """:func:`token_covariance` of one process's batch, for diagnostics outside the loss.

    Args:
        log_probs: ``(B, T)`` log-probs of the sampled tokens (used detached).
        advantages: ``(B, T)``.
        valid: ``(B, T)`` bool, the tokens whose means centre the covariance.

    Returns:
        ``(B, T)`` covariance in ``log_probs.dtype``, 0 at invalid positions (and everywhere
        when no token is valid).
    """
    weights = valid.to(log_probs.dtype)  # (B, T)
    n = weights.sum().clamp(min=1)
    means = (log_probs * weights).sum() / n, (advantages * weights).sum() / n
    return token_covariance(log_probs.detach(), advantages, *means) * weights


def _first_ties(
    comm: Collectives, tied: torch.Tensor, budget: torch.Tensor, scratch: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the first ``budget`` tied positions of the global batch in global index order.

    Whole rows are ranked by an exclusive prefix sum of their tie counts; only the (at most
    one) row in which the budget runs out needs a within-row cumulative sum. This avoids a
    cumulative sum over all B * T positions, the slowest step on CPU.

    Args:
        comm: the data-parallel group.
        tied: ``(B, T)`` bool, this rank's tied positions (overwritten with the result).
        budget: 0-dim int64, how many ties to keep globally.
        scratch: ``(B, T)`` float buffer (overwritten); counting in it avoids a converted copy.

    Returns:
        ``(B, T)`` bool kept ties, and the 0-dim global count of tied positions.
    """
    row_ties = scratch.copy_(tied).sum(dim=-1).long()  # (B,)
    rank_ties = comm.all_gather(row_ties.sum().reshape(1))  # (world, 1)
    before = row_ties.cumsum(0) - row_ties + rank_ties[: comm.rank].sum()  # (B,) earlier ties
    partial = (before < budget) & (before + row_ties > budget)  # (B,) at most one True
    cut = partial.to(torch.uint8).argmax().reshape(1)  # (1,) that row, or row 0 if none
    row = tied.index_select(0, cut)  # (1, T)
    row_kept = row & (before.gather(0, cut).unsqueeze(-1) + row.cumsum(dim=-1) <= budget)
    tied &= (before + row_ties <= budget).unsqueeze(-1)  # (B, T) rows that fit whole
    return tied.index_copy_(0, cut, row_kept), rank_ties.sum()


def _select_top(
    comm: Collectives,
    score: torch.Tensor,
    eligible: torch.Tensor,
    n: torch.Tensor,
    k: int,
    scratch: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mark the ``n`` highest-scoring eligible positions of the global batch (KL-Cov).

    Args:
        comm: the data-parallel group.
        score: ``(B, T)`` this rank's scores; all ineligible positions hold one sentinel
            value that is <= every eligible score.
        eligible: ``(B, T)`` bool.
        n: 0-dim int64 on the device, ``1 <= n <= k``; all eligible positions are marked when
            fewer than n exist.
        k: static bound on n.
        scratch: ``(B, T)`` float buffer, overwritten.

    Returns:
        ``(B, T)`` bool mask of this rank's selected positions, and the 0-dim global count of
        selected positions, ``min(n, eligible)``. Ties at the n-th score go to the lowest
        global token index (rank-major, then row-major).
    """
    top = global_top_values(comm, score, k)  # (k,) descending, the same on every rank
    threshold = top.gather(0, (n - 1).reshape(1))  # (1,) the n-th largest score
    # Fewer than n scores exceed the threshold, so all of them are in `top`; none is a
    # sentinel, since the sentinel is the smallest score.
    n_above = (top > threshold).sum()
    selected = score > threshold  # (B, T)
    tied = score == threshold
    tied &= eligible
    budget = n - n_above
    kept_ties, n_tied = _first_ties(comm, tied, budget, scratch)
    selected |= kept_ties
    return selected, n_above + torch.minimum(n_tied, budget)


def _select_clip_cov(view: _BatchView) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clip-Cov: ``max(1, floor(clip_cov_ratio * N))`` uniform random tokens among the valid,
    not PPO-clipped tokens with ``clip_cov_lb < cov < clip_cov_ub``.

    One fused pass (:func:`~toy_entropy.algorithms.losses.fused.clip_cov_scores`) gives every
    candidate a unique random score and every other token -1; the sample is the n largest scores,
    found with a top-k over this rank's tokens and a top-k over the gathered candidates, and marked
    by a scatter of k entries. Scores are unique, so no tie handling is needed.
    """
    config, comm, lp = view.config, view.comm, view.log_probs
    rows, length = lp.shape
    first_row = comm.rank * rows
    if comm.world_size * lp.numel() > fused_kernels.MAX_POSITIONS:
        raise ValueError(
            f"select_tokens: Clip-Cov supports up to 2^31 tokens per optimisation batch, got "
            f"{comm.world_size} x {rows} x {length}"
        )
    dtype = torch.promote_types(lp.dtype, torch.float32)  # as the covariance buffer's
    scores = fused_kernels.fused(
        fused_kernels.clip_cov_scores, comm.world_size * lp.numel(), lp.device
    )(
        lp.to(dtype),
        view.old_log_probs.to(dtype),
        view.advantages.to(dtype),
        view.work,  # the 0/1 weights: a float mask is much faster than bool in compiled code
        view.log_prob_mean.to(dtype),
        view.advantage_mean.to(dtype),
        fused_kernels.clip_cov_bounds(config, dtype, lp.device),
        fused_kernels.draw_seeds(view.generator, lp.device),
        first_row * length,
    ).view(-1)  # (B * T,) int32, -1 = not a candidate
    n = count_of_fraction(config.clip_cov_ratio, view.n_tokens)
    k = max(1, int(config.clip_cov_ratio * comm.world_size * scores.numel()))
    local_top, local_index = top_entries(scores, min(k, scores.numel()))  # (k_local,)
    # Each rank's top k_local holds all of its entries among the global top k.
    top = comm.all_gather(local_top).reshape(-1).topk(k).values  # (k,) the same on every rank
    # The n-th largest score; a sentinel (fewer than n candidates) means all candidates.
    threshold = top.gather(0, (n - 1).reshape(1)).clamp(min=0)  # (1,)
    selected = torch.zeros_like(view.valid).view(-1)  # (B * T,)
    selected.scatter_(0, local_index, local_top >= threshold)
    n_selected = (top >= threshold).sum()
    return selected.view(rows, length), {"select/frac": n_selected / view.n_tokens}


def _select_kl_cov(view: _BatchView) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL-Cov: the ``max(1, floor(kl_cov_ratio * N))`` valid tokens of largest covariance."""
    config, comm = view.config, view.comm
    # Sentinel -max at invalid positions (finite covariances are far above it), added in
    # place: where() / masked_fill() are several times slower on CPU.
    sentinel = torch.finfo(view.cov.dtype).max
    padding = view.work.copy_(view.valid).sub_(1.0).mul_(sentinel)  # (B, T) 0 or -max
    score = view.cov.add_(padding)  # (B, T): cov + 0 where valid, -max elsewhere
    n = count_of_fraction(config.kl_cov_ratio, view.n_tokens)
    k = max(1, int(config.kl_cov_ratio * comm.world_size * score.numel()))
    selected, n_selected = _select_top(comm, score, view.valid, n, k, scratch=view.work)
    return selected, {"select/frac": n_selected / view.n_tokens}


def _quantile_scores(
    kind: str,
    entropy: torch.Tensor,
    generator: torch.Generator | None,
    first_index: int,
) -> torch.Tensor:
    """``(B, T)`` scores >= 0 that ``top_entropy_quantile`` keeps the top of: the entropy
    (``"entropy"``), ``1 / (1 + H)`` (``"low_entropy"``: the lowest entropies first) or a
    seeded random key of the token's global position (``"random"``, as Clip-Cov's keys: the
    subset does not depend on the number of ranks)."""
    if kind == "entropy":
        return entropy
    if kind == "low_entropy":
        return 1.0 / (1.0 + entropy)
    seeds = fused_kernels.draw_seeds(generator, entropy.device)
    index = torch.arange(entropy.numel(), device=entropy.device, dtype=torch.int32)
    index = (index + first_index).view(entropy.shape)  # (B, T) global positions
    key = fused_kernels.hash31(fused_kernels.hash31(index ^ seeds[0]) ^ seeds[1])  # (B, T)
    return key.to(entropy.dtype) / float(fused_kernels.MAX_POSITIONS)


def _select_top_entropy(
    comm: Collectives,
    entropy: torch.Tensor,
    valid: torch.Tensor,
    n_tokens: torch.Tensor,
    config: PolicyLossConfig,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``top_entropy_quantile``: the ``max(1, floor(quantile * N))`` valid tokens of highest
    score (:func:`_quantile_scores` of ``config.top_entropy_quantile_by``) in the global batch
    (ties at the threshold to the lowest global index).

    Args:
        comm: the data-parallel group.
        entropy: ``(B, T)`` full-distribution entropy per position in nats, detached, 0 at
            invalid positions.
        valid: ``(B, T)`` bool.
        n_tokens: 0-dim float64 global valid-token count.
        config: ``top_entropy_quantile`` (rho in (0, 1)) and ``top_entropy_quantile_by``.
        generator: the random source of ``"random"`` (as Clip-Cov's).

    Returns:
        ``(B, T)`` bool kept tokens, and ``select/entropy_kept_frac`` (kept / N) and
        ``select/entropy_threshold`` (the lowest kept entropy, nats), the same on every rank.
    """
    quantile = config.top_entropy_quantile
    dtype = torch.promote_types(entropy.dtype, torch.float32)
    first_index = comm.rank * entropy.numel()
    scores = _quantile_scores(config.top_entropy_quantile_by, entropy.to(dtype), generator,
                              first_index)  # fmt: skip
    # Scores are >= 0, so -1 at invalid positions is a sentinel below every eligible score.
    score = torch.where(valid, scores, -1.0)  # (B, T)
    n = count_of_fraction(quantile, n_tokens)
    k = max(1, int(quantile * comm.world_size * score.numel()))
    kept, n_kept = _select_top(comm, score, valid, n, k, scratch=torch.empty_like(score))
    lowest = torch.where(kept, entropy.to(dtype), float("inf")).amin().reshape(1)  # (1,)
    threshold = comm.all_gather(lowest).amin()
    metrics = {"select/entropy_kept_frac": n_kept / n_tokens, "select/entropy_threshold": threshold}
    return kept, metrics


SELECTORS: dict[str, Selector] = {"clip_cov": _select_clip_cov, "kl_cov": _select_kl_cov}
"""Loss modes that select tokens; every other mode selects none."""
COV_SELECTORS = frozenset({"kl_cov"})
"""Selectors that read the per-token covariance buffer (Clip-Cov computes it in its fused pass)."""


@torch.no_grad()
def select_tokens(
    config: PolicyLossConfig,
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    generator: torch.Generator | None = None,
    dist: object = None,
    cov_stats: bool = False,
    cov_top_fractions: Sequence[float] = COV_TOP_FRACTIONS,
    entropy: torch.Tensor | None = None,
) -> TokenSelection:
    """Select tokens and compute normalisers once over the whole optimisation batch.

    Args:
        config: the loss config; ``loss_mode`` decides the selection (clip_cov, kl_cov).
        log_probs: ``(B, T)`` current log-probs of the sampled tokens (used detached).
        old_log_probs: ``(B, T)`` log-probs under the rollout policy.
        advantages: ``(B, T)`` per-token advantages.
        response_mask: ``(B, T)`` nonzero at valid response tokens.
        generator: Clip-Cov's random source, a ``torch.Generator`` on the tensors' device owned
            by the caller (seed it identically on every rank); None uses torch's default one.
            The sample depends on the seed and on the padded shape ``(B, T)``.
        dist: None for one process, else a ``torch.distributed`` process group or a
            :class:`~toy_entropy.algorithms.losses.distributed.Collectives`. Each rank passes its
            own rows, the same ``(B, T)`` shape on every rank, rank r holding global rows
            ``[r * B, (r + 1) * B)``. Means, counts, candidates and the sample are global and
            equal the single-process selection of the concatenated batch.
        cov_stats: also compute the covariance diagnostics of
            :func:`~toy_entropy.algorithms.losses.diagnostics.covariance_metrics`.
        cov_top_fractions: fractions for the top-covariance means (with ``cov_stats``).
        entropy: ``(B, T)`` full-distribution entropy per position in nats (used detached);
            needed when ``config.top_entropy_quantile < 1``, which keeps the policy gradient
            of the highest-entropy tokens of the whole batch only (``entropy_kept``).

    Returns:
        The :class:`TokenSelection` of this rank's rows.
    """
    caller = "select_tokens"
    check_token_tensors(
        caller,
        response_mask,
        log_probs=log_probs,
        old_log_probs=old_log_probs,
        advantages=advantages,
        **({} if entropy is None else {"entropy": entropy}),
    )
    if entropy is None and config.top_entropy_quantile < 1:
        raise ValueError(
            f"{caller}: top_entropy_quantile={config.top_entropy_quantile!r} needs entropy (B, T)"
        )
    if generator is not None and generator.device.type != log_probs.device.type:
        raise ValueError(
            f"{caller}: generator is on {generator.device} but the tensors are on "
            f"{log_probs.device}; create it with torch.Generator(device=...)"
        )
    comm = as_collectives(dist)
    valid = response_mask.bool()  # (B, T)
    # Values at padded positions are ignored, whatever they hold (NaN included).
    lp, old_log_probs, advantages = (
        zero_invalid(x.detach(), valid) for x in (log_probs, old_log_probs, advantages)
    )
    selector = SELECTORS.get(config.loss_mode)
    needs_cov = selector is not None or cov_stats

    # Per-row sums, added in global row order (global_row_sum): bit-identical on any split.
    work_dtype = torch.promote_types(lp.dtype, torch.float32)
    weights = response_mask.to(work_dtype, copy=True)  # (B, T) 0/1, reused as a buffer below
    lengths = weights.sum(dim=-1)  # (B,) valid tokens per row
    row_stats = [lengths, (lengths > 0).to(lengths.dtype)]
    if needs_cov:
        work = torch.mul(lp, weights)  # (B, T)
        row_stats.append(work.sum(dim=-1))
        row_stats.append(torch.mul(advantages, weights, out=work).sum(dim=-1))
    totals = global_row_sum(comm, torch.stack(row_stats, dim=-1).to(torch.float64))  # (K,)
    if totals.device.type == "cpu" and totals[0] == 0:
        raise ValueError(f"{caller}: response_mask has no valid token in the whole batch")
    token_sum_norm = config.loss_agg_norm if config.loss_agg_norm is not None else valid.shape[-1]
    norm = AggregationNorm.from_counts(totals[0], totals[1], token_sum_norm)
    entropy_kept, metrics = None, {}
    if config.top_entropy_quantile < 1:
        entropy_kept, metrics = _select_top_entropy(
            comm, zero_invalid(entropy.detach(), valid), valid, norm.n_tokens, config, generator
        )
    if not needs_cov:
        return TokenSelection(torch.zeros_like(valid), norm, metrics, entropy_kept)

    lp_mean, adv_mean = totals[2] / norm.n_tokens, totals[3] / norm.n_tokens
    cov = None
    if cov_stats or config.loss_mode in COV_SELECTORS:
        # Unless Clip-Cov reads them, the weights' buffer takes the centred advantages.
        scratch = None if config.loss_mode == "clip_cov" else weights
        cov = token_covariance(lp, advantages, lp_mean, adv_mean, out=work, scratch=scratch)
    if cov_stats:  # before the selector, which may overwrite cov
        ratio = ratio_terms(lp, old_log_probs, advantages, config).ratio
        metrics |= covariance_metrics(
            cov, valid, advantages, ratio, config, norm.n_tokens, comm, cov_top_fractions
        )
    if selector is None:
        return TokenSelection(torch.zeros_like(valid), norm, metrics, entropy_kept)
    view = _BatchView(
        config=config,
        log_probs=lp,
        old_log_probs=old_log_probs,
        advantages=advantages,
        valid=valid,
        log_prob_mean=lp_mean,
        advantage_mean=adv_mean,
        cov=cov,
        work=weights,
        n_tokens=norm.n_tokens,
        comm=comm,
        generator=generator,
    )
    selected, selector_metrics = selector(view)
    return TokenSelection(selected, norm, selector_metrics | metrics, entropy_kept)
