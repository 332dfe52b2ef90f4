"""clip-higher-cov: the covariance of the tokens that clip-higher admits (the paper: about -0.03).

DAPO's clip-higher raises PPO's upper clip from 1 + 0.2 to 1 + 0.28. The extra tokens it lets
through have positive advantage and a probability ratio in (1.2, 1.28]: their probability has
already risen a lot during this rollout's updates, which happens most to tokens that started
unlikely, so their log-probability sits below the batch mean and their covariance
``(lp - mean lp)(A - mean A)`` is negative. Training on them raises entropy (dH ~ -Cov), which is
the paper's explanation of why clip-higher helps against the collapse.

GRPO with clip-higher, several updates per rollout (the first one is on-policy and admits
nothing), several seeds, on each task. The probe :class:`~experiments.probes.ClipHigherAdmitted`
measures the admitted tokens at every optimiser step; the summary pools them over all steps of a
run (token-weighted), then reports mean +/- std over seeds, next to the mean covariance of all
tokens in the same updates.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from toy_entropy.algorithms.losses import PolicyLossConfig
from toy_entropy.experiments.probes import ClipHigherAdmitted
from toy_entropy.experiments.registry import ExperimentResult, RunContext, experiment
from toy_entropy.experiments.sweeps import (
    RunResult,
    RunSpec,
    group_by_variant,
    log_seed_bands,
    run_sweep,
)
from toy_entropy.experiments.table1 import report_table1
from toy_entropy.runs.claims import less_than
from toy_entropy.runs.report import SubRun, figure_curves, markdown_table
from toy_entropy.theory.curve_stats import finite_mean
from toy_entropy.training.config import check_choice, check_range
from toy_entropy.training.trainer import TrainConfig
from toy_entropy.training.warmstart import WarmStartConfig

__all__ = ["ClipHigherCovConfig", "admitted_summary"]

PAPER_ADMITTED_COV = -0.03


def clip_higher_budget() -> TrainConfig:
    """Each task's run: 100 steps of 32 x 8 responses, 8 updates per rollout (the paper's; all
    but the first are off-policy), PPO clip 0.2 low and clip-higher's 0.28 high."""
    return TrainConfig(
        warmstart=WarmStartConfig(steps=1500, noise=0.4),
        total_steps=100,
        num_prompts=32,
        num_mini_batches=8,
        learning_rate=1e-3,
        eval_every=50,
        loss=PolicyLossConfig(clip_ratio_low=0.2, clip_ratio_high=0.28),
    )


@dataclass
class ClipHigherCovConfig:
    train: TrainConfig = field(default_factory=clip_higher_budget)
    """every task's run; its task is replaced by each of ``tasks``"""
    tasks: tuple[str, ...] = ("countdown", "sort", "addition")
    """sequence tasks"""
    num_seeds: int = 3
    """seeds per task"""
    workers: int = 0
    """parallel training processes (0: one per CPU core; 1 on CUDA)"""

    def __post_init__(self) -> None:
        from toy_entropy.envs.sequence import TASKS

        if not self.tasks:
            raise ValueError("tasks=() is invalid: expected at least one task")
        for task in self.tasks:
            check_choice("tasks", task, sorted(TASKS))
        check_range("num_seeds", self.num_seeds, 2)
        check_range("train.num_mini_batches", self.train.num_mini_batches, 2)
        loss = self.train.loss
        check_range("train.loss.clip_ratio_high", loss.clip_ratio_high, loss.clip_ratio_low,
                    low_inclusive=False)  # fmt: skip
        check_range("workers", self.workers, 0)


def train_config(config: ClipHigherCovConfig, task: str) -> TrainConfig:
    return replace(config.train, task=task)


