"""Rollout hooks and batch statistics the trainer does not log (see ``experiments/sweeps.py``).

- :func:`covariance_by_accuracy`: the token covariance of each prompt group, bucketed by the
  group's accuracy (hard / medium / easy prompts), the paper's "covariance by difficulty";
- :func:`sequence_covariance` and :func:`token_covariance_mean`: the per-prompt sequence-level
  covariance of Theorem 1 as the paper plotted it, and the batch token covariance the
  algorithms use (docs/THEORY.md sections 3-4); :func:`granularity_covariances` logs both;
- :class:`ClipHigherAdmitted`, an update probe: at every optimiser step, the covariance of the
  tokens that clip-higher admits beyond the symmetric clip (the paper: about -0.03).

All take the :class:`~toy_entropy.training.rollout.Rollout` of ``Trainer.rollout`` (or any object
with the same attributes) and compute on its device; the hooks return host floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from toy_entropy.algorithms.losses import masked_token_covariance
from toy_entropy.training.rollout import Rollout

__all__ = [
    "ACCURACY_BUCKETS",
    "batch_token_covariance",
    "group_covariance",
    "covariance_by_accuracy",
    "sequence_covariance",
    "token_covariance_mean",
    "granularity_covariances",
    "ClipHigherAdmitted",
]

ACCURACY_BUCKETS = {"hard": (0.0, 1 / 3), "medium": (1 / 3, 2 / 3), "easy": (2 / 3, 1.0)}
"""Group accuracy buckets ``low < accuracy <= high``; all-wrong (0) and all-right (1) groups,
whose GRPO advantages are zero, are left out (``easy`` excludes 1)."""


def batch_token_covariance(rollout: Rollout) -> torch.Tensor:
    """``(B, T)`` token covariance ``(lp - mean lp)(A - mean A)``, means over the valid tokens
    of the whole batch; 0 at invalid positions."""
    lp, adv = rollout.old_log_probs.double(), rollout.advantages.double()  # (B, T)
    return masked_token_covariance(lp, adv, rollout.mask)


def group_covariance(
    rollout: Rollout, num_groups: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per prompt group: accuracy, mean token covariance and valid-token count, each ``(P,)``.

    Groups are contiguous blocks of ``B / num_groups`` rows (how the trainer lays them out).
    """
    cov = batch_token_covariance(rollout)  # (B, T)
    tokens = rollout.mask.double().sum(dim=1).view(num_groups, -1).sum(dim=1)  # (P,)
    cov_sum = cov.sum(dim=1).view(num_groups, -1).sum(dim=1)  # (P,)
    accuracy = rollout.rewards.double().view(num_groups, -1).mean(dim=1)  # (P,)
    return accuracy, cov_sum / tokens.clamp(min=1), tokens


def covariance_by_accuracy(trainer, rollout: Rollout) -> dict[str, float]:
    """Token-weighted mean covariance of the groups in each :data:`ACCURACY_BUCKETS` bucket.

    Returns ``cov_by_accuracy/<bucket>`` (NaN when no group falls in it) and
    ``cov_by_accuracy/<bucket>_groups`` (how many groups did).
    """
    accuracy, cov, tokens = group_covariance(rollout, trainer.config.num_prompts)
    stacked = []
    for low, high in ACCURACY_BUCKETS.values():
        inside = (accuracy > low) & (accuracy <= high) & (accuracy < 1)  # (P,)
        weight = tokens * inside
        stacked += [(cov * weight).sum() / weight.sum(), inside.sum().double()]
    values = torch.stack(stacked).tolist()  # one host transfer
    metrics = {}
    for i, name in enumerate(ACCURACY_BUCKETS):
        metrics[f"cov_by_accuracy/{name}"] = values[2 * i]
        metrics[f"cov_by_accuracy/{name}_groups"] = values[2 * i + 1]
    return metrics


