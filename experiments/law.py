"""law: R = -a exp(H) + b per run; early-fit extrapolation; a and b across estimators and sizes.

Runs (several seeds each, identical budgets):

- the estimators GRPO, RLOO and REINFORCE on the smallest model: the paper says a and b do not
  depend on the RL algorithm;
- GRPO on models of three or more sizes: the paper says a and b are log-linear in model size;
- runs with an entropy intervention (Clip-Cov, KL-Cov): the law is an empirical fit of
  unregularised runs, and this is where it is expected to fail.

Per run: the law fitted on all steps (a, b, R^2, ceiling b - a) and fitted on the first 15% of
the steps to predict the rest: RMSE against the per-step rewards, RMSE against the rewards
smoothed over ``smoothing`` steps (the per-step reward of P x G samples is noisy; its noise level
is reported as ``reward_noise``) and the error at the final step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from toy_entropy.algorithms.advantages import ADVANTAGE_ESTIMATORS
from toy_entropy.experiments.methods import loss_changes
from toy_entropy.experiments.registry import ExperimentResult, RunContext, experiment
from toy_entropy.experiments.sweeps import (
    RunResult,
    RunSpec,
    group_by_variant,
    log_seed_bands,
    run_sweep,
)
from toy_entropy.experiments.table1 import report_table1
from toy_entropy.models.model import MODEL_SIZES
from toy_entropy.runs.claims import Claim, greater_than, less_than
from toy_entropy.runs.report import SubRun, figure_law, markdown_table
from toy_entropy.theory.curve_stats import moving_average
from toy_entropy.theory.lawfit import extrapolate_law, fit_entropy_reward_law
from toy_entropy.training.config import check_choice, check_range, replace_paths
from toy_entropy.training.trainer import TrainConfig

__all__ = ["LawConfig", "INTERVENTIONS", "run_law", "spread_z"]

INTERVENTIONS: dict[str, dict] = {
    "clip-cov": {"loss_mode": "clip_cov", "clip_cov_ratio": 5e-2},
    "kl-cov": {"loss_mode": "kl_cov", "kl_cov_ratio": 5e-2, "ppo_kl_coef": 5.0},
    "entropy-bonus": {"entropy_coeff": 5e-2},
}
"""Entropy interventions under which the law is tested (PolicyLossConfig fields; Clip-Cov at
the paper's eps = 1, see :func:`toy_entropy.experiments.methods.loss_changes`)."""


def law_budget() -> TrainConfig:
    """Every variant's run: reverse, 200 steps of 32 x 8 responses, 2 updates per rollout
    (KL-Cov acts from the second), AdamW 1e-3."""
    return TrainConfig(
        task="reverse", total_steps=200, num_prompts=32, num_mini_batches=2, learning_rate=1e-3,
        eval_every=50,
    )  # fmt: skip


@dataclass
class LawConfig:
    train: TrainConfig = field(default_factory=law_budget)
    """every variant's run; the variants change its advantage estimator, model size or loss"""
    estimators: tuple[str, ...] = ("grpo", "rloo", "reinforce")
    """advantage estimators compared on the smallest model"""
    model_sizes: tuple[str, ...] = ("cpu-nano", "cpu-micro", "cpu-small")
    """model sizes (GRPO), smallest first"""
    interventions: tuple[str, ...] = ("clip-cov", "kl-cov", "entropy-bonus")
    """runs with entropy intervention (INTERVENTIONS), smallest model, GRPO advantages"""
    num_seeds: int = 3
    """seeds per variant"""
    fit_fraction: float = 0.15
    """share of the steps the early fit sees"""
    smoothing: int = 9
    """window of the smoothed rewards the extrapolation is also scored against (odd)"""
    rmse_bound: float = 0.05
    """the law 'predicts the rest' when the smoothed extrapolation RMSE is below this"""
    workers: int = 0
    """parallel training processes (0: one per CPU core; 1 on CUDA)"""

    def __post_init__(self) -> None:
        if not self.estimators or not self.model_sizes:
            raise ValueError("estimators and model_sizes must each name at least one entry")
        for name in self.estimators:
            check_choice("estimators", name, ADVANTAGE_ESTIMATORS)
        for name in self.model_sizes:
            check_choice("model_sizes", name, sorted(MODEL_SIZES))
        for name in self.interventions:
            check_choice("interventions", name, list(INTERVENTIONS))
        check_range("num_seeds", self.num_seeds, 2)
        check_range("train.total_steps", self.train.total_steps, 20)
        check_range("fit_fraction", self.fit_fraction, 0, 1, low_inclusive=False)
        if self.smoothing < 1 or self.smoothing % 2 == 0:
            raise ValueError(f"smoothing={self.smoothing!r} is invalid: expected an odd int >= 1")
        check_range("workers", self.workers, 0)


def variants(config: LawConfig) -> dict[str, TrainConfig]:
    """Variant name -> TrainConfig: ``<estimator>``, ``grpo-<model size>`` and the
    interventions; all but the larger models run the smallest model."""
    base = replace(config.train, model_size=config.model_sizes[0])
    out = {name: replace(base, advantage_estimator=name) for name in config.estimators}
    for size in config.model_sizes[1:]:
        out[f"grpo-{size}"] = replace(base, model_size=size)
    for name in config.interventions:
        out[name] = replace_paths(base, loss_changes(INTERVENTIONS[name]))
    return out


def run_law(result: RunResult, config: LawConfig) -> dict[str, float]:
    """The law of one run: full fit, early-fit extrapolation and the reward noise level."""
    entropy, reward = result.column("entropy"), result.column("reward")
    fit = fit_entropy_reward_law(entropy, reward)
    early = extrapolate_law(entropy, reward, config.fit_fraction)
    start = max(2, math.ceil(config.fit_fraction * len(reward)))  # as extrapolate_law splits
    predicted = early.fit.predict(entropy[start:])
    smoothed = moving_average(reward, config.smoothing)[start:]
    return {
        "a": fit.a,
        "b": fit.b,
        "r2": fit.r2,
        "ceiling": fit.ceiling,
        "early_a": early.fit.a,
        "early_b": early.fit.b,
        "rmse": early.rmse,
        "rmse_smoothed": float(np.sqrt(np.mean((predicted - smoothed) ** 2))),
        "final_error": early.final_error,
        "reward_noise": float(np.std(np.diff(reward)) / np.sqrt(2)),
        "reward_range": float(np.ptp(moving_average(reward, config.smoothing))),
    }


def spread_z(means: list[float], stds: list[float], num_seeds: int) -> float:
    """Largest pairwise difference of group means in units of the standard error of a
    difference, ``max |m_i - m_j| / (s * sqrt(2 / n))`` with ``s`` the pooled seed std."""
    pooled = math.sqrt(float(np.mean(np.square(stds))))
    if pooled == 0:
        return float("inf") if np.ptp(means) > 0 else 0.0
    return float(np.ptp(means) / (pooled * math.sqrt(2 / num_seeds)))


def _loglinear(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    total = np.sum((y - y.mean()) ** 2)
    r2 = 1.0 - np.sum(residual**2) / total if total > 0 else float("nan")
    return {"slope_per_decade": float(slope), "intercept": float(intercept), "r2": float(r2)}


@experiment(
    "law",
    "R = -a exp(H) + b: fit per run, predict from the first 15%, compare a and b across "
    "estimators and model sizes, show where it fails (entropy interventions)",
    LawConfig,
    quick={"num_seeds": 2, "train.total_steps": 60, "train.num_prompts": 16,
           "train.eval_every": 30, "interventions": ("kl-cov",)},
)  # fmt: skip
def run(config: LawConfig, context: RunContext) -> ExperimentResult:
    configs = variants(config)
    specs = [
        RunSpec(name, context.seed + i, train)
        for name, train in configs.items()
        for i in range(config.num_seeds)
    ]
    results = run_sweep(specs, context, config.workers)
    log_seed_bands(context, results, ("entropy", "reward"))
    per_variant: dict[str, dict] = {}
    for name, group in group_by_variant(results).items():
        laws = [run_law(r, config) for r in group]
        summary = {
            key: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1))}
            for key in laws[0]
            for v in [[law[key] for law in laws]]
        }
        summary["num_parameters"] = group[0].num_parameters
        per_variant[name] = summary
    estimators = {n: per_variant[n] for n in config.estimators}
    sizes = {config.model_sizes[0]: per_variant[config.estimators[0]]} | {
        p: per_variant[f"grpo-{p}"] for p in config.model_sizes[1:]
    }
    across_estimators = {
        coef: spread_z(
            [s[coef]["mean"] for s in estimators.values()],
            [s[coef]["std"] for s in estimators.values()],
            config.num_seeds,
        )
        for coef in ("a", "b")
    }
    across_sizes = {}
    if len(sizes) >= 2:
        log_params = np.log10([s["num_parameters"] for s in sizes.values()])
        across_sizes = {
            coef: _loglinear(log_params, np.array([s[coef]["mean"] for s in sizes.values()]))
            for coef in ("a", "b")
        }
    table = _table(per_variant)
    print("\n" + markdown_table(table["columns"], table["rows"]))
    sub_runs = [SubRun(f"{r.variant}/seed{r.seed}", r.rows) for r in results]
    context.writer().add_figure("law/reward_vs_entropy", figure_law(sub_runs))
    context.writer().add_text("law/table", markdown_table(table["columns"], table["rows"]))
    headline = {
        "table1": report_table1(context, results, f"{config.train.task}, all variants, step 1"),
        "variants": per_variant,
        "estimator_spread_z": across_estimators,
        "size_loglinear": across_sizes,
        "tables": [table],
    }
    return ExperimentResult(headline, _claims(config, per_variant, across_estimators, across_sizes))


