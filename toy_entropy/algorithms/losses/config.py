"""Typed configuration of the policy losses, with field names from verl / TRL.

All "ratio" fields are fractions, not percents: ``clip_ratio_high=0.28`` lets the importance
ratio rise to 1.28, ``clip_cov_ratio=2e-4`` selects 0.02% of the valid tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from toy_entropy.algorithms.losses.aggregation import AGG_MODES
from toy_entropy.algorithms.losses.registry import POLICY_LOSSES
from toy_entropy.algorithms.losses.regularizers import KL_ESTIMATORS

__all__ = ["PolicyLossConfig", "QUANTILE_SCORES"]

QUANTILE_SCORES = ("entropy", "low_entropy", "random")
"""What ``top_entropy_quantile`` ranks tokens by (``top_entropy_quantile_by``)."""


@dataclass(frozen=True)
class PolicyLossConfig:
    """Everything a policy loss needs besides the tensors. Validated on construction."""

    loss_mode: str = "vanilla"
    """Registered loss: "pg" (REINFORCE, no ratio), "vanilla" (PPO clipped surrogate),
    "clip_cov", "kl_cov" (docs/THEORY.md section 5)."""
    clip_ratio_low: float = 0.2
    """PPO lower clip, a fraction in [0, 1]: the ratio is clamped below at 1 - clip_ratio_low."""
    clip_ratio_high: float = 0.2
    """PPO upper clip, a fraction >= 0: clamp above at 1 + clip_ratio_high. Clip-higher (DAPO)
    is clip_ratio_high > clip_ratio_low, e.g. 0.28."""
    clip_ratio_c: float | None = None
    """Dual-clip bound (> 1) for negative advantages: per-token loss at most -A * clip_ratio_c.
    None disables dual clip."""
    clip_cov_ratio: float = 2e-4
    """Clip-Cov: fraction in (0, 1] of the valid tokens whose gradient is removed (2e-4 = 0.02%)."""
    clip_cov_lb: float = 1.0
    """Clip-Cov: candidates have covariance strictly above this bound."""
    clip_cov_ub: float = 5.0
    """Clip-Cov: candidates have covariance strictly below this bound (> clip_cov_lb)."""
    kl_cov_ratio: float = 2e-3
    """KL-Cov: fraction in (0, 1] of the valid tokens (top covariance) that get the KL penalty."""
    ppo_kl_coef: float = 1.0
    """KL-Cov: coefficient (>= 0) of the penalty |log pi - log pi_old| on the selected tokens."""
    kl_cov_ppo_clip: bool = False
    """KL-Cov: use the PPO clipped surrogate instead of the plain ratio term. The reference code
    clips nothing (False)."""
    loss_agg_mode: str = "token-mean"
    """How per-token losses become a scalar: "token-mean", "seq-mean-token-mean",
    "seq-mean-token-sum", "seq-mean-token-sum-norm"."""
    loss_agg_norm: float | None = None
    """Constant length (> 0) that seq-mean-token-sum-norm divides each response's token sum by.
    None: the padded response length T (verl's default), which changes with the padding."""
    log_ratio_clamp: float = 20.0
    """log pi - log pi_old (and log pi_ref - log pi for k3) is clamped to +-this before exp."""
    entropy_coeff: float = 0.0
    """Entropy bonus: the loss gets -entropy_coeff * (aggregated full-distribution entropy)."""
    kl_loss_coef: float = 0.0
    """Reference KL penalty (>= 0): the loss gets +kl_loss_coef * (aggregated KL estimate)."""
    kl_loss_type: str = "k3"
    """Estimator of KL(pi || pi_ref) per sampled token: "k1", "k2", "k3", "abs"."""
    positive_sample_weight: float = 1.0
    """Weight (>= 0) of the policy-gradient term of tokens with advantage > 0 (W-REINFORCE's
    lambda, arXiv 2506.01347, is 0.1; 0 gives NSR, negative samples only)."""
    negative_sample_weight: float = 1.0
    """Weight (>= 0) of the policy-gradient term of tokens with advantage < 0 (0 gives PSR,
    positive samples only). Not both weights may be 0."""
    top_entropy_quantile: float = 1.0
    """TRL's rho (arXiv 2506.01939), a fraction in (0, 1]: only the max(1, floor(rho * N))
    valid tokens of highest full-distribution entropy in the whole optimisation batch (all
    micro-batches and ranks) get the policy gradient; 1.0 keeps every token."""
    top_entropy_quantile_by: str = "entropy"
    """What top_entropy_quantile keeps the top of: "entropy" (TRL's forking tokens),
    "low_entropy" (the lowest-entropy tokens, e.g. the bottom 80% with rho = 0.8) or "random"
    (a uniform random share, the control of the forking-token study)."""
    use_adaptive_entropy: bool = False
    """TRL / Skywork-OR1: adapt entropy_coeff after every step with
    :class:`~toy_entropy.algorithms.losses.adaptive.AdaptiveEntropyCoef` (+delta at or below the
    target entropy, -delta above it, clamped to [entropy_coef_min, entropy_coef_max])."""
    entropy_target: float = 0.2
    """Target of the adaptive entropy coefficient: mean per-token entropy in nats (>= 0)."""
    entropy_coef_delta: float = 0.005
    """Step (> 0) of the adaptive entropy coefficient per optimisation step."""
    entropy_coef_min: float = 0.0
    """Lower bound (>= 0) of the adaptive entropy coefficient."""
    entropy_coef_max: float = 1.0
    """Upper bound (>= entropy_coef_min) of the adaptive entropy coefficient."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field, its value and what is allowed."""
        _check_choice("loss_mode", self.loss_mode, sorted(POLICY_LOSSES))
        _check_choice("loss_agg_mode", self.loss_agg_mode, list(AGG_MODES))
        _check_choice("kl_loss_type", self.kl_loss_type, sorted(KL_ESTIMATORS))
        _check_choice("top_entropy_quantile_by", self.top_entropy_quantile_by, QUANTILE_SCORES)
        fraction = "a fraction in (0, 1] (2e-4 means 0.02% of the valid tokens)"
        checks = [
            ("clip_ratio_low", lambda x: 0 <= x <= 1, "a fraction in [0, 1]"),
            ("clip_ratio_high", lambda x: x >= 0, "a fraction >= 0"),
            ("clip_cov_ratio", lambda x: 0 < x <= 1, fraction),
            ("kl_cov_ratio", lambda x: 0 < x <= 1, fraction),
            ("clip_cov_lb", lambda x: True, "a finite number"),
            ("clip_cov_ub", lambda x: True, "a finite number"),
            ("ppo_kl_coef", lambda x: x >= 0, "a number >= 0"),
            ("log_ratio_clamp", lambda x: x > 0, "a number > 0"),
            ("entropy_coeff", lambda x: True, "a finite number"),
            ("kl_loss_coef", lambda x: x >= 0, "a number >= 0"),
            ("positive_sample_weight", lambda x: x >= 0, "a number >= 0"),
            ("negative_sample_weight", lambda x: x >= 0, "a number >= 0"),
            ("top_entropy_quantile", lambda x: 0 < x <= 1, "a fraction in (0, 1] (1 = all)"),
            ("entropy_target", lambda x: x >= 0, "a number >= 0 (nats)"),
            ("entropy_coef_delta", lambda x: x > 0, "a number > 0"),
            ("entropy_coef_min", lambda x: x >= 0, "a number >= 0"),
            ("entropy_coef_max", lambda x: x >= self.entropy_coef_min, ">= entropy_coef_min"),
        ]
        if self.clip_ratio_c is not None:
            checks.append(("clip_ratio_c", lambda x: x > 1, "None or a number > 1"))
        if self.loss_agg_norm is not None:
            checks.append(("loss_agg_norm", lambda x: x > 0, "None or a number > 0"))
        for field, ok, allowed in checks:
            _check_number(field, getattr(self, field), ok, allowed)
        if self.clip_cov_lb >= self.clip_cov_ub:
            raise ValueError(
                "PolicyLossConfig.clip_cov_lb must be < clip_cov_ub (the band is strict), got "
                f"clip_cov_lb={self.clip_cov_lb!r}, clip_cov_ub={self.clip_cov_ub!r}"
            )
        for flag in ("kl_cov_ppo_clip", "use_adaptive_entropy"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(
                    f"PolicyLossConfig.{flag} must be True or False, got {getattr(self, flag)!r}"
                )
        if self.positive_sample_weight == 0 and self.negative_sample_weight == 0:
            raise ValueError(
                "PolicyLossConfig.positive_sample_weight and negative_sample_weight must not both "
                "be 0 (no token would get a policy gradient), got 0 and 0"
            )
        if self.use_adaptive_entropy and not (
            self.entropy_coef_min <= self.entropy_coeff <= self.entropy_coef_max
        ):
            raise ValueError(
                "PolicyLossConfig.entropy_coeff is the adaptive coefficient's start and must lie "
                f"in [entropy_coef_min, entropy_coef_max] = [{self.entropy_coef_min!r}, "
                f"{self.entropy_coef_max!r}], got {self.entropy_coeff!r}"
            )


def _check_choice(field: str, value: object, allowed: list[str]) -> None:
    if value not in allowed:
        raise ValueError(f"PolicyLossConfig.{field} must be one of {allowed}, got {value!r}")


def _check_number(field: str, value: object, ok: Callable[[float], bool], allowed: str) -> None:
    """``value`` must be a finite real number (not a bool) for which ``ok(value)`` holds."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or not ok(value):
        raise ValueError(f"PolicyLossConfig.{field} must be {allowed}, got {value!r}")