def sequence_covariance(
    log_probs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, group_size: int
) -> torch.Tensor:
    """Theorem 1 at the sequence level, as the paper verified it: per prompt, the covariance
    over its G responses of the length-normalised log-probability and the advantage; then the
    mean over prompts.

    Args:
        log_probs: ``(B, T)`` log-probs of the sampled tokens, B = P * G, groups contiguous.
        advantages: ``(B,)`` or ``(B, T)`` (the first column is used) sequence advantages.
        mask: ``(B, T)`` valid response tokens.
        group_size: G >= 2.

    Returns:
        0-dim tensor: ``mean_p Cov_g(mean_t log pi(y_gt), A_g)`` (population covariance).
    """
    weights = mask.double()
    seq_lp = (log_probs.double() * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)  # (B,)
    adv = advantages[:, 0] if advantages.dim() == 2 else advantages  # (B,)
    seq_lp, adv = seq_lp.view(-1, group_size), adv.double().view(-1, group_size)  # (P, G)
    centred = (seq_lp - seq_lp.mean(dim=1, keepdim=True)) * (adv - adv.mean(dim=1, keepdim=True))
    return centred.mean(dim=1).mean()


def token_covariance_mean(rollout: Rollout) -> torch.Tensor:
    """0-dim mean of the batch token covariance over the valid tokens (``cov/mean``)."""
    return batch_token_covariance(rollout).sum() / rollout.mask.sum().clamp(min=1)


def granularity_covariances(trainer, rollout: Rollout) -> dict[str, float]:
    """Hook: the two coarse predictors of the entropy change, with the sign of a prediction.

    ``granularity/neg_sequence_cov`` = -(per-prompt sequence covariance) and
    ``granularity/neg_token_cov`` = -(batch token covariance): each should rise and fall with
    the actual entropy change (up to an unknown positive scale, the step size).
    """
    sequence = sequence_covariance(
        rollout.old_log_probs, rollout.advantages, rollout.mask, trainer.config.num_generations
    )
    values = torch.stack([-sequence, -token_covariance_mean(rollout)]).tolist()
    return {"granularity/neg_sequence_cov": values[0], "granularity/neg_token_cov": values[1]}


@dataclass(frozen=True)
class ClipHigherAdmitted:
    """Update probe: the tokens clip-higher admits and their covariance, per optimiser step.

    Before each optimiser step, with the current policy's log-probs of the mini-batch (one extra
    no-grad forward pass): ratio = pi / pi_old, the covariance ``(lp - mean lp)(A - mean A)``
    over the mini-batch's valid tokens with the current log-probs (as the loss library's
    selection computes it), and the admitted tokens: A > 0 and
    ``1 + clip_ratio_low < ratio <= 1 + clip_ratio_high``, the positive-advantage tokens a
    symmetric clip would stop and clip-higher lets through. On the first, on-policy update of a
    rollout every ratio is 1 and nothing is admitted.

    Step metrics: ``clip_higher/admitted_cov_mean`` (NaN when nothing was admitted),
    ``clip_higher/admitted_frac``, ``clip_higher/cov_mean`` (all valid tokens, the same
    updates), and the totals ``clip_higher/admitted_count`` and ``clip_higher/admitted_cov_sum``
    for exact pooling over steps.
    """

    def before_update(
        self, trainer, rollout: Rollout, rows: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        config = trainer.loss_config
        mask = rollout.mask[rows]  # (b, T)
        with torch.no_grad():
            logits = trainer.response_logits(trainer.model, rollout.tokens[rows],
                                             rollout.attention[rows])  # (b, T, V)  # fmt: skip
            lp = torch.log_softmax(logits.double(), dim=-1)
            lp = lp.gather(-1, rollout.responses[rows].unsqueeze(-1)).squeeze(-1)  # (b, T)
        old, adv = rollout.old_log_probs[rows].double(), rollout.advantages[rows].double()
        cov = masked_token_covariance(lp, adv, mask)  # (b, T)
        ratio = (lp - old).exp()
        admitted = mask & (adv > 0) & (ratio > 1 + config.clip_ratio_low)
        admitted &= ratio <= 1 + config.clip_ratio_high
        return {
            "clip_higher.count": admitted.sum().double(),
            "clip_higher.cov_sum": (cov * admitted).sum(),
            "clip_higher.valid": mask.double().sum(),
            "clip_higher.all_cov_sum": cov.sum(),  # 0 at invalid positions
        }

    def finish(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        count, cov_sum, valid, all_cov = (
            float(totals[f"clip_higher.{k}"]) for k in ("count", "cov_sum", "valid", "all_cov_sum")
        )
        return {
            "clip_higher/admitted_cov_mean": cov_sum / count if count else float("nan"),
            "clip_higher/admitted_frac": count / max(valid, 1.0),
            "clip_higher/cov_mean": all_cov / max(valid, 1.0),
            "clip_higher/admitted_count": count,
            "clip_higher/admitted_cov_sum": cov_sum,
        }
