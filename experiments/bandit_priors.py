"""Named pretrained-like priors for bandit experiments.

Rewards are verifiable-style: in each context one arm is "correct" (Bernoulli mean
``CORRECT_MEAN``), every other arm is "wrong" (mean ``WRONG_MEAN``). So every arm but the best
has a negative advantage, and the sign of Cov(log pi, A) is set by how likely the best arm is.
"""

from __future__ import annotations

import numpy as np

from toy_entropy.envs.bandit_problem import BanditProblem, make_bandit_problem

__all__ = ["PRIOR_NAMES", "prior_problem"]

PRIOR_NAMES = ("best-likely", "best-rare", "random")
CORRECT_MEAN = 0.9
WRONG_MEAN = 0.1


def _one_correct_arm(num_contexts: int, num_arms: int) -> np.ndarray:
    """``(S, K)`` means: arm ``s % K`` is correct in context s."""
    means = np.full((num_contexts, num_arms), WRONG_MEAN)
    means[np.arange(num_contexts), np.arange(num_contexts) % num_arms] = CORRECT_MEAN
    return means


def prior_problem(
    name: str, num_contexts: int, num_arms: int, exponent: float, seed: int = 0
) -> BanditProblem:
    """The bandit with a named prior.

    - ``"best-likely"``: Zipf prior whose most likely arm is the best one (positive covariance:
      entropy falls from the first step);
    - ``"best-rare"``: Zipf prior whose rarest arm is the best one (negative covariance at first:
      entropy rises before it collapses);
    - ``"random"``: Gaussian logits with standard deviation ``exponent``.
    """
    means = _one_correct_arm(num_contexts, num_arms)
    if name == "best-likely":
        return make_bandit_problem(
            num_contexts, num_arms, means, prior="zipf", prior_exponent=exponent
        )
    if name == "best-rare":
        return make_bandit_problem(
            num_contexts,
            num_arms,
            means,
            prior="zipf",
            prior_exponent=exponent,
            best_arm_rank=num_arms - 1,
        )
    if name == "random":
        return make_bandit_problem(
            num_contexts, num_arms, means, prior="random", prior_exponent=exponent, prior_seed=seed
        )
    raise ValueError(f"prior {name!r} is unknown: expected one of {PRIOR_NAMES}")
