"""Importance ratio and the PPO surrogate terms shared by the losses, the selection and metrics."""

from __future__ import annotations

from typing import NamedTuple

import torch

from toy_entropy.algorithms.losses.config import PolicyLossConfig

__all__ = ["RatioTerms", "ratio_terms", "clipped_surrogate"]


class RatioTerms(NamedTuple):
    """Per-token PPO quantities, all ``(B, T)``."""

    log_ratio: torch.Tensor
    """``log pi - log pi_old`` clamped to +-log_ratio_clamp (so exp stays finite)."""
    ratio: torch.Tensor
    """``exp(log_ratio)``."""
    pg1: torch.Tensor
    """Unclipped surrogate ``-A * ratio``."""
    pg2: torch.Tensor
    """Clipped surrogate ``-A * clamp(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)``;
    ``pg2 > pg1`` marks the tokens PPO clips (zero gradient)."""


def ratio_terms(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    config: PolicyLossConfig,
) -> RatioTerms:
    """PPO terms from ``(B, T)`` current / rollout log-probs and advantages."""
    log_ratio = (log_probs - old_log_probs).clamp(-config.log_ratio_clamp, config.log_ratio_clamp)
    ratio = log_ratio.exp()
    neg_advantages = -advantages
    pg1 = neg_advantages * ratio
    pg2 = neg_advantages * ratio.clamp(1.0 - config.clip_ratio_low, 1.0 + config.clip_ratio_high)
    return RatioTerms(log_ratio, ratio, pg1, pg2)


def clipped_surrogate(
    terms: RatioTerms, advantages: torch.Tensor, config: PolicyLossConfig
) -> torch.Tensor:
    """``(B, T)`` PPO per-token loss ``max(pg1, pg2)``, dual-clipped for A < 0 when
    ``clip_ratio_c`` is set: ``min(max(pg1, pg2), -A * clip_ratio_c)``."""
    loss = torch.maximum(terms.pg1, terms.pg2)
    if config.clip_ratio_c is None:
        return loss
    dual = torch.minimum(loss, -advantages * config.clip_ratio_c)
    return torch.where(advantages < 0, dual, loss)
