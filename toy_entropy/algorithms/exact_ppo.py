"""PPO on the exact batch of a prefix policy: several clipped updates per rollout, no sampling.

For a :class:`~toy_entropy.models.prefix_policy.PrefixPolicy` the limit of infinitely many sampled
responses per prompt is known: response r of prompt p appears with frequency
``pi_old(r|p)``. :class:`ExactBatch` holds that batch (the rollout log-probs of every token of
every response, the per-response weights ``pi_old(r|p) / P`` and an advantage per response),
and :func:`ppo_updates` takes plain gradient steps on the logits against the project's own PPO
surrogate (:func:`~toy_entropy.algorithms.losses.ratio.ratio_terms`,
:func:`~toy_entropy.algorithms.losses.ratio.clipped_surrogate`, the sample weights of
:func:`~toy_entropy.algorithms.losses.weighting.policy_gradient_weights`)::

    L(z) = sum_{p, r, t} w(p, r) * u(A) * max(-A ratio, -A clamp(ratio, 1 - eps_low, 1 + eps_high))

summed over the tokens of each response (seq-mean-token-sum), so that the first, on-policy
update equals :meth:`PrefixPolicy.expected_update` (rule "pg") with the advantages as rewards:
``eta * grad_z (1/P) sum_p E_{y ~ pi(.|p)} A(p, y)``. The later updates of a rollout see
importance ratios, and PPO's clip acts on them.

``shared_weight`` s couples the prompts like a model whose logits are ``z_p = sqrt(s) u + v_p``
with a shared part u: each step moves prompt p's logits by ``g_p + s * sum_q g_q`` (g the
prompts' own steps); s = 0 is the tabular policy, whose prompts learn independently.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from toy_entropy.algorithms.losses.config import PolicyLossConfig
from toy_entropy.algorithms.losses.ratio import clipped_surrogate, ratio_terms
from toy_entropy.algorithms.losses.weighting import policy_gradient_weights
from toy_entropy.models.model import sample_categorical
from toy_entropy.models.prefix_policy import PrefixPolicy

__all__ = [
    "CLIP_OFF_HIGH",
    "ExactBatch",
    "clip_config",
    "token_log_probs",
    "rollout_batch",
    "sampled_responses",
    "surrogate",
    "ppo_updates",
    "sequence_kl",
]

CLIP_OFF_HIGH = 1e9
"""``clip_ratio_high`` that never clips (``clip_ratio_low = 1`` never clips either: ratio > 0)."""


def clip_config(
    eps_low: float | None, eps_high: float | None, **loss_fields: float
) -> PolicyLossConfig:
    """A vanilla PPO loss config; ``None`` switches that side of the clip off."""
    return PolicyLossConfig(
        loss_mode="vanilla",
        clip_ratio_low=1.0 if eps_low is None else eps_low,
        clip_ratio_high=CLIP_OFF_HIGH if eps_high is None else eps_high,
        **loss_fields,
    )


def token_log_probs(policy: PrefixPolicy, logits: torch.Tensor) -> torch.Tensor:
    """``(P, R, L)`` log pi of every token of every enumerated response, 0 after its end.

    Differentiable in ``logits`` (P, S, V).
    """
    P, S, V = logits.shape
    flat = torch.log_softmax(logits, dim=-1).reshape(P, S * V)  # (P, S*V)
    index = policy.response_states * V + policy.responses.clamp(0, V - 1)  # (R, L)
    return flat[:, index] * policy.response_mask  # (P, R, L)


@dataclass(frozen=True)
class ExactBatch:
    """The infinite-sample rollout batch of a prefix policy (module docstring)."""

    old_log_probs: torch.Tensor
    """``(P, R, L)`` rollout log-probs of every token (0 after the end)."""
    weights: torch.Tensor
    """``(P, R)`` ``pi_old(r|p) / P``: each response's share of the batch."""
    advantages: torch.Tensor
    """``(P, R)`` advantage of every response."""


