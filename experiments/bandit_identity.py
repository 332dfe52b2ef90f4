"""bandit-identity: the exact entropy change of one update against -Cov(log pi, dz).

For each prior and update rule (vanilla PG, natural PG) and a log grid of step sizes eta, the
tabular softmax policy takes one *expected* update; the exact entropy change is compared with
the first-order prediction of docs/THEORY.md section 3. The relative error must fall linearly with
eta (slope ~1 on log-log axes) and be below 1% at eta = 1e-3.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from toy_entropy.experiments.bandit_priors import PRIOR_NAMES, prior_problem
from toy_entropy.experiments.registry import ExperimentResult, RunContext, experiment
from toy_entropy.runs.claims import between, less_than
from toy_entropy.runs.plots import loglog_error_plot, plt, scatter_identity
from toy_entropy.theory.entropy import entropy_from_logits, predicted_entropy_change
from toy_entropy.theory.tabular import UPDATE_RULES, expected_logit_update
from toy_entropy.training import interrupts
from toy_entropy.training.config import check_choice, check_positive_int, check_range

# The error at the largest steps is no longer first order; the slope is fitted below this eta.
SLOPE_FIT_MAX_ETA = 0.1


@dataclass
class BanditIdentityConfig:
    num_contexts: int = 8
    """S, contexts of the bandit (the entropy is averaged over them)"""
    num_arms: int = 10
    """K, arms per context"""
    priors: tuple[str, ...] = PRIOR_NAMES
    """priors to test: best-likely, best-rare, random"""
    prior_exponent: float = 1.5
    """Zipf exponent of the zipf priors (logit std of the random prior)"""
    eta_min: float = 1e-4
    """smallest step size of the grid"""
    eta_max: float = 1.0
    """largest step size of the grid"""
    num_etas: int = 17
    """points of the log-spaced eta grid"""

    def __post_init__(self) -> None:
        check_positive_int("num_contexts", self.num_contexts)
        check_range("num_arms", self.num_arms, 2)
        if not self.priors:
            raise ValueError("priors=() is invalid: expected at least one prior")
        for prior in self.priors:
            check_choice("priors", prior, PRIOR_NAMES)
        check_range("eta_min", self.eta_min, 0, low_inclusive=False)
        check_range("eta_max", self.eta_max, self.eta_min, low_inclusive=False)
        check_range("num_etas", self.num_etas, 3)
        check_range("prior_exponent", self.prior_exponent, 0)


def loglog_slope(etas: np.ndarray, errors: np.ndarray) -> float:
    """Least-squares slope of log10(error) against log10(eta) for eta <= SLOPE_FIT_MAX_ETA."""
    keep = (etas <= SLOPE_FIT_MAX_ETA) & (errors > 0)
    return float(np.polyfit(np.log10(etas[keep]), np.log10(errors[keep]), 1)[0])


def one_step_changes(
    logits: torch.Tensor, reward_means: torch.Tensor, rule: str, eta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-context ``(actual dH, predicted dH)``, each ``(S,)`` in nats, for one expected step."""
    dz = expected_logit_update(logits, reward_means, rule, eta)
    actual = entropy_from_logits(logits + dz) - entropy_from_logits(logits)
    return actual, predicted_entropy_change(logits, dz)


