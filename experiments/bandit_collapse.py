"""bandit-collapse: entropy collapse of a tabular softmax policy on a contextual bandit.

For each prior (best arm likely / rare) and update rule (vanilla PG, natural PG):

- the *expected* trajectory: closed form for NPG (``pi_k = softmax(z0 + eta k Q)``), the iterated
  map for PG and, for PG, its small-step ODE limit;
- sampled runs over several seeds: G arms per context pulled in the vector bandit env,
  leave-one-out (RLOO) advantages, the unbiased sampled update; mean and a +/- 2 std seed band;
- the law ``R = -a exp(H) + b`` fitted to each expected trajectory, and fitted on the first 15%
  of the steps to predict the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

import toy_entropy.envs  # noqa: F401  (registers the ToyEntropy ids)
from toy_entropy.algorithms.advantages import compute_advantages
from toy_entropy.experiments.bandit_priors import prior_problem
from toy_entropy.experiments.registry import ExperimentResult, RunContext, experiment
from toy_entropy.runs.claims import Claim, greater_than, less_than
from toy_entropy.runs.plots import band_plot, plt
from toy_entropy.theory.entropy import entropy_from_logits
from toy_entropy.theory.lawfit import extrapolate_law, fit_entropy_reward_law
from toy_entropy.theory.tabular import (
    UPDATE_RULES,
    TabularSoftmaxPolicy,
    expected_logit_update,
    npg_closed_form_logits,
    pg_ode_logits,
    sampled_logit_update,
)
from toy_entropy.training import interrupts
from toy_entropy.training.config import check_choice, check_positive_int, check_range

COLLAPSE_PRIORS = ("best-likely", "best-rare")


@dataclass
class BanditCollapseConfig:
    num_contexts: int = 4
    """S, contexts of the bandit"""
    num_arms: int = 10
    """K, arms per context"""
    priors: tuple[str, ...] = COLLAPSE_PRIORS
    """priors: best-likely (entropy falls at once) and best-rare (entropy rises first)"""
    prior_exponent: float = 1.5
    """Zipf exponent of the prior"""
    rules: tuple[str, ...] = UPDATE_RULES
    """update rules: pg (vanilla) and npg (natural)"""
    pg_step_size: float = 1.0
    """eta of vanilla PG (logit units per unit advantage and probability)"""
    npg_step_size: float = 0.1
    """eta of natural PG (logit units per unit advantage)"""
    num_steps: int = 300
    """updates per run"""
    group_size: int = 1024
    """G, arms pulled per context per update in the sampled runs"""
    num_seeds: int = 8
    """sampled runs per prior and rule"""
    band_coverage: float = 0.9
    """required share of steps where the expected curve lies inside the +/- 2 std seed band"""
    coverage_min_entropy: float = 0.05
    """coverage is scored while the expected entropy is above this fraction of its start: in the
    tail, wrong arms have pi < 1/G, go unsampled, and the sampled runs stall above the curve"""

    def __post_init__(self) -> None:
        check_positive_int("num_contexts", self.num_contexts)
        check_range("num_arms", self.num_arms, 2)
        for prior in self.priors:
            check_choice("priors", prior, COLLAPSE_PRIORS)
        for rule in self.rules:
            check_choice("rules", rule, UPDATE_RULES)
        check_range("pg_step_size", self.pg_step_size, 0, low_inclusive=False)
        check_range("npg_step_size", self.npg_step_size, 0, low_inclusive=False)
        check_range("num_steps", self.num_steps, 10)
        check_range("group_size", self.group_size, 2)
        check_range("num_seeds", self.num_seeds, 2)
        check_range("band_coverage", self.band_coverage, 0, 1)
        check_range("coverage_min_entropy", self.coverage_min_entropy, 0, 1)


def expected_trajectory(
    logits: torch.Tensor, means: torch.Tensor, rule: str, eta: float, num_steps: int
) -> torch.Tensor:
    """``(num_steps + 1, S, K)`` logits of expected updates (closed form for NPG)."""
    if rule == "npg":
        return npg_closed_form_logits(logits, means, eta, torch.arange(num_steps + 1))
    trajectory = [logits]
    for _ in range(num_steps):
        trajectory.append(trajectory[-1] + expected_logit_update(trajectory[-1], means, "pg", eta))
    return torch.stack(trajectory)


def curves(trajectory: torch.Tensor, means: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean entropy (nats) and expected reward along a ``(N, S, K)`` logit trajectory."""
    entropy = entropy_from_logits(trajectory).mean(dim=-1)
    reward = (torch.softmax(trajectory, dim=-1) * means).sum(dim=-1).mean(dim=-1)
    return entropy.cpu().numpy(), reward.cpu().numpy()