def admitted_summary(result: RunResult) -> dict[str, float]:
    """Token-weighted covariance of all admitted tokens of a run, and its context."""
    per_step = result.column("clip_higher/admitted_cov_mean")
    count = np.nansum(result.column("clip_higher/admitted_count"))
    cov_sum = np.nansum(result.column("clip_higher/admitted_cov_sum"))
    return {
        "admitted_cov_mean": float(cov_sum / count) if count else float("nan"),
        "admitted_tokens": float(count),
        "admitted_frac": finite_mean(result.column("clip_higher/admitted_frac")),
        "all_cov_mean": finite_mean(result.column("clip_higher/cov_mean")),
        "steps_with_negative_mean": float(np.mean(per_step[np.isfinite(per_step)] < 0)),
    }


@experiment(
    "clip-higher-cov",
    "mean covariance of the tokens clip-higher (eps_high = 0.28) admits: negative, as the "
    "paper's -0.03",
    ClipHigherCovConfig,
    quick={"tasks": ("countdown", "sort"), "num_seeds": 2, "train.total_steps": 40,
           "train.num_prompts": 16, "train.num_mini_batches": 4, "train.eval_every": 40},
)  # fmt: skip
def run(config: ClipHigherCovConfig, context: RunContext) -> ExperimentResult:
    specs = [
        RunSpec(task, context.seed + i, train_config(config, task), probes=(ClipHigherAdmitted(),))
        for task in config.tasks
        for i in range(config.num_seeds)
    ]
    results = run_sweep(specs, context, config.workers)
    log_seed_bands(context, results, ("entropy", "reward", "clip_higher/admitted_cov_mean"))
    per_task, claims = {}, []
    for task, group in group_by_variant(results).items():
        runs = [admitted_summary(r) for r in group]
        per_task[task] = {key: _mean_std([s[key] for s in runs]) for key in runs[0]}
        claims.append(
            less_than(
                f"clip_higher_cov.{task}.admitted_covariance_negative",
                f"{task}: the tokens clip-higher admits have negative mean covariance "
                f"(token-weighted over the run, seed mean; paper {PAPER_ADMITTED_COV})",
                per_task[task]["admitted_cov_mean"]["mean"],
                0.0,
            )
        )
    table = _table(per_task)
    print("\n" + markdown_table(table["columns"], table["rows"]))
    writer = context.writer()
    writer.add_text("clip_higher/table", markdown_table(table["columns"], table["rows"]))
    sub_runs = [SubRun(f"{r.variant}/seed{r.seed}", r.rows) for r in results]
    keys = ("clip_higher/admitted_cov_mean", "clip_higher/cov_mean", "entropy")
    writer.add_figure("clip_higher/admitted_covariance", figure_curves(sub_runs, keys))
    headline = {"paper_admitted_cov": PAPER_ADMITTED_COV, "tasks": per_task, "tables": [table]}
    headline["table1"] = report_table1(context, results, "all tasks, step 1")
    return ExperimentResult(headline, claims)


def _mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample std over seeds of the finite values (NaN where there are too few)."""
    finite = np.array([v for v in values if np.isfinite(v)])
    mean = float(finite.mean()) if finite.size else float("nan")
    return {"mean": mean, "std": float(finite.std(ddof=1)) if finite.size > 1 else float("nan")}


def _table(per_task: dict[str, dict]) -> dict:
    columns = [
        "task", "admitted tokens: mean covariance", "all tokens: mean covariance",
        "admitted share of tokens", "steps with negative admitted mean",
    ]  # fmt: skip
    rows = [["paper (Qwen2.5-7B)", f"{PAPER_ADMITTED_COV}", "-", "-", "-"]]
    for task, s in per_task.items():
        rows.append(
            [
                task,
                f"{s['admitted_cov_mean']['mean']:.3f} ± {s['admitted_cov_mean']['std']:.3f}",
                f"{s['all_cov_mean']['mean']:.3f} ± {s['all_cov_mean']['std']:.3f}",
                f"{s['admitted_frac']['mean']:.1e}",
                f"{s['steps_with_negative_mean']['mean']:.2f}",
            ]
        )
    return {"title": "Covariance of the tokens clip-higher admits (mean ± std over seeds)",
            "columns": columns, "rows": rows}  # fmt: skip