@torch.no_grad()
def rollout_batch(
    policy: PrefixPolicy, advantages: torch.Tensor, weights: torch.Tensor | None = None
) -> ExactBatch:
    """The batch of the policy's current logits with ``advantages`` (P, R).

    ``weights`` (P, R): each response's share of the batch; None is the infinite-sample
    batch ``pi(r|p) / P``, :func:`sampled_responses`' counts / (G P) a sampled one.
    """
    logits = policy.logits.detach()
    if weights is None:
        weights = policy.response_probs(logits) / policy.num_prompts
    return ExactBatch(
        old_log_probs=token_log_probs(policy, logits),
        weights=weights.to(logits.dtype),
        advantages=advantages.to(logits.dtype),
    )


@torch.no_grad()
def sampled_responses(
    policy: PrefixPolicy, group_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """G responses per prompt from the policy: ``(P, G)`` response indices and the ``(P, R)``
    batch weights ``count / (G P)`` of :func:`rollout_batch`."""
    P, G = policy.num_prompts, group_size
    probs = policy.response_probs(policy.logits.detach())  # (P, R)
    index = sample_categorical(probs.repeat_interleave(G, dim=0), generator).view(P, G)
    counts = torch.zeros_like(probs).scatter_add_(
        1, index, torch.ones_like(index, dtype=probs.dtype)
    )
    return index, counts / (G * P)


def surrogate(
    policy: PrefixPolicy, logits: torch.Tensor, batch: ExactBatch, config: PolicyLossConfig
) -> torch.Tensor:
    """The batch's PPO loss (0-dim) at ``logits`` (P, S, V), differentiable (module docstring)."""
    mask = policy.response_mask  # (R, L)
    log_probs = token_log_probs(policy, logits)  # (P, R, L)
    advantages = batch.advantages[:, :, None].expand_as(log_probs)  # (P, R, L)
    weights = policy_gradient_weights(config, advantages, None)
    if weights is not None:
        advantages = advantages * weights
    terms = ratio_terms(log_probs, batch.old_log_probs, advantages, config)
    per_token = clipped_surrogate(terms, advantages, config)  # (P, R, L)
    return (per_token * mask * batch.weights[:, :, None]).sum()


def ppo_updates(
    policy: PrefixPolicy,
    batch: ExactBatch,
    config: PolicyLossConfig,
    step_size: float,
    updates: int,
    shared_weight: float = 0.0,
) -> list[torch.Tensor]:
    """``updates`` gradient steps ``z <- z - eta * grad L`` on one rollout's batch.

    Starts from the policy's logits, which are left unchanged.

    Args:
        policy: the policy (its logits are the rollout policy's).
        batch: :func:`rollout_batch` of it.
        config: the loss (clip_ratio_low / high, sample weights, log_ratio_clamp).
        step_size: eta, on the logits.
        updates: >= 1 steps.
        shared_weight: s >= 0, the coupling of the prompts (module docstring).

    Returns:
        The ``updates`` detached logits ``(P, S, V)`` after each step.
    """
    logits = policy.logits.detach().clone()
    out = []
    for _ in range(updates):
        logits.requires_grad_(True)
        (grad,) = torch.autograd.grad(surrogate(policy, logits, batch, config), logits)
        step = -step_size * grad  # (P, S, V)
        if shared_weight:
            step = step + shared_weight * step.sum(dim=0, keepdim=True)
        logits = (logits.detach() + step).detach()
        out.append(logits)
    return out


@torch.no_grad()
def sequence_kl(policy: PrefixPolicy, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``(P,)`` KL(pi_old(.|p) || pi_new(.|p)) over complete responses, in nats."""
    p_old, p_new = policy.response_probs(old), policy.response_probs(new)  # (P, R)
    terms = p_old * (p_old.clamp(min=1e-300).log() - p_new.clamp(min=1e-300).log())
    return terms.sum(dim=1)
