"""Token selection made per rank and per micro-batch, as the reference code and verl make it.

The released Clip-Cov / KL-Cov code (and verl up to verl-project/verl #7829) selects inside
each call of the loss: one micro-batch on one data-parallel rank. The covariance is centred on
that micro-batch's means, and each micro-batch selects ``max(1, floor(ratio * N_micro))``
tokens. This project selects once over the whole optimisation batch
(:func:`toy_entropy.algorithms.losses.selection.select_tokens`, docs/THEORY.md s.6). This module
emulates the local selection on one process by running that same global selection on each chunk of
rows, and measures how far it is from the global one.

Rows are split as the trainers split them: contiguously into ``ranks`` shards, and each shard
contiguously into ``micro_batches`` micro-batches, so with even splits only the number of
chunks ``ranks * micro_batches`` matters.
"""

from __future__ import annotations

import torch

from toy_entropy.algorithms.losses.config import PolicyLossConfig
from toy_entropy.algorithms.losses.selection import masked_token_covariance, select_tokens

__all__ = ["row_chunks", "local_selection", "band_candidates", "selection_agreement"]


def row_chunks(rows: int, ranks: int = 1, micro_batches: int = 1) -> list[torch.Tensor]:
    """Row indices of every (rank, micro-batch) chunk, rank-major; ``ranks * micro_batches``
    long tensors that partition ``range(rows)`` contiguously (sizes differ by at most one
    within a rank)."""
    for name, value in (("ranks", ranks), ("micro_batches", micro_batches)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if rows < ranks * micro_batches:
        raise ValueError(f"{rows} rows cannot fill {ranks} ranks x {micro_batches} micro-batches")
    shards = torch.tensor_split(torch.arange(rows), ranks)
    return [chunk for shard in shards for chunk in torch.tensor_split(shard, micro_batches)]


@torch.no_grad()
def local_selection(
    config: PolicyLossConfig,
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    ranks: int = 1,
    micro_batches: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``(B, T)`` bool: the tokens ``config``'s rule selects when every chunk selects alone.

    Each chunk of :func:`row_chunks` is passed to :func:`select_tokens` as if it were the whole
    batch: its own means, its own count ``max(1, floor(ratio * N_chunk))``, its own random
    draw (Clip-Cov, from ``generator``). ``ranks = micro_batches = 1`` is the global selection.
    Every row must hold at least one valid token.

    Args:
        config: the loss config (``loss_mode`` "clip_cov" or "kl_cov" selects).
        log_probs, old_log_probs, advantages, response_mask: ``(B, T)`` each.
        ranks: data-parallel ranks, each with a contiguous shard of rows.
        micro_batches: micro-batches per rank.
        generator: Clip-Cov's random source.
    """
    selected = torch.zeros_like(response_mask, dtype=torch.bool)  # (B, T)
    for rows in row_chunks(response_mask.shape[0], ranks, micro_batches):
        chunk = select_tokens(
            config,
            log_probs[rows],
            old_log_probs[rows],
            advantages[rows],
            response_mask[rows],
            generator=generator,
        )
        selected[rows] = chunk.selected
    return selected


@torch.no_grad()
def band_candidates(
    log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    lower: float,
    upper: float,
    ranks: int = 1,
    micro_batches: int = 1,
) -> torch.Tensor:
    """``(B, T)`` bool: Clip-Cov's candidates ``lower < cov < upper`` with the covariance
    centred on each chunk's own means (on-policy: no token is PPO-clipped).

    Args:
        log_probs, advantages, response_mask: ``(B, T)`` each.
        lower, upper: the open band (nats x advantage).
        ranks, micro_batches: the split, as :func:`local_selection`.
    """
    valid = response_mask.bool()  # (B, T)
    candidates = torch.zeros_like(valid)
    for rows in row_chunks(valid.shape[0], ranks, micro_batches):
        cov = masked_token_covariance(log_probs[rows], advantages[rows], valid[rows])  # (b, T)
        candidates[rows] = (cov > lower) & (cov < upper) & valid[rows]
    return candidates


def selection_agreement(local: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """How a token set ``local`` (bool, any shape) compares with ``reference`` (same shape).

    Returns ``count_ratio`` = |local| / |reference|, ``jaccard`` = |both| / |either| and
    ``recall`` = |both| / |reference| (the share of the reference set that local also holds).
    NaN where a denominator is 0.
    """
    if local.shape != reference.shape:
        raise ValueError(f"shapes differ: {tuple(local.shape)} vs {tuple(reference.shape)}")
    local, reference = local.bool(), reference.bool()
    n_local, n_ref = int(local.sum()), int(reference.sum())
    both, either = int((local & reference).sum()), int((local | reference).sum())
    nan = float("nan")
    return {
        "count_ratio": n_local / n_ref if n_ref else nan,
        "jaccard": both / either if either else nan,
        "recall": both / n_ref if n_ref else nan,
    }
