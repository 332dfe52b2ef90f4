"""collapse: how front-loaded the entropy collapse is, and the covariance that drives it.

GRPO without any entropy intervention, several seeds each, on sequence tasks (a warm-started
transformer) and on the contextual bandit (tabular softmax, expected and sampled updates).
For every setting:

- the share of the total entropy drop and of the total reward gain reached after the first
  1/12 and the first 1/3 of the steps (the paper, 11 runs of 2400 steps: 73% / 76% by 1/12 and
  94% / 93% by 1/3), per seed on lightly smoothed curves (``smoothing`` points), mean +/- std;
- the sign of the token covariance over training: the share of steps whose batch covariance
  ``cov/mean`` is positive (for the bandit: the exact ``Cov(log pi, dz)`` of the expected
  update, averaged over contexts);
- (sequence tasks) the covariance by prompt difficulty: each rollout's prompt groups bucketed
  by their accuracy (``experiments.probes.ACCURACY_BUCKETS``); the paper finds larger
  covariance on easier prompts.

The claims compare the shares with the paper's numbers within +/- ``share_tolerance``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from toy_entropy.experiments.bandit_collapse import (
    BanditCollapseConfig,
    curves,
    expected_trajectory,
    sampled_run,
)
from toy_entropy.experiments.bandit_priors import prior_problem
from toy_entropy.experiments.probes import ACCURACY_BUCKETS, covariance_by_accuracy
from toy_entropy.experiments.registry import ExperimentResult, RunContext, experiment
from toy_entropy.experiments.sweeps import RunSpec, group_by_variant, log_seed_bands, run_sweep
from toy_entropy.experiments.table1 import report_table1
from toy_entropy.runs.claims import Claim, between, greater_than
from toy_entropy.runs.report import SubRun, figure_curves
from toy_entropy.theory.curve_stats import finite_mean, fraction_positive, share_of_change
from toy_entropy.theory.entropy import predicted_entropy_change
from toy_entropy.training.config import check_choice, check_range
from toy_entropy.training.trainer import TrainConfig

__all__ = ["CollapseConfig", "train_config", "share_summary"]

PAPER_SHARES = {
    ("entropy", 1 / 12): 0.73,
    ("reward", 1 / 12): 0.76,
    ("entropy", 1 / 3): 0.94,
    ("reward", 1 / 3): 0.93,
}
"""Share of the total entropy drop / reward gain by the first 1/12 and 1/3 of the steps."""
FRACTION_NAMES = {1 / 12: "1_12", 1 / 3: "1_3"}


def collapse_budget() -> TrainConfig:
    """Each task's GRPO run: PPO loss, one update per rollout, no entropy intervention, 360 steps
    of 32 x 8 responses at learning rate 1e-3 (3e-3 destabilises sort)."""
    return TrainConfig(total_steps=360, num_prompts=32, learning_rate=1e-3, eval_every=40)


@dataclass
class CollapseConfig:
    train: TrainConfig = field(default_factory=collapse_budget)
    """every task's run; its task is replaced by each of ``tasks``"""
    tasks: tuple[str, ...] = ("reverse", "sort", "hard_prompt")
    """sequence tasks (at least two), each trained with GRPO and no entropy intervention"""
    num_seeds: int = 4
    """seeds per task"""
    smoothing: int = 5
    """points averaged around the 1/12 and 1/3 marks and at the end (odd)"""
    share_tolerance: float = 0.15
    """a share reproduces the paper's when within this distance of it"""
    bandit_priors: tuple[str, ...] = ("best-likely", "best-rare")
    """bandit priors (best-rare: the correct arm starts unlikely, covariance starts negative)"""
    bandit_rules: tuple[str, ...] = ("pg", "npg")
    """bandit update rules"""
    bandit_steps: int = 300
    """bandit updates per run"""
    bandit_seeds: int = 8
    """sampled bandit runs per prior and rule"""
    workers: int = 0
    """parallel training processes (0: one per CPU core; 1 on CUDA)"""

    def __post_init__(self) -> None:
        from toy_entropy.envs.sequence import TASKS

        if len(self.tasks) < 1:
            raise ValueError("tasks=() is invalid: expected at least one sequence task")
        for task in self.tasks:
            check_choice("tasks", task, sorted(TASKS))
        check_range("num_seeds", self.num_seeds, 2)
        check_range("train.total_steps", self.train.total_steps, 12)
        if self.smoothing < 1 or self.smoothing % 2 == 0:
            raise ValueError(f"smoothing={self.smoothing!r} is invalid: expected an odd int >= 1")
        check_range("share_tolerance", self.share_tolerance, 0, 1)
        BanditCollapseConfig(priors=self.bandit_priors, rules=self.bandit_rules)
        check_range("bandit_steps", self.bandit_steps, 12)
        check_range("bandit_seeds", self.bandit_seeds, 2)
        check_range("workers", self.workers, 0)


def train_config(config: CollapseConfig, task: str) -> TrainConfig:
    """The GRPO run of one task."""
    return replace(config.train, task=task)


