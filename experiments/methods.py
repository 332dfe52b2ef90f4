"""methods: entropy interventions compared at identical budgets, several seeds each.

Every method trains the same warm-started transformer on the same task with the same rollout
and optimiser budget (P prompts x G responses per step, ``num_mini_batches`` optimiser steps per
rollout as the paper's 8 updates per rollout, the same learning rate and number of steps); only
the loss differs (:data:`METHODS`):

- ``grpo``: PPO-clipped GRPO, no entropy intervention;
- ``entropy-<alpha>``: GRPO + entropy bonus ``- alpha * H`` (the paper's 1e-4 .. 1e-2);
- ``kl-ref-<beta>``: GRPO + ``beta * KL(pi || pi_ref)`` to the warm-started policy (k3);
- ``clip-higher``: DAPO's asymmetric clip, eps_high = 0.28;
- ``clip-cov-<r>``: Clip-Cov removing the gradient of a fraction r of the tokens with
  covariance in (lb, ub); PPO clip eps = 1 as in the paper's Clip-Cov runs;
- ``kl-cov-<k>[-b<beta>]``: KL-Cov, ``beta |log pi - log pi_old|`` on the top fraction k.

Toy scale: an optimisation batch holds a few hundred tokens, so the paper's r = 2e-4 and
k = 2e-3 would select ``max(1, floor(r N)) = 1`` token whatever r is; the default grids start
at the one-token level and go up to a few percent, and the fraction actually touched is
measured (``select/frac``) and reported next to the paper's 1e-4..1e-3.

Measured per method (mean +/- std over seeds): final and best held-out greedy accuracy, mean@k
and pass@k, entropy at the end, the fraction of tokens touched, and the spread across seeds.
The claims test the paper's qualitative statements (docs/THEORY.md section 7, items 3-5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toy_entropy.experiments.registry import ExperimentResult, RunContext, experiment
from toy_entropy.experiments.sweeps import (
    RunResult,
    RunSpec,
    group_by_variant,
    log_seed_bands,
    run_sweep,
)
from toy_entropy.experiments.table1 import report_table1
from toy_entropy.runs.claims import Claim, between, greater_than, less_than
from toy_entropy.runs.report import SubRun, figure_curves, markdown_table
from toy_entropy.theory.curve_stats import finite_mean, rank_correlation
from toy_entropy.training.config import check_choice, check_range, replace_paths
from toy_entropy.training.trainer import TrainConfig
from toy_entropy.training.warmstart import WarmStartConfig

__all__ = [
    "METHODS",
    "MethodsConfig",
    "loss_changes",
    "method_config",
    "method_stats",
    "methods_budget",
    "methods_claims",
]

METHODS: dict[str, dict] = {
    "grpo": {},
    "entropy-1e-4": {"entropy_coeff": 1e-4},
    "entropy-1e-3": {"entropy_coeff": 1e-3},
    "entropy-5e-3": {"entropy_coeff": 5e-3},
    "entropy-1e-2": {"entropy_coeff": 1e-2},
    "kl-ref-0.01": {"kl_loss_coef": 0.01},
    "kl-ref-0.1": {"kl_loss_coef": 0.1},
    "kl-ref-1": {"kl_loss_coef": 1.0},
    "clip-higher": {"clip_ratio_high": 0.28},
    "clip-cov-2e-3": {"loss_mode": "clip_cov", "clip_cov_ratio": 2e-3},
    "clip-cov-1e-2": {"loss_mode": "clip_cov", "clip_cov_ratio": 1e-2},
    "clip-cov-5e-2": {"loss_mode": "clip_cov", "clip_cov_ratio": 5e-2},
    "kl-cov-2e-3": {"loss_mode": "kl_cov", "kl_cov_ratio": 2e-3},
    "kl-cov-1e-2": {"loss_mode": "kl_cov", "kl_cov_ratio": 1e-2},
    "kl-cov-5e-2": {"loss_mode": "kl_cov", "kl_cov_ratio": 5e-2},
    "kl-cov-1e-2-b5": {"loss_mode": "kl_cov", "kl_cov_ratio": 1e-2, "ppo_kl_coef": 5.0},
}
"""Method name -> PolicyLossConfig fields it changes (everything else is the shared budget)."""

CLIP_COV_PPO = {"clip_ratio_low": 1.0, "clip_ratio_high": 1.0}
"""The paper's Clip-Cov runs use eps = 1: PPO's clip only filters extreme ratios."""


def methods_budget() -> TrainConfig:
    """The shared budget of ``methods``: countdown, where accuracy is far from saturated after
    the warm start, 150 steps of 32 x 8 responses, 4 updates per rollout (the paper: 8)."""
    return TrainConfig(
        task="countdown",
        warmstart=WarmStartConfig(steps=1500, noise=0.4),
        total_steps=150,
        num_prompts=32,
        num_mini_batches=4,
        learning_rate=1e-3,
        eval_every=25,
        eval_prompts=128,
    )


@dataclass
class MethodsConfig:
    train: TrainConfig = field(default_factory=methods_budget)
    """the shared budget: every method runs it with its own loss fields (METHODS)"""
    methods: tuple[str, ...] = tuple(METHODS)
    """methods to compare (names of METHODS)"""
    num_seeds: int = 3
    """seeds per method"""
    workers: int = 0
    """parallel training processes (0: one per CPU core; 1 on CUDA)"""

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("methods=() is invalid: expected at least one method")
        for name in self.methods:
            check_choice("methods", name, list(METHODS))
        check_range("num_seeds", self.num_seeds, 2)
        check_range("workers", self.workers, 0)
        method_config(self, self.methods[0])  # the method's loss must be valid


def loss_changes(method_fields: dict[str, Any]) -> dict[str, Any]:
    """A method's PolicyLossConfig fields as dotted TrainConfig changes (``loss.<field>``), with
    the paper's eps = 1 under Clip-Cov unless the method sets its own clip."""
    if method_fields.get("loss_mode") == "clip_cov":
        method_fields = {**CLIP_COV_PPO, **method_fields}
    return {f"loss.{name}": value for name, value in method_fields.items()}


