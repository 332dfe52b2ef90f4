"""Regularisers that compose with any policy loss: entropy bonus and KL to a reference policy.

Both are aggregated like the policy loss (same mode, same batch-level normalisers) and added
by :func:`toy_entropy.algorithms.losses.compute_policy_loss`:

    loss = policy_loss - entropy_coeff * agg(H) + kl_loss_coef * agg(KL_est(pi || pi_ref))

The entropy is that of the full next-token distribution at each response position (computed
by the caller, e.g. with :func:`toy_entropy.theory.entropy.entropy_from_logits`), not ``-log pi`` of
the sampled token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["KL_ESTIMATORS", "kl_estimate"]


def _k1(log_ratio: torch.Tensor, clamp: float) -> torch.Tensor:
    return log_ratio


def _k2(log_ratio: torch.Tensor, clamp: float) -> torch.Tensor:
    return 0.5 * log_ratio.square()


def _k3(log_ratio: torch.Tensor, clamp: float) -> torch.Tensor:
    # With x = log pi_ref - log pi: exp(x) - x - 1 >= 0, unbiased for KL(pi || pi_ref).
    ref_over_pi = (-log_ratio).clamp(-clamp, clamp)
    return ref_over_pi.exp() - ref_over_pi - 1.0


def _abs(log_ratio: torch.Tensor, clamp: float) -> torch.Tensor:
    return log_ratio.abs()


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "k1": _k1,
    "k2": _k2,
    "k3": _k3,
    "abs": _abs,
}
"""Per-token estimators of KL(pi || pi_ref) from ``log pi - log pi_ref`` at tokens sampled from
pi (Schulman's k1 / k2 / k3 and verl's "abs"). k1 is unbiased but signed, k2 is biased and
non-negative, k3 is unbiased and non-negative."""


def kl_estimate(
    log_probs: torch.Tensor, ref_log_probs: torch.Tensor, kind: str, log_ratio_clamp: float = 20.0
) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate.

    Args:
        log_probs: ``(B, T)`` log pi of the sampled tokens (with grad).
        ref_log_probs: ``(B, T)`` log pi_ref of the same tokens under the frozen reference.
        kind: one of :data:`KL_ESTIMATORS`.
        log_ratio_clamp: k3 clamps ``log pi_ref - log pi`` to +-this before exp.

    Returns:
        ``(B, T)`` estimate in nats.
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"kl_loss_type must be one of {sorted(KL_ESTIMATORS)}, got {kind!r}")
    return KL_ESTIMATORS[kind](log_probs - ref_log_probs.detach(), log_ratio_clamp)