def sampled_run(problem, rule: str, eta: float, config, seed: int, device) -> torch.Tensor:
    """Entropy and reward ``(2, num_steps + 1)`` of one sampled run through the vector env."""
    num_contexts, group_size = problem.num_contexts, config.group_size
    env = gym.make_vec(
        "ToyEntropy/ContextualBandit-v0",
        num_envs=num_contexts * group_size,
        vectorization_mode="vector_entry_point",
        device=device,
        num_contexts=num_contexts,
        num_arms=problem.num_arms,
        reward_means=problem.reward_means,
        reward_dist=problem.reward_dist,
    )
    env.reset(seed=seed)
    contexts = torch.arange(num_contexts, device=device).repeat_interleave(group_size)  # (S*G,)
    means = torch.as_tensor(problem.reward_means, dtype=torch.float64, device=device)
    policy = TabularSoftmaxPolicy(
        torch.as_tensor(problem.prior_logits, dtype=torch.float64, device=device)
    )
    generator = torch.Generator(device=device).manual_seed(seed)
    history = torch.empty(2, config.num_steps + 1, dtype=torch.float64)
    for step in range(config.num_steps + 1):
        interrupts.check()  # nothing to checkpoint: a resume recomputes the experiment
        history[0, step] = policy.mean_entropy()
        history[1, step] = policy.expected_reward(means)
        if step == config.num_steps:
            break
        actions = policy.sample(group_size, generator)  # (S, G)
        env.reset(options={"contexts": contexts})
        _, rewards, *_ = env.step(actions.reshape(-1))
        advantages = compute_advantages("rloo", rewards.double().view(num_contexts, group_size))
        policy.apply(sampled_logit_update(policy.logits, actions, advantages, rule, eta))
    env.close()
    return history


@experiment(
    "bandit-collapse",
    "entropy collapse on a contextual bandit: closed-form/iterated expected curves vs seeded runs",
    BanditCollapseConfig,
    quick={"num_steps": 150, "num_seeds": 5},
)
def run(config: BanditCollapseConfig, context: RunContext) -> ExperimentResult:
    headline: dict = {}
    claims: list[Claim] = []
    panels = []
    for prior in config.priors:
        problem = prior_problem(prior, config.num_contexts, config.num_arms, config.prior_exponent)
        logits = torch.as_tensor(problem.prior_logits, dtype=torch.float64, device=context.device)
        means = torch.as_tensor(problem.reward_means, dtype=torch.float64, device=context.device)
        for rule in config.rules:
            eta = config.pg_step_size if rule == "pg" else config.npg_step_size
            name = f"{prior}__{rule}"
            expected = curves(
                expected_trajectory(logits, means, rule, eta, config.num_steps), means
            )
            ode = None
            if rule == "pg":
                ode = curves(pg_ode_logits(logits, means, eta, config.num_steps), means)
            runs = torch.stack(
                [
                    sampled_run(problem, rule, eta, config, context.seed + i, context.device)
                    for i in context.progress(range(config.num_seeds), desc=name)
                ]
            ).numpy()  # (seeds, 2, N)
            result = _summarise(name, prior, expected, runs, config)
            headline[name] = result["headline"]
            claims.extend(result["claims"])
            _log_run(context, name, expected, ode, runs)
            panels.append((name, expected, ode, runs))
    _log_figure(context, panels)
    return ExperimentResult(headline, claims)