def method_config(config: MethodsConfig, method: str) -> TrainConfig:
    """The TrainConfig of ``method``: the shared budget with the method's loss fields."""
    return replace_paths(config.train, loss_changes(METHODS[method]))


def family(method: str) -> str:
    """grpo, entropy, kl-ref, clip-higher, clip-cov or kl-cov."""
    for prefix in ("entropy", "kl-ref", "clip-cov", "kl-cov"):
        if method.startswith(prefix + "-"):
            return prefix
    return method


def _final(result: RunResult, key: str) -> float:
    return float(result.eval_curve(key)[1][-1])


def _best(result: RunResult, key: str) -> float:
    return float(result.eval_curve(key)[1].max())


def method_stats(results: list[RunResult], k: int, tail: int = 5) -> dict[str, dict]:
    """Per-metric mean and std over the seeds of one method.

    Entropy at the end is the mean of the last ``tail`` steps; ``touched`` is the mean over
    steps of the fraction of tokens Clip-Cov / KL-Cov select (0 for other methods) and
    ``clipped`` the fraction PPO clips.
    """
    per_seed: dict[str, list[float]] = {}
    for r in results:
        values = {
            "final_greedy": _final(r, "eval/greedy_accuracy"),
            "best_greedy": _best(r, "eval/greedy_accuracy"),
            f"final_mean_at_{k}": _final(r, f"eval/mean_at_{k}"),
            f"best_mean_at_{k}": _best(r, f"eval/mean_at_{k}"),
            f"final_pass_at_{k}": _final(r, f"eval/pass_at_{k}"),
            f"best_pass_at_{k}": _best(r, f"eval/pass_at_{k}"),
            "initial_entropy": float(r.column("entropy")[0]),
            "final_entropy": float(np.nanmean(r.column("entropy")[-tail:])),
            "touched": finite_mean(r.column("select/frac")) if "select/frac" in r.rows[0] else 0.0,
            "clipped": finite_mean(
                r.column("ratio/clipfrac_high") + r.column("ratio/clipfrac_low")
            ),
        }
        for name, value in values.items():
            per_seed.setdefault(name, []).append(value)
    return {
        name: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)), "seeds": v}
        for name, v in per_seed.items()
    }


