"""The registered policy losses (pg, vanilla, clip_cov, kl_cov) and the loss entry points.

Per-token losses over ``(B, T)`` tensors, with ``ratio = exp(clamp(lp - lp_old))``,
``pg1 = -A * ratio`` and ``pg2 = -A * clamp(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)``:

- ``pg``:       ``-A * lp`` (REINFORCE; same gradient as ``-A * ratio`` at ratio 1).
- ``vanilla``:  ``max(pg1, pg2)`` (PPO; clip-higher when clip_ratio_high > clip_ratio_low;
  dual clip ``min(., -A * clip_ratio_c)`` for A < 0 when clip_ratio_c is set).
- ``clip_cov``: vanilla, but exactly 0 (value and gradient) at the selected tokens.
- ``kl_cov``:   ``pg1 + ppo_kl_coef * |lp - lp_old|`` at the selected tokens, ``pg1`` elsewhere
  (no PPO clip, as in the reference, unless ``kl_cov_ppo_clip``). The penalty and its
  gradient vanish while lp == lp_old, so KL-Cov equals the plain ratio loss on the first,
  fully on-policy update of each rollout and acts only on the later updates.

Which tokens are selected is decided once per optimisation batch by
:func:`~toy_entropy.algorithms.losses.selection.select_tokens` (docs/THEORY.md section 5 for the
semantics, section 6 for the reference code's defects this avoids). Typical use with gradient
accumulation::

    with torch.no_grad():
        lp_all = policy_log_probs(batch)                       # (B, T), whole batch
    selection = select_tokens(cfg, lp_all, old_lp, adv, mask, generator=gen)
    for rows in micro_batches:                                 # slices of the B rows
        lp = policy_log_probs(batch[rows])
        loss, metrics = compute_policy_loss(
            cfg, lp, old_lp[rows], adv[rows], mask[rows], selection[rows])
        loss.backward()                                        # grads sum to the full batch's

Losses and metrics of the micro-batches add up to those of the whole batch. With data
parallelism, pass ``dist`` to ``select_tokens`` and *sum* the gradients over ranks (DDP
averages: multiply the loss by the world size).
"""

from __future__ import annotations

import torch

from toy_entropy.algorithms.losses.aggregation import aggregate, zero_invalid
from toy_entropy.algorithms.losses.checks import check_token_tensors
from toy_entropy.algorithms.losses.config import PolicyLossConfig
from toy_entropy.algorithms.losses.diagnostics import clip_metrics, rollout_kl_metrics
from toy_entropy.algorithms.losses.ratio import RatioTerms, clipped_surrogate, ratio_terms
from toy_entropy.algorithms.losses.registry import get_policy_loss, register_policy_loss
from toy_entropy.algorithms.losses.regularizers import kl_estimate
from toy_entropy.algorithms.losses.selection import TokenSelection, select_tokens
from toy_entropy.algorithms.losses.weighting import policy_gradient_weights

__all__ = ["compute_policy_loss", "policy_loss"]

Metrics = dict[str, torch.Tensor]


