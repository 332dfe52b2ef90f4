"""Named pretrained-like priors for bandit experiments."""

from __future__ import annotations

from envs.bandit_problem import BanditProblem, make_bandit_problem

__all__ = ["PRIOR_NAMES", "prior_problem"]

PRIOR_NAMES = ("best-likely", "best-rare", "random")


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
    if name == "best-likely":
        return make_bandit_problem(num_contexts, num_arms, prior="zipf", prior_exponent=exponent)
    if name == "best-rare":
        return make_bandit_problem(
            num_contexts,
            num_arms,
            prior="zipf",
            prior_exponent=exponent,
            best_arm_rank=num_arms - 1,
        )
    if name == "random":
        return make_bandit_problem(
            num_contexts, num_arms, prior="random", prior_exponent=exponent, prior_seed=seed
        )
    raise ValueError(f"prior {name!r} is unknown: expected one of {PRIOR_NAMES}")