@experiment(
    "methods",
    "GRPO vs entropy bonus, reference KL, clip-higher, Clip-Cov, KL-Cov at identical budgets, "
    "several seeds: accuracy, entropy, tokens touched, stability",
    MethodsConfig,
    quick={
        "methods": ("grpo", "entropy-5e-3", "kl-ref-0.1", "clip-higher", "clip-cov-1e-2",
                    "kl-cov-1e-2"),
        "train.total_steps": 40,
        "train.num_prompts": 16,
        "train.num_mini_batches": 2,
        "train.eval_every": 20,
        "train.eval_prompts": 64,
    },
)  # fmt: skip
def run(config: MethodsConfig, context: RunContext) -> ExperimentResult:
    specs = [
        RunSpec(method, context.seed + i, method_config(config, method))
        for method in config.methods
        for i in range(config.num_seeds)
    ]
    results = run_sweep(specs, context, config.workers)
    k = config.train.eval_samples
    eval_keys = ("eval/greedy_accuracy", f"eval/mean_at_{k}", f"eval/pass_at_{k}")
    log_seed_bands(context, results, ("entropy", "reward", *eval_keys, "select/frac"))
    stats = {m: method_stats(group, k) for m, group in group_by_variant(results).items()}
    table = _table(stats, k)
    print("\n" + markdown_table(table["columns"], table["rows"]))
    writer = context.writer()
    writer.add_text("methods/table", markdown_table(table["columns"], table["rows"]))
    sub_runs = [SubRun(f"{r.variant}/seed{r.seed}", r.rows) for r in results]
    figure = figure_curves(sub_runs, ("entropy", "reward", f"eval/mean_at_{k}"), "methods")
    writer.add_figure("methods/entropy_reward_accuracy", figure)
    headline = {
        "table1": report_table1(context, results, f"{config.train.task}, step 1"),
        "task": config.train.task,
        "budget": {
            "steps": config.train.total_steps,
            "responses_per_step": config.train.num_prompts * config.train.num_generations,
            "updates_per_step": config.train.num_mini_batches,
            "seeds": config.num_seeds,
        },
        "methods": stats,
        "tables": [table],
    }
    return ExperimentResult(headline, methods_claims(stats, k))