@experiment(
    "bandit-identity",
    "one-step entropy change vs -Cov(log pi, dz) on bandits, for PG and NPG over a grid of eta",
    BanditIdentityConfig,
    quick={"num_etas": 9},
)
def run(config: BanditIdentityConfig, context: RunContext) -> ExperimentResult:
    etas = np.logspace(np.log10(config.eta_min), np.log10(config.eta_max), config.num_etas)
    rows = []  # (prior, rule, eta, actual, predicted, rel_error)
    scatter = {rule: ([], []) for rule in UPDATE_RULES}
    for prior in config.priors:
        problem = prior_problem(
            prior, config.num_contexts, config.num_arms, config.prior_exponent, context.seed
        )
        # float64: at eta = 1e-4 the change is ~1e-5 nats and must not drown in rounding.
        logits = torch.as_tensor(problem.prior_logits, dtype=torch.float64, device=context.device)
        means = torch.as_tensor(problem.reward_means, dtype=torch.float64, device=context.device)
        for rule in UPDATE_RULES:
            writer = context.writer(f"{prior}__{rule}")
            for index, eta in enumerate(etas):
                interrupts.check()  # nothing to checkpoint: a resume recomputes the experiment
                actual, predicted = one_step_changes(logits, means, rule, float(eta))
                actual_mean, predicted_mean = actual.mean().item(), predicted.mean().item()
                rel_error = abs(actual_mean - predicted_mean) / abs(actual_mean)
                rows.append((prior, rule, float(eta), actual_mean, predicted_mean, rel_error))
                scatter[rule][0].extend(predicted.cpu().tolist())
                scatter[rule][1].extend(actual.cpu().tolist())
                probs = torch.softmax(logits + expected_logit_update(logits, means, rule, eta), -1)
                writer.log(
                    index,
                    {
                        "entropy": entropy_from_logits(logits).mean().item() + actual_mean,
                        "reward": (probs * means).sum(-1).mean().item(),
                        "identity/log10_eta": float(np.log10(eta)),
                        "identity/actual_dH": actual_mean,
                        "identity/predicted_dH": predicted_mean,
                        "identity/relative_error": rel_error,
                    },
                )

    _print_table(rows, config.priors)
    headline, claims = _claims(rows, etas, config.priors)
    _log_figures(context, rows, scatter, config.priors)
    return ExperimentResult(headline, claims)


def _print_table(rows, priors) -> None:
    print("\nRelative error |actual - predicted| / |actual| of the mean entropy change")
    header = "eta       " + "".join(f"{p + '/' + r:>20}" for p in priors for r in UPDATE_RULES)
    print(header)
    etas = sorted({row[2] for row in rows})
    lookup = {(p, r, e): err for p, r, e, _, _, err in rows}
    for eta in etas:
        cells = "".join(f"{lookup[(p, r, eta)]:>20.3e}" for p in priors for r in UPDATE_RULES)
        print(f"{eta:<10.1e}{cells}")


def _claims(rows, etas, priors):
    headline, claims = {}, []
    at_1e3 = float(etas[np.argmin(np.abs(np.log10(etas) + 3))])
    for rule in UPDATE_RULES:
        worst_at_1e3 = max(
            err for p, r, e, _, _, err in rows if r == rule and np.isclose(e, at_1e3)
        )
        slopes = {}
        for prior in priors:
            errors = np.array([err for p, r, _, _, _, err in rows if p == prior and r == rule])
            slopes[prior] = loglog_slope(etas, errors)
        headline[f"{rule}.rel_error_at_eta_{at_1e3:.0e}"] = worst_at_1e3
        headline[f"{rule}.loglog_slope"] = slopes
        claims.append(
            less_than(
                f"identity.{rule}.rel_error_at_eta_1e-3",
                f"{rule}: first-order prediction is within 1% of the exact change at eta=1e-3 "
                "(worst prior)",
                worst_at_1e3,
                0.01,
            )
        )
        claims.append(
            between(
                f"identity.{rule}.error_slope",
                f"{rule}: relative error falls linearly with eta (log-log slope, worst prior)",
                _worst(slopes),
                0.9,
                1.1,
            )
        )
    smallest = float(etas[0])
    for prior in priors:
        signs = {
            rule: next(a for p, r, e, a, _, _ in rows if p == prior and r == rule and e == smallest)
            for rule in UPDATE_RULES
        }
        headline[f"{prior}.dH_at_smallest_eta"] = signs
    return headline, claims


def _worst(slopes: dict[str, float]) -> float:
    """The slope furthest from 1."""
    return max(slopes.values(), key=lambda s: abs(s - 1.0))


def _log_figures(context, rows, scatter, priors) -> None:
    writer = context.writer()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, rule in zip(axes, UPDATE_RULES):
        scatter_identity(axis, *scatter[rule], label=rule)
        axis.set_title(f"{rule}: per-context dH, all eta")
    writer.add_figure("identity/scatter_actual_vs_predicted", figure)
    figure, axis = plt.subplots(figsize=(6, 4))
    for prior in priors:
        for rule in UPDATE_RULES:
            points = [(e, err) for p, r, e, _, _, err in rows if p == prior and r == rule]
            loglog_error_plot(axis, *zip(*points), label=f"{prior}/{rule}")
    axis.legend(fontsize=7)
    writer.add_figure("identity/relative_error_vs_eta", figure)