def share_summary(curves: list[np.ndarray], smoothing: int) -> dict[str, dict[str, float]]:
    """Shares of the total change by 1/12 and 1/3 of the steps: per-seed mean and std, and
    of the seed-mean curve (``pooled``)."""
    out = {}
    for fraction, name in FRACTION_NAMES.items():
        per_seed = np.array([share_of_change(c, fraction, smoothing) for c in curves])
        pooled = share_of_change(np.mean(curves, axis=0), fraction, smoothing)
        std = float(per_seed.std(ddof=1)) if per_seed.size > 1 else 0.0
        out[name] = {"mean": float(per_seed.mean()), "std": std, "pooled": pooled}
    return out


@experiment(
    "collapse",
    "GRPO without intervention on sequence tasks and bandits: front-loaded collapse, "
    "covariance sign, covariance by prompt difficulty",
    CollapseConfig,
    quick={
        "tasks": ("reverse", "sort"),
        "num_seeds": 3,
        "train.total_steps": 120,
        "train.num_prompts": 16,
        "train.eval_every": 30,
        "bandit_priors": ("best-likely",),
        "bandit_steps": 150,
        "bandit_seeds": 4,
    },
)
def run(config: CollapseConfig, context: RunContext) -> ExperimentResult:
    specs = [
        RunSpec(task, context.seed + i, train_config(config, task), (covariance_by_accuracy,))
        for task in config.tasks
        for i in range(config.num_seeds)
    ]
    results = run_sweep(specs, context, config.workers)
    bands = log_seed_bands(
        context, results, ("entropy", "reward", "cov/mean", "eval/greedy_accuracy")
    )
    settings: dict[str, dict] = {}
    for task, group in group_by_variant(results).items():
        settings[task] = _sequence_summary(group, config)
        settings[task]["final_eval_greedy"] = float(bands[task]["eval/greedy_accuracy"].mean[-1])
    for prior in config.bandit_priors:
        for rule in config.bandit_rules:
            settings[f"bandit-{prior}-{rule}"] = _bandit_summary(prior, rule, config, context)
    claims = _claims(settings, config)
    headline = {"settings": settings, "tables": [_table(settings)]}
    headline["table1"] = report_table1(context, results, "GRPO, all tasks, step 1")
    _print(settings)
    sub_runs = [SubRun(f"{r.variant}/seed{r.seed}", r.rows) for r in results]
    figure = figure_curves(sub_runs, ("entropy", "reward", "cov/mean"), "GRPO, mean +/- std")
    context.writer().add_figure("collapse/entropy_reward_covariance", figure)
    return ExperimentResult(headline, claims)


def _sequence_summary(group, config: CollapseConfig) -> dict:
    entropy = [r.column("entropy") for r in group]
    reward = [r.column("reward") for r in group]
    cov = np.concatenate([r.column("cov/mean") for r in group])
    by_accuracy = {
        bucket: finite_mean(
            np.concatenate([r.column(f"cov_by_accuracy/{bucket}") for r in group]),
            np.concatenate([r.column(f"cov_by_accuracy/{bucket}_groups") for r in group]),
        )
        for bucket in ACCURACY_BUCKETS
    }
    return {
        "kind": "sequence",
        "steps": config.train.total_steps,
        "seeds": len(group),
        "initial_entropy": float(np.mean([e[0] for e in entropy])),
        "final_entropy": float(np.mean([e[-config.smoothing :].mean() for e in entropy])),
        "initial_reward": float(np.mean([r[0] for r in reward])),
        "final_reward": float(np.mean([r[-config.smoothing :].mean() for r in reward])),
        "entropy_share": share_summary(entropy, config.smoothing),
        "reward_share": share_summary(reward, config.smoothing),
        "cov_positive_frac": fraction_positive(cov),
        "cov_by_accuracy": by_accuracy,
    }


