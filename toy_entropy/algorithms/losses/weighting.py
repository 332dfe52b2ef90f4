"""Per-token weights of the policy-gradient term: sample polarity and the entropy quantile.

Both knobs scale the advantage a token's policy-gradient term sees, ``A_i -> u_i * A_i`` with
``u_i >= 0``. Every registered loss is positively homogeneous in A at a token (``-A * ratio``,
PPO's ``max(pg1, pg2)``, the dual clip), so this equals multiplying the token's policy term by
``u_i``, while the KL-Cov penalty, the entropy bonus and the reference KL are untouched:

- ``positive_sample_weight`` / ``negative_sample_weight`` (W-REINFORCE, arXiv 2506.01347):
  ``u = positive_sample_weight`` where A > 0 and ``negative_sample_weight`` where A < 0.
  PSR (positive samples only) is (1, 0), NSR (negative only) (0, 1), W-REINFORCE (0.1, 1).
- ``top_entropy_quantile`` (TRL's rho, arXiv 2506.01939): ``u = 0`` at the tokens outside the
  batch-global top-entropy selection (``TokenSelection.entropy_kept``).

The normalisers of the aggregation stay those of all valid tokens (as TRL's entropy mask),
so weighting a token by 0 removes its term without rescaling the others.
"""

from __future__ import annotations

import torch

from toy_entropy.algorithms.losses.config import PolicyLossConfig

__all__ = ["policy_gradient_weights"]


def policy_gradient_weights(
    config: PolicyLossConfig, advantages: torch.Tensor, entropy_kept: torch.Tensor | None
) -> torch.Tensor | None:
    """``(B, T)`` weights ``u >= 0`` of the tokens' policy-gradient terms, or None if all are 1.

    Args:
        config: the loss config (``positive_sample_weight``, ``negative_sample_weight``).
        advantages: ``(B, T)`` per-token advantages (their sign picks the weight; at A = 0
            the weight does not matter, the term is 0).
        entropy_kept: ``(B, T)`` bool tokens kept by ``top_entropy_quantile``, or None.

    Returns:
        ``(B, T)`` in ``advantages.dtype``; no host sync.
    """
    positive, negative = config.positive_sample_weight, config.negative_sample_weight
    weights = None
    if positive != 1.0 or negative != 1.0:
        # negative + (positive - negative) * [A > 0]: a multiply-add instead of two where().
        weights = (advantages > 0).to(advantages.dtype).mul_(positive - negative).add_(negative)
    if entropy_kept is not None:
        kept = entropy_kept.to(advantages.dtype)  # (B, T) 0/1
        weights = kept if weights is None else weights.mul_(kept)
    return weights