def _table(per_variant: dict[str, dict]) -> dict:
    columns = [
        "variant", "parameters", "a", "b", "R^2 (all steps)", "ceiling b - a",
        "RMSE from first 15%", "RMSE vs smoothed", "final-step error", "reward noise",
    ]  # fmt: skip
    rows = []
    for name, s in per_variant.items():
        cells = [f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}" for k in ("a", "b", "r2", "ceiling")]
        cells += [
            f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}"
            for k in ("rmse", "rmse_smoothed", "final_error", "reward_noise")
        ]
        rows.append([name, s["num_parameters"], *cells])
    return {"title": "The law R = -a exp(H) + b per variant (mean ± std over seeds)",
            "columns": columns, "rows": rows}  # fmt: skip


def _claims(config: LawConfig, per_variant, across_estimators, across_sizes) -> list[Claim]:
    claims: list[Claim] = []
    for name, s in per_variant.items():
        intervened = name in INTERVENTIONS
        claims.append(
            less_than(
                f"law.{name}.extrapolates",
                f"{name}{' (entropy intervention)' if intervened else ''}: the law fitted on the "
                f"first {config.fit_fraction:.0%} of the steps predicts the rest (RMSE against "
                "smoothed rewards, seed mean)",
                s["rmse_smoothed"]["mean"],
                config.rmse_bound,
            )
        )
    if len(config.estimators) > 1:
        for coef, z in across_estimators.items():
            claims.append(
                less_than(
                    f"law.{coef}_independent_of_estimator",
                    f"{coef} does not depend on the estimator ({', '.join(config.estimators)}): "
                    "largest difference of estimator means in standard errors",
                    z,
                    2.0,
                )
            )
    for coef, fit in across_sizes.items():
        if len(config.model_sizes) >= 3:
            claims.append(
                greater_than(
                    f"law.{coef}_loglinear_in_model_size",
                    f"{coef} is log-linear in the parameter count over "
                    f"{len(config.model_sizes)} sizes (R^2 of {coef} on log10 parameters)",
                    fit["r2"],
                    0.9,
                )
            )
    return claims