def _bandit_summary(prior: str, rule: str, config: CollapseConfig, context: RunContext) -> dict:
    bandit = BanditCollapseConfig(
        priors=(prior,), rules=(rule,), num_steps=config.bandit_steps,
        num_seeds=config.bandit_seeds,
    )  # fmt: skip
    problem = prior_problem(prior, bandit.num_contexts, bandit.num_arms, bandit.prior_exponent)
    device = context.device
    logits = torch.as_tensor(problem.prior_logits, dtype=torch.float64, device=device)
    means = torch.as_tensor(problem.reward_means, dtype=torch.float64, device=device)
    eta = bandit.pg_step_size if rule == "pg" else bandit.npg_step_size
    trajectory = expected_trajectory(logits, means, rule, eta, bandit.num_steps)  # (N+1, S, K)
    exp_entropy, exp_reward = curves(trajectory, means)
    # Cov(log pi, dz) of each expected update, mean over contexts: -(first-order dH)
    covariance = -predicted_entropy_change(trajectory[:-1], trajectory[1:] - trajectory[:-1])
    covariance = covariance.mean(dim=-1).cpu().numpy()  # (N,)
    runs = [
        sampled_run(problem, rule, eta, bandit, context.seed + i, device).numpy()
        for i in range(bandit.num_seeds)
    ]  # each (2, N+1)
    name = f"bandit-{prior}-{rule}"
    for i, history in enumerate(runs):
        writer = context.writer(f"{name}/seed{context.seed + i}")
        for step in range(history.shape[1]):
            writer.log(step, {"entropy": history[0, step], "reward": history[1, step]})
    writer = context.writer(f"{name}/expected")
    for step in range(len(exp_entropy)):
        row = {"entropy": exp_entropy[step], "reward": exp_reward[step]}
        if step < len(covariance):
            row["cov/mean"] = covariance[step]
        writer.log(step, row)
    return {
        "kind": "bandit",
        "steps": bandit.num_steps,
        "seeds": bandit.num_seeds,
        "initial_entropy": float(exp_entropy[0]),
        "final_entropy": float(np.mean([r[0, -1] for r in runs])),
        "initial_reward": float(exp_reward[0]),
        "final_reward": float(np.mean([r[1, -1] for r in runs])),
        "entropy_share": share_summary([r[0] for r in runs], config.smoothing),
        "reward_share": share_summary([r[1] for r in runs], config.smoothing),
        "expected_entropy_share": {
            n: share_of_change(exp_entropy, f) for f, n in FRACTION_NAMES.items()
        },
        "cov_positive_frac": fraction_positive(covariance),
        "cov_by_accuracy": None,
    }


def _claims(settings: dict, config: CollapseConfig) -> list[Claim]:
    claims: list[Claim] = []
    tolerance = config.share_tolerance
    for name, s in settings.items():
        if name.startswith("bandit-best-rare"):
            continue  # the rare-best-arm bandit is the counter-example: entropy rises first
        for (curve, fraction), paper in PAPER_SHARES.items():
            label = FRACTION_NAMES[fraction]
            what = "entropy drop" if curve == "entropy" else "reward gain"
            claims.append(
                between(
                    f"collapse.{name}.{curve}_share_by_{label}",
                    f"{name}: share of the total {what} reached in the first "
                    f"{label.replace('_', '/')} of the steps (seed mean; paper {paper:.2f})",
                    s[f"{curve}_share"][label]["mean"],
                    paper - tolerance,
                    paper + tolerance,
                )
            )
        claims.append(
            greater_than(
                f"collapse.{name}.covariance_positive",
                f"{name}: the covariance stays positive (share of steps with positive "
                "batch covariance)",
                s["cov_positive_frac"],
                0.9,
            )
        )
        if s["cov_by_accuracy"] is not None:
            by = s["cov_by_accuracy"]
            claims.append(
                greater_than(
                    f"collapse.{name}.easy_prompts_larger_covariance",
                    f"{name}: groups with accuracy in (2/3, 1) carry larger mean token "
                    "covariance than groups in (0, 1/3] (easy minus hard)",
                    by["easy"] - by["hard"],
                    0.0,
                )
            )
    return claims


def _fmt(share: dict) -> str:
    return f"{share['mean']:.2f} ± {share['std']:.2f}"


def _table(settings: dict) -> dict:
    columns = [
        "setting", "steps x seeds", "H drop by 1/12", "H drop by 1/3", "R gain by 1/12",
        "R gain by 1/3", "steps with cov > 0", "cov: hard / medium / easy prompts",
    ]  # fmt: skip
    rows = [
        ["paper (11 runs, 2400 steps)", "-", "0.73", "0.94", "0.76", "0.93", "-", "easy > hard"]
    ]
    for name, s in settings.items():
        by = s["cov_by_accuracy"]
        by_text = "-" if by is None else " / ".join(f"{by[b]:.3f}" for b in ACCURACY_BUCKETS)
        rows.append(
            [
                name,
                f"{s['steps']} x {s['seeds']}",
                _fmt(s["entropy_share"]["1_12"]),
                _fmt(s["entropy_share"]["1_3"]),
                _fmt(s["reward_share"]["1_12"]),
                _fmt(s["reward_share"]["1_3"]),
                f"{s['cov_positive_frac']:.2f}",
                by_text,
            ]
        )
    return {"title": "Front-loaded collapse (share of the total change, mean ± std over seeds)",
            "columns": columns, "rows": rows}  # fmt: skip


def _print(settings: dict) -> None:
    print("\nsetting                      H@1/12      H@1/3       R@1/12      R@1/3       cov>0")
    for name, s in settings.items():
        cells = [
            _fmt(s["entropy_share"]["1_12"]),
            _fmt(s["entropy_share"]["1_3"]),
            _fmt(s["reward_share"]["1_12"]),
            _fmt(s["reward_share"]["1_3"]),
        ]
        print(
            f"{name:<28} " + " ".join(f"{c:<11}" for c in cells) + f" {s['cov_positive_frac']:.2f}"
        )
