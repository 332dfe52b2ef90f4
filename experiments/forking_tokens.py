"""forking-tokens: update only some tokens of each batch, chosen by entropy (issue #14).

arXiv 2506.01939 finds that a policy gradient on only the 20% highest-entropy tokens ("forking
tokens", TRL's ``top_entropy_quantile = 0.2``) matches full updates while the lowest 80% alone
fall behind; a later study finds that a random 20% recovers most of it. Here, over
``model_sizes`` (smallest first), at equal budgets:

- ``grpo``: every token;
- ``top-20%``: the 20% highest-entropy tokens of each optimisation batch;
- ``bottom-80%``: the 80% lowest-entropy tokens (``top_entropy_quantile_by = low_entropy``);
- ``random-20%``: a uniform random 20% (``top_entropy_quantile_by = random``);
- ``clip-cov-20%``: Clip-Cov removing the gradient of up to 20% of the tokens, drawn from those
  with positive covariance (band (0, inf)): the covariance-based way to touch tokens.

Held-out accuracy (mean@k) and final entropy with 95% intervals per size; claims over the mean
of the sizes. Runs on the ``methods`` budget (countdown), where three model sizes fit this
machine; the LLM-like ``fork`` regime costs 10x more per run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toy_entropy.experiments.methods import loss_changes, methods_budget
from toy_entropy.experiments.registry import ExperimentResult, RunContext, experiment
from toy_entropy.experiments.sweeps import (
    RunSpec,
    group_by_variant,
    log_seed_bands,
    publish_sweep,
    run_sweep,
)
from toy_entropy.models.model import MODEL_SIZES
from toy_entropy.runs.claims import Claim, greater_than, less_than
from toy_entropy.theory.curve_stats import finite_mean, interval_summary
from toy_entropy.training.config import check_choice, check_range, replace_paths
from toy_entropy.training.trainer import TrainConfig

__all__ = ["SUBSETS", "ForkingTokensConfig"]

SUBSETS: dict[str, dict[str, Any]] = {
    "grpo": {},
    "top-20%": {"top_entropy_quantile": 0.2},
    "bottom-80%": {"top_entropy_quantile": 0.8, "top_entropy_quantile_by": "low_entropy"},
    "random-20%": {"top_entropy_quantile": 0.2, "top_entropy_quantile_by": "random"},
    "clip-cov-20%": {
        "loss_mode": "clip_cov",
        "clip_cov_ratio": 0.2,
        "clip_cov_lb": 0.0,
        "clip_cov_ub": 1e9,
    },  # fmt: skip
}
"""Method name -> PolicyLossConfig fields it changes."""


def forking_budget() -> TrainConfig:
    """The ``methods`` budget (countdown) at 60 steps (the three sizes' 30 runs fit in about
    half an hour on 2 CPU cores)."""
    return replace_paths(methods_budget(), {"total_steps": 60, "eval_every": 20})


@dataclass
class ForkingTokensConfig:
    train: TrainConfig = field(default_factory=forking_budget)
    """every run's budget; the methods change its loss, the sizes its model_size"""
    model_sizes: tuple[str, ...] = ("cpu-nano", "cpu-micro", "cpu-small")
    """model sizes (toy_entropy.models.model.MODEL_SIZES), smallest first"""
    num_seeds: int = 2
    """seeds per method and size"""
    workers: int = 0
    """parallel training processes (0: one per CPU core; 1 on CUDA)"""

    def __post_init__(self) -> None:
        if not self.model_sizes:
            raise ValueError("model_sizes=() is invalid: expected at least one size")
        for size in self.model_sizes:
            check_choice("model_sizes", size, sorted(MODEL_SIZES))
        check_range("num_seeds", self.num_seeds, 2)
        check_range("workers", self.workers, 0)
        for fields in SUBSETS.values():  # every method's loss is valid
            replace_paths(self.train, loss_changes(fields))


