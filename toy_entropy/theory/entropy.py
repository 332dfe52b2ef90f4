"""Exact entropy and log-prob/logit-change covariance of categorical (softmax) policies.

Every function is device- and dtype-agnostic and batched over any leading shape: the last
dimension is the action (vocabulary) axis. Entropies are in nats. Logits may hold ``-inf`` for
masked actions; such actions have probability zero and contribute nothing.

The identity these functions verify (docs/THEORY.md section 3): for logits z and a logit change dz,

    H(softmax(z + dz)) - H(softmax(z)) = -Cov_{a ~ pi}(log pi(a), dz_a) + O(|dz|^2).
"""

from __future__ import annotations

import torch

__all__ = [
    "entropy_from_logits",
    "masked_response_mean",
    "masked_token_mean",
    "dataset_entropy",
    "logprob_logit_covariance",
    "predicted_entropy_change",
    "pg_logit_update",
    "npg_logit_update",
]


def _finite_log_probs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(probs, log_probs)`` with ``log_probs`` set to 0 where the action is masked.

    Zeroing the masked log-probs makes ``probs * log_probs`` exactly 0 there (instead of
    ``0 * -inf = nan``) in the value and in the gradient.
    """
    log_probs = torch.log_softmax(logits, dim=-1)
    probs = log_probs.exp()
    finite_log_probs = torch.where(probs > 0, log_probs, torch.zeros_like(log_probs))
    return probs, finite_log_probs


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Full-distribution entropy of ``softmax(logits)`` over the last dimension, in nats.

    Args:
        logits: ``(..., V)`` unnormalised log-probabilities; ``-inf`` marks a masked action.
            At least one entry per distribution must be finite.

    Returns:
        ``(...)`` entropy ``-sum_a pi_a log pi_a`` of each distribution.
    """
    if logits.dim() == 0:
        raise ValueError("entropy_from_logits: logits must have an action dimension, got a scalar")
    probs, log_probs = _finite_log_probs(logits)
    return -(probs * log_probs).sum(dim=-1)


def _check_mask(values: torch.Tensor, mask: torch.Tensor, name: str) -> torch.Tensor:
    if values.dim() < 1:
        raise ValueError(f"{name}: values must be at least 1-D (..., T), got a scalar")
    if mask.shape != values.shape:
        raise ValueError(
            f"{name}: mask shape {tuple(mask.shape)} must equal values shape {tuple(values.shape)}"
        )
    return mask.to(values.dtype)


def masked_token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over all positions where ``mask`` is set (every response pooled).

    Args:
        values: ``(..., T)`` per-position values (e.g. per-token entropy in nats).
        mask: ``(..., T)`` 1 for valid response positions, 0 for padding.

    Returns:
        Scalar: ``sum(values * mask) / sum(mask)``; long responses weigh more.
    """
    weights = _check_mask(values, mask, "masked_token_mean")
    return (values * weights).sum() / weights.sum()


def masked_response_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-response mean over valid positions, then the mean over responses (docs/THEORY.md s.1).

    Args:
        values: ``(..., T)`` per-position values; every leading index is one response.
        mask: ``(..., T)`` 1 for valid response positions, 0 for padding.

    Returns:
        Scalar: ``mean_x (1/|y_x|) sum_t values[x, t]``. Responses with no valid position are
        left out of the outer mean.
    """
    weights = _check_mask(values, mask, "masked_response_mean")
    lengths = weights.sum(dim=-1)  # (...)
    per_response = (values * weights).sum(dim=-1) / lengths.clamp(min=1)
    has_tokens = (lengths > 0).to(values.dtype)
    return (per_response * has_tokens).sum() / has_tokens.sum()


def dataset_entropy(
    logits: torch.Tensor, mask: torch.Tensor, mode: str = "response-mean"
) -> torch.Tensor:
    """Policy entropy over a dataset of responses, H(pi, D) of docs/THEORY.md section 1, in nats.

    Args:
        logits: ``(..., T, V)`` next-token logits at every response position.
        mask: ``(..., T)`` 1 for valid response positions.
        mode: ``"response-mean"`` (the paper's: per-response mean of per-position entropy,
            then the mean over responses) or ``"token-mean"`` (all valid positions pooled).

    Returns:
        Scalar entropy.
    """
    per_token = entropy_from_logits(logits)  # (..., T)
    if mode == "response-mean":
        return masked_response_mean(per_token, mask)
    if mode == "token-mean":
        return masked_token_mean(per_token, mask)
    raise ValueError(f"dataset_entropy: mode must be 'response-mean' or 'token-mean', got {mode!r}")


def logprob_logit_covariance(logits: torch.Tensor, logit_change: torch.Tensor) -> torch.Tensor:
    """Exact ``Cov_{a ~ pi}(log pi(a), dz_a)`` per state, with ``pi = softmax(logits)``.

    Args:
        logits: ``(..., V)`` logits of the current policy; ``-inf`` marks masked actions.
        logit_change: ``(..., V)`` logit change dz (same shape); its masked entries are ignored.

    Returns:
        ``(...)`` covariance ``E[log pi * dz] - E[log pi] E[dz]`` under ``pi``.
    """
    if logits.shape != logit_change.shape:
        raise ValueError(
            "logprob_logit_covariance: logits shape "
            f"{tuple(logits.shape)} must equal logit_change shape {tuple(logit_change.shape)}"
        )
    probs, log_probs = _finite_log_probs(logits)
    dz = torch.where(probs > 0, logit_change, torch.zeros_like(logit_change))
    mean_log_prob = (probs * log_probs).sum(dim=-1, keepdim=True)  # (..., 1)
    mean_dz = (probs * dz).sum(dim=-1, keepdim=True)  # (..., 1)
    return (probs * (log_probs - mean_log_prob) * (dz - mean_dz)).sum(dim=-1)


def predicted_entropy_change(logits: torch.Tensor, logit_change: torch.Tensor) -> torch.Tensor:
    """First-order prediction of ``H(z + dz) - H(z)`` per state: ``-Cov(log pi, dz)``, in nats."""
    return -logprob_logit_covariance(logits, logit_change)


def _expected_advantage(probs: torch.Tensor, action_values: torch.Tensor) -> torch.Tensor:
    """``A(s, a) = Q(s, a) - E_{a~pi} Q(s, a)`` so that ``E_pi A = 0``. Shapes ``(..., V)``."""
    return action_values - (probs * action_values).sum(dim=-1, keepdim=True)


def pg_logit_update(
    logits: torch.Tensor, action_values: torch.Tensor, step_size: float
) -> torch.Tensor:
    """Exact expected policy-gradient (REINFORCE, rule "pg") logit change of a tabular softmax
    policy.

    ``dz_a = eta * pi_a * A_a`` with ``A = Q - E_pi Q`` (docs/THEORY.md s.3, Theorem 1).

    Args:
        logits: ``(..., V)`` current logits.
        action_values: ``(..., V)`` expected reward Q(s, a) of each action.
        step_size: eta, the learning rate on the logits.

    Returns:
        ``(..., V)`` logit change.
    """
    probs = torch.softmax(logits, dim=-1)
    return step_size * probs * _expected_advantage(probs, action_values)


def npg_logit_update(
    logits: torch.Tensor, action_values: torch.Tensor, step_size: float
) -> torch.Tensor:
    """Exact expected natural policy-gradient (rule "npg") logit change: ``dz_a = eta * A_a``
    (Theorem 2).

    Shapes as in :func:`pg_logit_update`.
    """
    probs = torch.softmax(logits, dim=-1)
    return step_size * _expected_advantage(probs, action_values)
