"""questions-training: the questions of docs/questions.md that need the transformer trainer.

Both parts train in the LLM-like regime of ``cure`` (the ``fork`` task, :class:`ForkRegime`) at
a budget this machine runs in minutes (``train``); ``parts`` selects them:

- ``clip-higher`` (PRIME-RL/Entropy-Mechanism-of-RL #19: does clip-higher combine with
  KL-Cov?): GRPO, clip-higher (eps_high 0.28), KL-Cov k = 2e-3 as the reference code runs it
  (no PPO clip), KL-Cov under the PPO clip (eps 0.2) and KL-Cov under clip-higher. The PPO-clip
  variant separates what the clip does from what its raised upper bound does.
- ``scope`` (verl-project/verl #7818 / #7829: verl's KL-Cov selects per micro-batch): KL-Cov at
  verl's default k = 2e-4 with the selection made over the whole optimisation batch against
  made in each of ``scope_micro_batches`` micro-batches (``selection_scope``, the normaliser
  unchanged): the selected share and the divergence of the entropy curve.
- ``updates`` (#20: on long runs Clip-Cov's entropy keeps falling and KL-Cov's surges, which the
  authors blame on 16 updates per rollout): 1, 2, 4, 8 and 16 optimiser steps per rollout
  (``num_mini_batches``) for GRPO, Clip-Cov r = 2e-4 and KL-Cov k = 2e-3, every run on the same
  rollouts budget: final entropy, the largest entropy surge (see :func:`largest_surge`), the
  roughness of the entropy curve and held-out accuracy.

Every variant runs ``num_seeds`` seeds from one shared warm start; means carry 95% Student-t
intervals. Claims compare means, with the intervals in the tables next to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toy_entropy.experiments.cure import (
    CURE_METHODS,
    ForkRegime,
    cure_budget,
    methods_table,
    regime_train_config,
    seed_stats,
)
from toy_entropy.experiments.registry import ExperimentResult, RunContext, experiment
from toy_entropy.experiments.sweeps import (
    RunResult,
    RunSpec,
    group_by_variant,
    log_seed_bands,
    publish_sweep,
    run_sweep,
)
from toy_entropy.runs.claims import Claim, greater_than, less_than
from toy_entropy.theory.curve_stats import rank_correlation
from toy_entropy.training.config import check_choice, check_range, replace_paths
from toy_entropy.training.trainer import TrainConfig

__all__ = ["CLIP_HIGHER_METHODS", "QuestionsTrainingConfig", "largest_surge", "run_specs"]

PARTS = ("clip-higher", "updates", "scope")
KL_COV = CURE_METHODS["kl-cov-2e-3"]
CLIP_HIGHER_METHODS: dict[str, dict[str, Any]] = {
    "grpo": {},
    "clip-higher": CURE_METHODS["clip-higher"],
    "kl-cov-2e-3": KL_COV,
    "kl-cov-2e-3-ppo-clip": {**KL_COV, "kl_cov_ppo_clip": True},
    "kl-cov-2e-3-clip-higher": {**KL_COV, "kl_cov_ppo_clip": True, "clip_ratio_high": 0.28},
}
"""Part ``clip-higher``: method name -> PolicyLossConfig fields it changes."""
VERL_KL_COV = {"loss_mode": "kl_cov", "kl_cov_ratio": 2e-4}
"""Part ``scope``: KL-Cov at verl's default ``kl_cov_ratio``."""
SCOPES = ("mini_batch", "micro_batch")


def questions_budget() -> TrainConfig:
    """The cure budget at 16 x 8 responses and 30 steps (about 2 minutes per run on one CPU
    core; the full preset's 44 runs take about 45 minutes on 2 cores)."""
    return replace_paths(cure_budget(), {"num_prompts": 16, "total_steps": 30, "eval_prompts": 64})


@dataclass
class QuestionsTrainingConfig:
    train: TrainConfig = field(default_factory=questions_budget)
    """every run's budget; the parts change its loss fields and updates per rollout"""
    fork: ForkRegime = field(default_factory=ForkRegime)
    """the LLM-like task and its warm-start profile (as in ``cure``)"""
    parts: tuple[str, ...] = PARTS
    """which questions to answer: clip-higher, updates"""
    updates_per_rollout: tuple[int, ...] = (1, 2, 4, 8, 16)
    """part updates: optimiser steps per rollout (num_mini_batches) compared"""
    update_methods: tuple[str, ...] = ("grpo", "clip-cov-2e-4", "kl-cov-2e-3")
    """part updates: methods (names of CURE_METHODS)"""
    scope_micro_batches: int = 8
    """part scope: micro-batches per optimisation batch (micro_batch_size = its rows / this)"""
    num_seeds: int = 2
    """seeds per variant"""
    workers: int = 0
    """parallel training processes (0: one per CPU core; 1 on CUDA)"""

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("parts=() is invalid: expected at least one of " + ", ".join(PARTS))
        for part in self.parts:
            check_choice("parts", part, PARTS)
        if len(self.updates_per_rollout) < 2:
            raise ValueError("updates_per_rollout needs at least two values to compare")
        for name in self.update_methods:
            check_choice("update_methods", name, list(CURE_METHODS))
        check_range("num_seeds", self.num_seeds, 2)
        check_range("scope_micro_batches", self.scope_micro_batches, 2)
        check_range("workers", self.workers, 0)
        run_specs(self, seed=0)  # every run is a valid TrainConfig