def _aggregate_with_metrics(
    per_token: torch.Tensor,
    terms: RatioTerms,
    advantages: torch.Tensor,
    valid: torch.Tensor,
    config: PolicyLossConfig,
    selection: TokenSelection,
    clips: bool,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Aggregate ``per_token`` (B, T) (``weights`` as in :func:`aggregate`), add the metrics."""
    loss = aggregate(per_token, valid, config.loss_agg_mode, selection.norm, weights)
    metrics = rollout_kl_metrics(terms, valid, selection.norm)
    if clips:
        metrics |= clip_metrics(terms, advantages, valid, config, selection.norm)
    return loss, metrics


@register_policy_loss("pg")
def pg_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    valid: torch.Tensor,
    config: PolicyLossConfig,
    selection: TokenSelection,
) -> tuple[torch.Tensor, Metrics]:
    """REINFORCE ``-A * lp``; the ratio is only used for the KL metrics. Shapes ``(B, T)``."""
    terms = ratio_terms(log_probs.detach(), old_log_probs, advantages, config)
    per_token = -advantages * log_probs
    return _aggregate_with_metrics(
        per_token, terms, advantages, valid, config, selection, clips=False
    )


@register_policy_loss("vanilla")
def vanilla_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    valid: torch.Tensor,
    config: PolicyLossConfig,
    selection: TokenSelection,
) -> tuple[torch.Tensor, Metrics]:
    """PPO clipped surrogate (clip-higher, dual clip per config). Shapes ``(B, T)``."""
    terms = ratio_terms(log_probs, old_log_probs, advantages, config)
    per_token = clipped_surrogate(terms, advantages, config)
    return _aggregate_with_metrics(per_token, terms, advantages, valid, config, selection, True)


@register_policy_loss("clip_cov")
def clip_cov_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    valid: torch.Tensor,
    config: PolicyLossConfig,
    selection: TokenSelection,
) -> tuple[torch.Tensor, Metrics]:
    """Clip-Cov: the PPO surrogate with ``selection.selected`` tokens set to exactly 0 (no
    gradient). The paper runs it with clip_ratio_low = clip_ratio_high = 1. Shapes ``(B, T)``."""
    terms = ratio_terms(log_probs, old_log_probs, advantages, config)
    per_token = clipped_surrogate(terms, advantages, config)
    keep = valid & ~selection.selected  # (B, T); weight 0: value and gradient exactly 0
    return _aggregate_with_metrics(
        per_token, terms, advantages, valid, config, selection, clips=True, weights=keep
    )


@register_policy_loss("kl_cov")
def kl_cov_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    valid: torch.Tensor,
    config: PolicyLossConfig,
    selection: TokenSelection,
) -> tuple[torch.Tensor, Metrics]:
    """KL-Cov: ``-A * ratio`` plus ``ppo_kl_coef * |lp - lp_old|`` at ``selection.selected``.

    Inert on the first on-policy update (lp == lp_old: penalty and its gradient are 0).
    Shapes ``(B, T)``.
    """
    terms = ratio_terms(log_probs, old_log_probs, advantages, config)
    base = clipped_surrogate(terms, advantages, config) if config.kl_cov_ppo_clip else terms.pg1
    penalty = config.ppo_kl_coef * (log_probs - old_log_probs).abs()  # (B, T)
    per_token = base + penalty * selection.selected.to(log_probs.dtype)
    return _aggregate_with_metrics(
        per_token, terms, advantages, valid, config, selection, clips=config.kl_cov_ppo_clip
    )


def compute_policy_loss(
    config: PolicyLossConfig,
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    selection: TokenSelection,
    entropy: torch.Tensor | None = None,
    ref_log_probs: torch.Tensor | None = None,
    entropy_coeff: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Loss of one micro-batch (rows of the optimisation batch), with the regularisers.

    ``loss = policy - entropy_coeff * agg(entropy) + kl_loss_coef * agg(KL_est(pi || pi_ref))``,
    every term normalised by the whole batch's ``selection.norm``. The policy term of each
    token is weighted by :func:`~toy_entropy.algorithms.losses.weighting.policy_gradient_weights`
    (``positive_sample_weight``, ``negative_sample_weight``, ``selection.entropy_kept``).

    Args:
        config: the loss config.
        log_probs: ``(B, T)`` current log-probs of the sampled tokens, with grad.
        old_log_probs: ``(B, T)`` rollout log-probs.
        advantages: ``(B, T)`` per-token advantages.
        response_mask: ``(B, T)`` nonzero at valid response tokens. Values at padded
            positions are ignored (selected away, so NaN there does no harm).
        selection: ``select_tokens(...)[rows]`` for these rows.
        entropy: ``(B, T)`` full-distribution entropy per position, in nats (e.g.
            :func:`toy_entropy.theory.entropy.entropy_from_logits`), with grad; needed when
            ``entropy_coeff != 0`` or ``use_adaptive_entropy``, logged as ``loss/entropy``
            whenever given.
        ref_log_probs: ``(B, T)`` log-probs under the frozen reference policy; needed when
            ``kl_loss_coef != 0``, logged as ``loss/kl_ref`` whenever given.
        entropy_coeff: overrides ``config.entropy_coeff``, e.g. the 0-dim device tensor
            :attr:`~toy_entropy.algorithms.losses.adaptive.AdaptiveEntropyCoef.value` (no host
            sync).

    Returns:
        ``(loss, metrics)``: 0-dim loss and 0-dim detached metrics, both additive over
        micro-batches (``loss/policy``, ``loss/entropy``, ``loss/kl_ref``, ``loss/total``,
        ``ratio/clipfrac_*``, ``kl/rollout_*``).
    """
    caller = "compute_policy_loss"
    optional = {"entropy": entropy, "ref_log_probs": ref_log_probs}
    check_token_tensors(
        caller,
        response_mask,
        log_probs=log_probs,
        old_log_probs=old_log_probs,
        advantages=advantages,
        **{name: value for name, value in optional.items() if value is not None},
    )
    if not isinstance(selection, TokenSelection):
        raise TypeError(f"{caller}: selection must be a TokenSelection, got {type(selection)}")
    if selection.selected.shape != response_mask.shape:
        raise ValueError(
            f"{caller}: selection covers shape {tuple(selection.selected.shape)} but the "
            f"micro-batch has shape {tuple(response_mask.shape)}; pass selection[rows]"
        )
    for name, coef_name in (("entropy", "entropy_coeff"), ("ref_log_probs", "kl_loss_coef")):
        if optional[name] is None and getattr(config, coef_name) != 0:
            raise ValueError(
                f"{caller}: {coef_name}={getattr(config, coef_name)!r} needs {name} (B, T)"
            )
    adaptive = config.use_adaptive_entropy or isinstance(entropy_coeff, torch.Tensor)
    if entropy is None and adaptive:
        raise ValueError(f"{caller}: an adaptive entropy coefficient needs entropy (B, T)")
    if entropy_coeff is None:
        entropy_coeff = config.entropy_coeff

    valid = response_mask.bool()  # (B, T)
    # Values at padded positions are ignored, whatever they hold (NaN included).
    log_probs, old_log_probs, advantages = (
        zero_invalid(x, valid) for x in (log_probs, old_log_probs.detach(), advantages.detach())
    )
    entropy = None if entropy is None else zero_invalid(entropy, valid)
    ref_log_probs = None if ref_log_probs is None else zero_invalid(ref_log_probs, valid)
    mode, norm = config.loss_agg_mode, selection.norm
    weights = policy_gradient_weights(config, advantages, selection.entropy_kept)  # (B, T)
    pg_advantages = advantages if weights is None else advantages * weights
    policy, metrics = get_policy_loss(config.loss_mode)(
        log_probs, old_log_probs, pg_advantages, valid, config, selection
    )
    metrics["loss/policy"] = policy.detach()
    loss = policy
    if entropy is not None:
        if not adaptive and entropy_coeff == 0:
            entropy = entropy.detach()
        mean_entropy = aggregate(entropy, valid, mode, norm)
        metrics["loss/entropy"] = mean_entropy.detach()
        if isinstance(entropy_coeff, torch.Tensor):  # e.g. a float64 controller value
            entropy_coeff = entropy_coeff.to(mean_entropy.dtype)
        loss = loss - entropy_coeff * mean_entropy
    if ref_log_probs is not None:
        kl_ref = kl_estimate(log_probs, ref_log_probs, config.kl_loss_type, config.log_ratio_clamp)
        if config.kl_loss_coef == 0:
            kl_ref = kl_ref.detach()
        mean_kl = aggregate(kl_ref, valid, mode, norm)
        metrics["loss/kl_ref"] = mean_kl.detach()
        loss = loss + config.kl_loss_coef * mean_kl
    metrics["loss/total"] = loss.detach()
    return loss, metrics


def policy_loss(
    config: PolicyLossConfig,
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    entropy: torch.Tensor | None = None,
    ref_log_probs: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    dist: object = None,
    cov_stats: bool = False,
    entropy_coeff: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """One call for a whole optimisation batch: :func:`select_tokens` on the detached
    ``log_probs`` (and ``entropy``, for ``top_entropy_quantile``), then
    :func:`compute_policy_loss`. Arguments as there (shapes ``(B, T)``); the metrics include
    the selection's batch-level ones (with the paper's top fractions when ``cov_stats``)."""
    selection = select_tokens(
        config,
        log_probs.detach(),
        old_log_probs,
        advantages,
        response_mask,
        generator=generator,
        dist=dist,
        cov_stats=cov_stats,
        entropy=None if entropy is None else entropy.detach(),
    )
    loss, metrics = compute_policy_loss(
        config,
        log_probs,
        old_log_probs,
        advantages,
        response_mask,
        selection,
        entropy=entropy,
        ref_log_probs=ref_log_probs,
        entropy_coeff=entropy_coeff,
    )
    return loss, selection.metrics | metrics
