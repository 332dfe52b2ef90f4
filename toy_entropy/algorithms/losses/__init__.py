"""Policy losses of the paper: PPO / clip-higher, Clip-Cov, KL-Cov, with regularisers.

Knobs of the methods that followed it: sample polarity (PSR / NSR / W-REINFORCE), the top
entropy quantile (forking tokens) and the adaptive entropy coefficient
(:mod:`toy_entropy.algorithms.losses.weighting`, :mod:`toy_entropy.algorithms.losses.adaptive`).

Batch-global (selection and normalisers over the whole optimisation batch and all ranks), free
of host syncs, seeded. See :mod:`toy_entropy.algorithms.losses.policy_losses` for the loss formulas
and the two-phase use, :mod:`toy_entropy.algorithms.losses.selection` for the selection.
"""

from toy_entropy.algorithms.losses.adaptive import AdaptiveEntropyCoef
from toy_entropy.algorithms.losses.aggregation import AGG_MODES, AggregationNorm, aggregate
from toy_entropy.algorithms.losses.config import PolicyLossConfig
from toy_entropy.algorithms.losses.diagnostics import COV_TOP_FRACTIONS
from toy_entropy.algorithms.losses.distributed import Collectives, SingleProcess, TorchDistributed
from toy_entropy.algorithms.losses.policy_losses import compute_policy_loss, policy_loss
from toy_entropy.algorithms.losses.registry import (
    POLICY_LOSSES,
    get_policy_loss,
    register_policy_loss,
)
from toy_entropy.algorithms.losses.regularizers import KL_ESTIMATORS, kl_estimate
from toy_entropy.algorithms.losses.selection import (
    TokenSelection,
    masked_token_covariance,
    select_tokens,
    token_covariance,
)
from toy_entropy.algorithms.losses.weighting import policy_gradient_weights

__all__ = [
    "AGG_MODES",
    "AdaptiveEntropyCoef",
    "COV_TOP_FRACTIONS",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "AggregationNorm",
    "Collectives",
    "PolicyLossConfig",
    "SingleProcess",
    "TokenSelection",
    "TorchDistributed",
    "aggregate",
    "compute_policy_loss",
    "get_policy_loss",
    "kl_estimate",
    "policy_gradient_weights",
    "policy_loss",
    "register_policy_loss",
    "select_tokens",
    "token_covariance",
    "masked_token_covariance",
]