def _specs(config: ForkingTokensConfig, seed: int) -> list[RunSpec]:
    specs = []
    for size in config.model_sizes:
        for method, fields in SUBSETS.items():
            train = replace_paths(config.train, {"model_size": size, **loss_changes(fields)})
            specs += [RunSpec(f"{size}/{method}", seed + i, train)
                      for i in range(config.num_seeds)]  # fmt: skip
    return specs


def _stats(results, k: int) -> dict[str, dict]:
    stats = {}
    for variant, group in group_by_variant(results).items():
        values = {
            "final_entropy": [float(np.nanmean(r.column("entropy")[-5:])) for r in group],
            f"final_mean_at_{k}": [float(r.eval_curve(f"eval/mean_at_{k}")[1][-1]) for r in group],
            "kept": [finite_mean(r.column("select/entropy_kept_frac")) for r in group],
        }
        stats[variant] = {key: interval_summary(v) for key, v in values.items()}
    return stats


def _gap(stats: dict, config: ForkingTokensConfig, key: str, a: str, b: str) -> float:
    """Mean over sizes of ``key`` of method ``a`` minus method ``b``."""
    return float(np.mean([stats[f"{s}/{a}"][key]["mean"] - stats[f"{s}/{b}"][key]["mean"]
                          for s in config.model_sizes]))  # fmt: skip


def _claims(stats: dict, config: ForkingTokensConfig, k: int) -> list[Claim]:
    accuracy = f"final_mean_at_{k}"
    return [
        greater_than(
            "forking.top20_matches_full_updates",
            f"held-out mean@{k}: top-20% minus GRPO, mean over sizes (within 0.05 or above)",
            _gap(stats, config, accuracy, "top-20%", "grpo"),
            -0.05,
        ),
        less_than(
            "forking.bottom80_below_top20",
            f"held-out mean@{k}: bottom-80% minus top-20%, mean over sizes",
            _gap(stats, config, accuracy, "bottom-80%", "top-20%"),
            0.0,
        ),
        greater_than(
            "forking.random20_matches_full_updates",
            f"held-out mean@{k}: random-20% minus GRPO, mean over sizes (within 0.05 or above)",
            _gap(stats, config, accuracy, "random-20%", "grpo"),
            -0.05,
        ),
        greater_than(
            "forking.top20_keeps_more_entropy",
            "final entropy: top-20% minus GRPO, mean over sizes",
            _gap(stats, config, "final_entropy", "top-20%", "grpo"),
            0.0,
        ),
    ]


def _table(stats: dict, config: ForkingTokensConfig, k: int) -> dict:
    columns = ["method", *(f"{s}: mean@{k} / H end" for s in config.model_sizes)]
    rows = []
    for method in SUBSETS:
        cells = []
        for size in config.model_sizes:
            s = stats[f"{size}/{method}"]
            acc, h = s[f"final_mean_at_{k}"], s["final_entropy"]
            cells.append(f"{acc['mean']:.3f} ± {acc['ci95']:.3f} / {h['mean']:.3f}")
        rows.append([method, *cells])
    return {"title": "Forking tokens (mean ± 95% interval over seeds)", "columns": columns,
            "rows": rows}  # fmt: skip


@experiment(
    "forking-tokens",
    "policy gradient on the top-20% entropy tokens vs bottom-80%, random-20%, Clip-Cov and all "
    "tokens, over 3 model sizes (arXiv 2506.01939)",
    ForkingTokensConfig,
    quick={"model_sizes": ("cpu-nano",), "train.total_steps": 40, "train.num_prompts": 16,
           "train.num_mini_batches": 2, "train.eval_every": 20, "train.eval_prompts": 64},
)  # fmt: skip
def run(config: ForkingTokensConfig, context: RunContext) -> ExperimentResult:
    results = run_sweep(_specs(config, context.seed), context, config.workers)
    k = config.train.eval_samples
    log_seed_bands(context, results, ("entropy", "reward", f"eval/mean_at_{k}"))
    stats = _stats(results, k)
    table = _table(stats, config, k)
    publish_sweep(context, "forking-tokens", [table], results, ("entropy", f"eval/mean_at_{k}"))
    headline = {"variants": stats, "tables": [table]}
    return ExperimentResult(headline, _claims(stats, config, k))