def _summarise(name: str, prior: str, expected, runs: np.ndarray, config) -> dict:
    entropy, reward = expected
    mean, std = runs[:, 0].mean(axis=0), runs[:, 0].std(axis=0, ddof=1)
    inside = np.abs(entropy - mean) <= 2 * std + 1e-12
    scored = entropy >= config.coverage_min_entropy * entropy[0]
    scored[0] = False  # step 0 is identical by construction
    coverage = float(inside[scored].mean())
    law = fit_entropy_reward_law(entropy, reward)
    extrapolation = extrapolate_law(entropy, reward, 0.15)
    first_change = float(entropy[1] - entropy[0])
    early = max(2, config.num_steps // 5)
    rise = float(entropy[:early].max() - entropy[0])
    sampled_rise = float(mean[:early].max() - mean[0])
    headline = {
        "initial_entropy": float(entropy[0]),
        "final_entropy_expected": float(entropy[-1]),
        "final_entropy_sampled": {"mean": float(mean[-1]), "std": float(std[-1])},
        "first_step_dH": first_change,
        "early_rise_expected": rise,
        "early_rise_sampled_mean": sampled_rise,
        "band_coverage": coverage,
        "law": law.to_dict(),
        "law_extrapolation": extrapolation.to_dict(),
    }
    claims = [
        greater_than(
            f"collapse.{name}.sampled_tracks_expected",
            "share of steps (expected entropy above coverage_min_entropy of its start) where the "
            "expected curve lies in the sampled mean +/- 2 std seed band",
            coverage,
            config.band_coverage,
        ),
        less_than(
            f"collapse.{name}.entropy_collapses",
            "final entropy is below half the initial entropy (expected curve), ratio",
            float(entropy[-1] / entropy[0]),
            0.5,
        ),
    ]
    if prior == "best-rare":
        claims.append(
            greater_than(
                f"collapse.{name}.entropy_rises_first",
                "rare best arm: negative covariance makes entropy rise at first (max early "
                "rise of the sampled mean, nats)",
                sampled_rise,
                0.0,
            )
        )
    else:
        claims.append(
            less_than(
                f"collapse.{name}.entropy_falls_from_start",
                "likely best arm: positive covariance makes entropy fall from the first step "
                "(dH of step 1, nats)",
                first_change,
                0.0,
            )
        )
    return {"headline": headline, "claims": claims}


def _log_run(context: RunContext, name: str, expected, ode, runs: np.ndarray) -> None:
    series = {"expected": expected}
    if ode is not None:
        series["ode"] = ode
    for i in range(runs.shape[0]):
        series[f"seed{i}"] = (runs[i, 0], runs[i, 1])
    for label, (entropy, reward) in series.items():
        writer = context.writer(f"{name}/{label}")
        for step in range(len(entropy)):
            writer.log(step, {"entropy": entropy[step], "reward": reward[step]})
    mean, std = runs[:, 0].mean(axis=0), runs[:, 0].std(axis=0, ddof=1)
    writer = context.writer(f"{name}/sampled-mean")
    for step in range(len(mean)):
        writer.log(
            step,
            {
                "entropy": mean[step],
                "reward": runs[:, 1, step].mean(),
                "entropy/band_low": mean[step] - std[step],
                "entropy/band_high": mean[step] + std[step],
            },
        )


def _log_figure(context: RunContext, panels) -> None:
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5), squeeze=False)
    for axis, (name, expected, ode, runs) in zip(axes[0], panels):
        steps = np.arange(len(expected[0]))
        band_plot(axis, steps, runs[:, 0].mean(0), runs[:, 0].std(0, ddof=1), label="sampled")
        axis.plot(steps, expected[0], color="black", label="expected")
        if ode is not None:
            axis.plot(steps, ode[0], color="red", linestyle=":", label="ODE limit")
        axis.set_title(name)
        axis.set_xlabel("update")
        axis.set_ylabel("entropy [nats]")
        axis.legend(fontsize=7)
    context.writer().add_figure("collapse/entropy_expected_vs_sampled", figure)