def _pm(stat: dict, digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _table(stats: dict[str, dict], k: int) -> dict:
    columns = [
        "method", "final greedy", "best greedy", f"final mean@{k}", f"best mean@{k}",
        f"final pass@{k}", "entropy at end", "tokens touched", "PPO-clipped",
    ]  # fmt: skip
    rows = []
    for method, s in stats.items():
        rows.append(
            [
                method,
                _pm(s["final_greedy"]),
                _pm(s["best_greedy"]),
                _pm(s[f"final_mean_at_{k}"]),
                _pm(s[f"best_mean_at_{k}"]),
                _pm(s[f"final_pass_at_{k}"]),
                _pm(s["final_entropy"]),
                f"{s['touched']['mean']:.1e}" if s["touched"]["mean"] else "-",
                f"{s['clipped']['mean']:.1e}" if np.isfinite(s["clipped"]["mean"]) else "-",
            ]
        )
    return {"title": "Methods at identical budgets (mean ± std over seeds)", "columns": columns,
            "rows": rows}  # fmt: skip


SWEPT_FIELD = {
    "entropy": "entropy_coeff",
    "kl-ref": "kl_loss_coef",
    "clip-cov": "clip_cov_ratio",
    "kl-cov": "kl_cov_ratio",
}


def _parameter(method: str) -> float:
    """The swept number of a method (alpha, beta, r or k)."""
    return float(METHODS[method][SWEPT_FIELD[family(method)]])


def methods_claims(stats: dict[str, dict], k: int) -> list[Claim]:
    """The paper's qualitative claims, for the methods that were run."""
    claims: list[Claim] = []
    if "grpo" not in stats:
        return claims
    accuracy = f"final_mean_at_{k}"
    grpo_h = stats["grpo"]["final_entropy"]["mean"]

    def h(method: str) -> float:
        return stats[method]["final_entropy"]["mean"]

    def acc(method: str) -> float:
        return stats[method][accuracy]["mean"]

    small = [m for m in ("entropy-1e-4", "entropy-1e-3") if m in stats]
    if small:
        claims.append(
            less_than(
                "methods.entropy_bonus.small_alpha_still_collapses",
                "entropy bonus alpha in {1e-4, 1e-3} still collapses: final entropy relative to "
                "GRPO's (largest of the two)",
                max(h(m) / grpo_h for m in small),
                2.0,
            )
        )
    if "entropy-1e-2" in stats:
        s = stats["entropy-1e-2"]
        claims.append(
            greater_than(
                "methods.entropy_bonus.alpha_1e-2_explodes",
                "entropy bonus alpha = 1e-2 explodes: final over initial entropy",
                s["final_entropy"]["mean"] / s["initial_entropy"]["mean"],
                1.0,
            )
        )
    if "entropy-5e-3" in stats:
        claims.append(
            greater_than(
                "methods.entropy_bonus.alpha_5e-3_holds_entropy",
                "entropy bonus alpha = 5e-3 holds entropy: final entropy relative to GRPO's",
                h("entropy-5e-3") / grpo_h,
                2.0,
            )
        )
        cov_methods = [m for m in stats if family(m) in ("clip-cov", "kl-cov")]
        if cov_methods:
            claims.append(
                less_than(
                    "methods.entropy_bonus.alpha_5e-3_not_better",
                    f"alpha = 5e-3 does not beat the covariance methods: its final mean@{k} minus "
                    "the best Clip-Cov / KL-Cov variant's",
                    acc("entropy-5e-3") - max(acc(m) for m in cov_methods),
                    0.0,
                )
            )
    kl_ref = sorted((m for m in stats if family(m) == "kl-ref"), key=_parameter)
    if kl_ref:
        strongest = kl_ref[-1]
        claims.append(
            greater_than(
                "methods.kl_ref.holds_entropy",
                f"reference KL ({strongest}) holds entropy: final entropy relative to GRPO's",
                h(strongest) / grpo_h,
                1.5,
            )
        )
        claims.append(
            less_than(
                "methods.kl_ref.costs_accuracy",
                f"reference KL ({strongest}) costs accuracy: its final mean@{k} minus GRPO's",
                acc(strongest) - acc("grpo"),
                0.0,
            )
        )
    if "clip-higher" in stats:
        claims.append(
            greater_than(
                "methods.clip_higher.raises_entropy",
                "clip-higher (eps_high = 0.28) ends with more entropy than GRPO (ratio)",
                h("clip-higher") / grpo_h,
                1.0,
            )
        )
    for name in ("clip-cov", "kl-cov"):
        members = sorted(
            (m for m in stats if family(m) == name and not m.endswith("-b5")), key=_parameter
        )
        if not members:
            continue
        slug = name.replace("-", "_")
        claims.append(
            greater_than(
                f"methods.{slug}.entropy_order_of_magnitude_above_grpo",
                f"{name} keeps entropy an order of magnitude above GRPO: final entropy "
                "relative to GRPO's (largest over its variants)",
                max(h(m) / grpo_h for m in members),
                10.0,
            )
        )
        claims.append(
            between(
                f"methods.{slug}.touches_few_tokens",
                f"{name} touches 1e-4..1e-3 of the tokens (mean fraction selected, "
                f"{members[0]}, the smallest setting)",
                stats[members[0]]["touched"]["mean"],
                1e-4,
                1e-3,
            )
        )
        if len(members) > 1:
            claims.append(
                greater_than(
                    f"methods.{slug}.more_selection_more_entropy",
                    f"larger {'r' if name == 'clip-cov' else 'k'} gives higher entropy "
                    "(rank correlation of the setting with the final entropy)",
                    rank_correlation([_parameter(m) for m in members], [h(m) for m in members]),
                    0.99,
                )
            )
    if "kl-cov-1e-2" in stats and "kl-cov-1e-2-b5" in stats:
        claims.append(
            greater_than(
                "methods.kl_cov.larger_beta_more_entropy",
                "KL-Cov: beta = 5 ends with more entropy than beta = 1 (k = 1e-2), ratio",
                h("kl-cov-1e-2-b5") / h("kl-cov-1e-2"),
                1.0,
            )
        )
    clip = [m for m in stats if family(m) == "clip-cov"]
    kl = [m for m in stats if family(m) == "kl-cov"]
    if clip and kl:
        spread = {
            name: float(np.mean([stats[m][accuracy]["std"] for m in members]))
            for name, members in (("clip", clip), ("kl", kl))
        }
        claims.append(
            less_than(
                "methods.kl_cov_steadier_than_clip_cov",
                f"KL-Cov is steadier than Clip-Cov: seed std of the final mean@{k} (mean over "
                "variants), KL-Cov minus Clip-Cov",
                spread["kl"] - spread["clip"],
                0.0,
            )
        )
    return claims
