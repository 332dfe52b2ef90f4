"""Aggregation of per-token losses into a scalar, with normalisers fixed by the whole batch.

A loss over an optimisation batch is ``sum_i w_i * loss_i`` where the weights depend only on
batch-level counts. :class:`AggregationNorm` holds those counts; computing them once over the
whole batch (or all data-parallel ranks) and passing them to every micro-batch makes the sum
of the micro-batch losses equal the whole-batch loss exactly (up to float rounding):

- ``token-mean``:              sum_tokens loss / N_tokens
- ``seq-mean-token-mean``:     sum_seqs (sum_t loss / len_seq) / N_seqs
- ``seq-mean-token-sum``:      sum_tokens loss / N_seqs
- ``seq-mean-token-sum-norm``: sum_tokens loss / (N_seqs * L), L a constant length
  (Dr. GRPO). verl divides by L only; the mean over sequences here keeps the scale
  independent of the batch size, as the mode's name says.

N_tokens counts valid tokens; N_seqs counts sequences with at least one valid token, so
all-padding rows change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["AGG_MODES", "AggregationNorm", "aggregate", "zero_invalid"]


def zero_invalid(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``values`` (B, T) with 0 at the positions where ``valid`` (B, T, bool) is False.

    A select, not a multiply: garbage at padded positions (NaN, inf) cannot reach the sums,
    and the gradient there is exactly 0. No host sync.
    """
    return torch.where(valid, values, torch.zeros((), dtype=values.dtype, device=values.device))


AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


@dataclass(frozen=True)
class AggregationNorm:
    """Batch-level normalisers; counts are 0-dim float64 tensors clamped to >= 1."""

    n_tokens: torch.Tensor
    """Valid tokens in the whole optimisation batch (all ranks)."""
    n_seqs: torch.Tensor
    """Sequences with at least one valid token in the whole batch (all ranks)."""
    token_sum_norm: float
    """Constant length L of seq-mean-token-sum-norm."""

    @classmethod
    def from_mask(cls, valid: torch.Tensor, token_sum_norm: float | None = None) -> AggregationNorm:
        """Normalisers of one batch ``valid`` (B, T) taken as the whole batch.

        ``token_sum_norm`` None means the padded length T.
        """
        lengths = valid.sum(dim=-1, dtype=torch.float64)  # (B,)
        length_norm = valid.shape[-1] if token_sum_norm is None else token_sum_norm
        return cls.from_counts(lengths.sum(), (lengths > 0).sum(), length_norm)

    @classmethod
    def from_counts(
        cls, n_tokens: torch.Tensor, n_seqs: torch.Tensor, token_sum_norm: float
    ) -> AggregationNorm:
        """Normalisers from global counts (0-dim tensors); zero counts are clamped to 1."""
        return cls(
            n_tokens=n_tokens.to(torch.float64).clamp(min=1),
            n_seqs=n_seqs.to(torch.float64).clamp(min=1),
            token_sum_norm=float(token_sum_norm),
        )


def aggregate(
    loss_mat: torch.Tensor,
    valid: torch.Tensor,
    mode: str,
    norm: AggregationNorm,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Aggregate per-token values over the valid positions of (a slice of) the batch.

    Args:
        loss_mat: ``(B, T)`` per-token values (losses, entropies, KL estimates).
        valid: ``(B, T)`` response mask, bool or 0/1 (float masks are used as they are, which
            saves a conversion); values at invalid positions are multiplied by 0, so they must
            be finite (the loss entry points pass them through :func:`zero_invalid`).
        mode: one of :data:`AGG_MODES`.
        norm: normalisers of the whole batch the rows belong to.
        weights: optional ``(B, T)`` 0/1 weights that replace ``valid`` in the sums (e.g. the
            valid tokens minus those Clip-Cov removes); the response lengths of
            seq-mean-token-mean still come from ``valid``.

    Returns:
        0-dim tensor in ``loss_mat.dtype``: this slice's share of the whole-batch aggregate.
    """
    dtype = loss_mat.dtype
    # A multiply by 0/1 is much cheaper than where() on CPU.
    masked = loss_mat * (valid if weights is None else weights).to(dtype)  # (B, T)
    if mode == "token-mean":
        return masked.sum() / norm.n_tokens.to(dtype)
    if mode == "seq-mean-token-mean":
        lengths = valid.sum(dim=-1).clamp(min=1).to(dtype)  # (B,)
        return (masked.sum(dim=-1) / lengths).sum() / norm.n_seqs.to(dtype)
    if mode == "seq-mean-token-sum":
        return masked.sum() / norm.n_seqs.to(dtype)
    if mode == "seq-mean-token-sum-norm":
        return masked.sum() / (norm.n_seqs.to(dtype) * norm.token_sum_norm)
    raise ValueError(f"loss_agg_mode must be one of {list(AGG_MODES)}, got {mode!r}")