def largest_surge(entropy: np.ndarray) -> float:
    """The largest rise of an entropy curve above its running minimum, relative to the curve's
    start: ``max_t (H_t - min_{s <= t} H_s) / H_0`` (dimensionless; 0 for a falling curve)."""
    entropy = np.asarray(entropy, dtype=np.float64)
    entropy = entropy[np.isfinite(entropy)]
    if entropy.size < 2 or entropy[0] <= 0:
        return float("nan")
    return float(np.max(entropy - np.minimum.accumulate(entropy)) / entropy[0])


def _update_variant(method: str, updates: int) -> str:
    return f"{method}@{updates}"


def run_specs(config: QuestionsTrainingConfig, seed: int) -> list[RunSpec]:
    """Every run of the selected parts; all share the warm start of ``seed``."""
    variants: dict[str, TrainConfig] = {}
    num_prompts = config.train.num_prompts
    if "clip-higher" in config.parts:
        for name, fields in CLIP_HIGHER_METHODS.items():
            variants[name] = regime_train_config(config.train, config.fork, fields, num_prompts,
                                                 seed)  # fmt: skip
    if "updates" in config.parts:
        for method in config.update_methods:
            for updates in config.updates_per_rollout:
                train = replace_paths(config.train, {"num_mini_batches": updates})
                variants[_update_variant(method, updates)] = regime_train_config(
                    train, config.fork, CURE_METHODS[method], num_prompts, seed
                )
    if "scope" in config.parts:
        t = config.train
        rows = t.num_prompts * t.num_generations // t.num_mini_batches
        micro = max(1, rows // config.scope_micro_batches)
        for scope in SCOPES:
            train = replace_paths(t, {"micro_batch_size": micro, "selection_scope": scope})
            variants[f"kl-cov-2e-4@{scope}"] = regime_train_config(
                train, config.fork, VERL_KL_COV, num_prompts, seed
            )
    return [
        RunSpec(name, seed + i, train)
        for name, train in variants.items()
        for i in range(config.num_seeds)
    ]


def _clip_higher_claims(stats: dict[str, dict], k: int) -> list[Claim]:
    def h(method: str) -> float:
        return stats[method]["final_entropy"]["mean"]

    accuracy = f"final_mean_at_{k}"
    combined = "kl-cov-2e-3-clip-higher"
    return [
        greater_than(
            "questions.clip_higher.combined_entropy_above_either",
            "final entropy of KL-Cov under clip-higher over the larger of KL-Cov's and "
            "clip-higher's alone",
            h(combined) / max(h("kl-cov-2e-3"), h("clip-higher")),
            1.0,
        ),
        greater_than(
            "questions.clip_higher.combined_accuracy_not_below_kl_cov",
            f"held-out mean@{k}: KL-Cov under clip-higher minus KL-Cov alone",
            stats[combined][accuracy]["mean"] - stats["kl-cov-2e-3"][accuracy]["mean"],
            0.0,
        ),
        greater_than(
            "questions.clip_higher.raised_bound_adds_entropy_to_clipped_kl_cov",
            "final entropy of KL-Cov under clip-higher over KL-Cov under the symmetric PPO clip",
            h(combined) / h("kl-cov-2e-3-ppo-clip"),
            1.0,
        ),
    ]


def _scope_summary(groups: dict[str, list[RunResult]]) -> dict[str, float]:
    """Selected share under each scope and how far the per-micro-batch entropy curve lies from
    the batch-global one: the mean over steps of ``|H_micro - H_mini| / H_mini`` of the seed
    means, and the final entropy ratio."""
    curves = {
        scope: np.mean([r.column("entropy") for r in groups[f"kl-cov-2e-4@{scope}"]], axis=0)
        for scope in SCOPES
    }
    touched = {
        scope: float(
            np.nanmean(
                [np.nanmean(r.column("select/frac")) for r in groups[f"kl-cov-2e-4@{scope}"]]
            )
        )  # fmt: skip
        for scope in SCOPES
    }
    mini, micro = curves["mini_batch"], curves["micro_batch"]
    return {
        "touched_mini_batch": touched["mini_batch"],
        "touched_micro_batch": touched["micro_batch"],
        "touched_ratio": touched["micro_batch"] / touched["mini_batch"],
        "entropy_divergence": float(np.mean(np.abs(micro - mini) / mini)),
        "final_entropy_ratio": float(micro[-1] / mini[-1]),
    }


def _scope_claims(scope: dict[str, float]) -> list[Claim]:
    return [
        greater_than(
            "questions.scope.micro_batches_touch_more_tokens",
            "KL-Cov k = 2e-4: share of tokens selected per micro-batch over the share selected "
            "over the whole batch",
            scope["touched_ratio"],
            1.0,
        ),
        greater_than(
            "questions.scope.micro_batch_selection_moves_the_entropy_curve",
            "mean over steps of |H_micro - H_global| / H_global (seed means), above 10%",
            scope["entropy_divergence"],
            0.1,
        ),
    ]


def _updates_rows(stats: dict[str, dict], config: QuestionsTrainingConfig) -> dict[str, dict]:
    """Per method: per updates-per-rollout value, the final entropy, surge and roughness."""
    rows = {}
    for method in config.update_methods:
        rows[method] = {
            updates: {
                name: stats[_update_variant(method, updates)][name]["mean"]
                for name in ("final_entropy", "surge", "roughness")
            }
            for updates in config.updates_per_rollout
        }
    return rows


def _updates_claims(rows: dict[str, dict], config: QuestionsTrainingConfig) -> list[Claim]:
    claims = []
    updates = list(config.updates_per_rollout)
    few, many = min(updates), max(updates)
    if "clip-cov-2e-4" in rows:
        finals = [rows["clip-cov-2e-4"][n]["final_entropy"] for n in updates]
        claims.append(
            less_than(
                "questions.updates.clip_cov_entropy_falls_with_updates",
                "Clip-Cov r = 2e-4: rank correlation of updates per rollout with the final entropy",
                rank_correlation(updates, finals),
                0.0,
            )
        )
    if "kl-cov-2e-3" in rows:
        surge = rows["kl-cov-2e-3"]
        claims.append(
            greater_than(
                "questions.updates.kl_cov_surges_with_many_updates",
                f"KL-Cov k = 2e-3: largest entropy surge at {many} updates per rollout minus "
                f"at {few}",
                surge[many]["surge"] - surge[few]["surge"],
                0.0,
            )
        )
    return claims


def _updates_table(rows: dict[str, dict], config: QuestionsTrainingConfig) -> dict:
    columns = ["method", *(f"{n} updates: H end / surge / roughness"
                           for n in config.updates_per_rollout)]  # fmt: skip
    body = [
        [
            method,
            *(
                f"{c['final_entropy']:.4f} / {c['surge']:.3f} / {c['roughness']:.3f}"
                for c in cells.values()
            ),
        ]  # fmt: skip
        for method, cells in rows.items()
    ]
    return {"title": "Updates per rollout (means over seeds)", "columns": columns, "rows": body}


def _stats(groups: dict[str, list[RunResult]], k: int) -> dict[str, dict]:
    stats = {}
    for variant, group in groups.items():
        stats[variant] = seed_stats(group, k)
        stats[variant]["surge"] = {
            "mean": float(np.nanmean([largest_surge(r.column("entropy")) for r in group]))
        }
    return stats


@experiment(
    "questions-training",
    "user questions that need training, in the fork regime: clip-higher with KL-Cov; 1-16 "
    "updates per rollout for GRPO, Clip-Cov and KL-Cov (docs/questions.md)",
    QuestionsTrainingConfig,
    quick={"num_seeds": 2, "train.total_steps": 10, "train.eval_every": 5,
           "updates_per_rollout": (1, 8)},
)  # fmt: skip
def run(config: QuestionsTrainingConfig, context: RunContext) -> ExperimentResult:
    specs = run_specs(config, context.seed)
    results = run_sweep(specs, context, config.workers)
    k = config.train.eval_samples
    log_seed_bands(context, results, ("entropy", "reward", f"eval/mean_at_{k}"))
    groups = group_by_variant(results)
    stats = _stats(groups, k)
    headline: dict[str, Any] = {"budget": {
        "steps": config.train.total_steps,
        "responses_per_step": config.train.num_prompts * config.train.num_generations,
        "seeds": config.num_seeds,
    }, "variants": stats, "tables": []}  # fmt: skip
    claims: list[Claim] = []
    if "clip-higher" in config.parts:
        table = methods_table({m: stats[m] for m in CLIP_HIGHER_METHODS}, k)
        table["title"] = "Clip-higher with KL-Cov (mean ± 95% interval over seeds)"
        headline["tables"].append(table)
        claims += _clip_higher_claims(stats, k)
    if "scope" in config.parts:
        headline["scope"] = _scope_summary(groups)
        claims += _scope_claims(headline["scope"])
    if "updates" in config.parts:
        rows = _updates_rows(stats, config)
        headline["updates"] = rows
        headline["tables"].append(_updates_table(rows, config))
        claims += _updates_claims(rows, config)
    publish_sweep(context, "questions-training", headline["tables"], results,
                  ("entropy", "reward"))  # fmt: skip
    return ExperimentResult(headline, claims)
