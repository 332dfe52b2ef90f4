"""cure: Clip-Cov and KL-Cov against GRPO in an LLM-like regime, at the paper's settings.

The regime is the ``fork`` task (long answers of determined scaffold tokens with a few forks, a
1024-token vocabulary whose distractors the warm start gives small but non-zero probability,
hard prompts whose correct first fork the warm start rarely takes) and the paper's recipe:
Clip-Cov r = 2e-4 (lb 1, ub 5, PPO eps 1), KL-Cov k = 2e-3 (beta 1), clip-higher eps_high =
0.28, GRPO advantages with the all-equal group filter, 8 optimiser steps per rollout,
temperature 1, token-mean aggregation, no entropy or reference-KL term. Methods are compared at
identical budgets over several seeds, with 95% Student-t intervals.

Reported: the paper's Table 1 row next to ours (the covariance tail at step 1), the methods
table, and claims with computed ``holds`` (THEORY.md s.7 item 5): final entropy of Clip-Cov
and KL-Cov at least 5x GRPO's; KL-Cov's held-out mean@k and pass@k above GRPO's with
non-overlapping intervals; entropy increasing in r, k and beta; KL-Cov steadier than Clip-Cov;
the step-1 tail ratio within 10x of the paper's; the optimisation batch large enough that the
selected fraction is not the one-token floor; GRPO's entropy below 10% of its start.

The quick preset is a smoke test (small batches, few steps): it prints so, and its claims are
not scored against the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from toy_entropy.algorithms.losses import masked_token_covariance
from toy_entropy.algorithms.losses.diagnostics import PAPER_TABLE1
from toy_entropy.experiments.methods import loss_changes, method_stats, methods_claims
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
from toy_entropy.theory.curve_stats import confidence_interval, finite_mean, rank_correlation
from toy_entropy.training.config import ConfigError, check_choice, check_range, replace_paths
from toy_entropy.training.rollout import Rollout
from toy_entropy.training.scale_presets import parse_task_kwargs
from toy_entropy.training.trainer import TrainConfig
from toy_entropy.training.warmstart import WarmStartConfig

__all__ = [
    "CURE_METHODS",
    "CureConfig",
    "ENTROPY_ALPHAS",
    "ForkRegime",
    "cure_budget",
    "cure_train_config",
    "exploding_alpha",
    "methods_table",
    "regime_train_config",
    "for_device",
    "roughness",
    "seed_stats",
]

ENTROPY_ALPHAS = ("1e-4", "1e-3", "5e-3", "1e-2", "3e-2", "1e-1")
"""entropy_coeff values of the entropy-bonus methods (the paper's knife-edge: 1e-4 and 1e-3
collapse, 5e-3 holds, 1e-2 explodes)"""

CURE_METHODS: dict[str, dict] = {
    "grpo": {},
    "clip-higher": {"clip_ratio_high": 0.28},
    "clip-cov-2e-4": {"loss_mode": "clip_cov", "clip_cov_ratio": 2e-4},
    "clip-cov-1e-3": {"loss_mode": "clip_cov", "clip_cov_ratio": 1e-3},
    "clip-cov-5e-3": {"loss_mode": "clip_cov", "clip_cov_ratio": 5e-3},
    "kl-cov-2e-3": {"loss_mode": "kl_cov", "kl_cov_ratio": 2e-3},
    "kl-cov-1e-2": {"loss_mode": "kl_cov", "kl_cov_ratio": 1e-2},
    "kl-cov-2e-3-b5": {"loss_mode": "kl_cov", "kl_cov_ratio": 2e-3, "ppo_kl_coef": 5.0},
    **{f"entropy-{a}": {"entropy_coeff": float(a)} for a in ENTROPY_ALPHAS},
}
"""Method name -> PolicyLossConfig fields it changes; the paper's settings are clip-cov-2e-4 and
kl-cov-2e-3, the others vary r, k and beta for the monotonicity claims; the entropy bonuses
(not run by default) re-test the knife-edge in this regime: the paper's 1e-4 .. 1e-2 and
larger ones to find where the toy's entropy explodes."""

DEFAULT_METHODS = tuple(m for m in CURE_METHODS if not m.startswith("entropy-"))

PAPER_CLIP_COV, PAPER_KL_COV = "clip-cov-2e-4", "kl-cov-2e-3"
ANATOMY_KEYS = (
    "anatomy/top_0.2%_distractor_share", "anatomy/top_0.2%_fork_share",
    "anatomy/top_0.2%_log_prob", "anatomy/top_0.2%_advantage",
    "anatomy/top_0.2%_abs_advantage_above_1", "anatomy/fork_cov_share",
    "anatomy/distractor_cov_share",
)  # fmt: skip
SMOKE_BANNER = (
    "cure --quick is a SMOKE TEST: small batches and few steps; its claims are computed but "
    "not scored against the paper. Run the full preset for the regime."
)


def cure_budget() -> TrainConfig:
    """Every method's run at the paper's settings on the ``fork`` task: GRPO advantages with the
    all-equal group filter, 8 optimiser steps per rollout, temperature 1, token-mean, AdamW
    1e-3; 30 steps of 256 x 8 responses, the paper's batch (about 11k valid tokens per
    optimisation batch at the start; GRPO's entropy falls below 10% of its start by step 25).
    The warm start adds no noise of its own (the fork task's demonstrations carry it, see
    :class:`ForkRegime`)."""
    return TrainConfig(
        task="fork",
        warmstart=WarmStartConfig(steps=1000, noise=0.0),
        total_steps=30,
        num_prompts=256,
        num_mini_batches=8,
        filter_groups=True,
        learning_rate=1e-3,
        eval_every=10,
        eval_prompts=128,
        probe_states=8,
        histogram_every=0,
    )


@dataclass(frozen=True)
class ForkRegime:
    """The LLM-like task of ``cure``: the ``fork`` task (long scaffolded answers, a few forks)
    in a vocabulary of ``vocab_size`` tokens, and its warm-start profile."""

    num_forks: int = 4
    """forks per answer"""
    segment_length: int = 15
    """scaffold tokens after each fork (answer length num_forks * (segment_length + 1) + 1)"""
    fork_options: int = 8
    """options per fork"""
    placement: str = "spread"
    """fork placement: spread or front"""
    vocab_size: int = 1024
    """vocabulary size V; the tokens beyond the task's are distractors"""
    distractor_rate: float = 0.002
    """warm start: share of scaffold tokens shown as a uniform distractor"""
    fork_noise: float = 0.3
    """warm start: share of forks shown as a uniform option"""
    decoy_rate: float = 0.9
    """warm start: share of hard prompts shown the common (wrong) first fork"""
    hard_fraction: float = 0.3
    """share of hard prompts"""

    def __post_init__(self) -> None:
        self.train_changes()  # the task must exist at this vocabulary size

    def train_changes(self) -> dict[str, Any]:
        """The TrainConfig fields of this regime: task, task_kwargs and extra_tokens."""
        from toy_entropy.envs.sequence import make_task

        names = ("num_forks", "segment_length", "fork_options", "placement", "distractor_rate",
                 "fork_noise", "decoy_rate", "hard_fraction")  # fmt: skip
        task_kwargs = ",".join(f"{name}={getattr(self, name)}" for name in names)
        try:
            # The task's own tokens: sized without distractors, which the vocabulary then adds.
            plain = {**parse_task_kwargs(task_kwargs), "distractor_rate": 0.0}
            base_vocab = make_task("fork", **plain).vocab.size
        except (TypeError, ValueError) as error:
            raise ConfigError("fork", task_kwargs, str(error)) from None
        check_range("fork.vocab_size", self.vocab_size, base_vocab)
        return {"task": "fork", "task_kwargs": task_kwargs,
                "extra_tokens": self.vocab_size - base_vocab}  # fmt: skip

    def task(self):
        """The ``fork`` task of this regime, at its vocabulary size."""
        from toy_entropy.envs.sequence import make_task

        changes = self.train_changes()
        kwargs = parse_task_kwargs(changes["task_kwargs"])
        return make_task("fork", extra_tokens=changes["extra_tokens"], **kwargs)


def regime_train_config(
    train: TrainConfig,
    fork: ForkRegime,
    method_fields: dict[str, Any],
    num_prompts: int,
    warmstart_seed: int = -1,
) -> TrainConfig:
    """``train`` on the ``fork`` regime with a method's PolicyLossConfig fields, ``num_prompts``
    prompts per rollout and the warm start of ``warmstart_seed`` (-1: the run's seed)."""
    changes = {**fork.train_changes(), "num_prompts": num_prompts, "warmstart.seed": warmstart_seed}
    return replace_paths(train, {**changes, **loss_changes(method_fields)})


@dataclass
class CureConfig:
    train: TrainConfig = field(default_factory=cure_budget)
    """the shared budget; each method changes its loss fields (CURE_METHODS), and ``fork``
    sets its task_kwargs and extra_tokens"""
    fork: ForkRegime = field(default_factory=ForkRegime)
    """the LLM-like task and its warm-start profile"""
    methods: tuple[str, ...] = DEFAULT_METHODS
    """methods to compare (names of CURE_METHODS; entropy-1e-4 .. entropy-1e-2 on request)"""
    num_seeds: int = 3
    """seeds per method"""
    cuda_num_prompts: int = 512
    """P, prompts per rollout on CUDA (twice the paper's batch); 0: train.num_prompts, as on
    the CPU"""
    cuda_vocab_size: int = 8192
    """V on CUDA (more distractors, rarer ones); 0: fork.vocab_size, as on the CPU"""
    shared_warm_start: bool = True
    """every run starts from the warm start of the base seed (seeds vary the RL only, as the
    paper's runs share a base model); False: one warm start per seed"""
    workers: int = 0
    """parallel training processes (0: one per CPU core; 1 on CUDA)"""
    smoke_test: bool = False
    """set by --quick: says so on screen and in the summary"""

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("methods=() is invalid: expected at least one method")
        for name in self.methods:
            check_choice("methods", name, list(CURE_METHODS))
        check_range("num_seeds", self.num_seeds, 1)
        check_range("cuda_num_prompts", self.cuda_num_prompts, 0)
        check_range("cuda_vocab_size", self.cuda_vocab_size, 0)
        check_range("workers", self.workers, 0)
        cure_train_config(self, self.methods[0], self.train.num_prompts)  # a valid TrainConfig


def cure_train_config(
    config: CureConfig, method: str, num_prompts: int, warmstart_seed: int = -1
) -> TrainConfig:
    """The TrainConfig of ``method`` (a name of CURE_METHODS) in ``config``'s regime."""
    return regime_train_config(
        config.train, config.fork, CURE_METHODS[method], num_prompts, warmstart_seed
    )


def for_device(config: CureConfig, device_type: str) -> CureConfig:
    """``config`` as it runs on ``device_type``: on CUDA with ``cuda_num_prompts`` prompts per
    rollout and a ``cuda_vocab_size`` vocabulary (each unless 0); elsewhere unchanged."""
    if device_type != "cuda":
        return config
    changes: dict[str, Any] = {}
    if config.cuda_num_prompts:
        changes["train"] = replace(config.train, num_prompts=config.cuda_num_prompts)
    if config.cuda_vocab_size:
        changes["fork"] = replace(config.fork, vocab_size=config.cuda_vocab_size)
    return replace(config, **changes)


def covariance_anatomy(trainer, rollout: Rollout) -> dict[str, float]:
    """Rollout hook: which tokens hold the covariance tail of the ``fork`` task.

    Over the whole rollout's valid tokens (the loss mask), with ``cov`` centred on rollout
    means: of the top 0.2% by covariance, the share that are distractors, the share at fork
    positions, their mean log-prob and advantage and the share with ``|A| > 1`` (where KL-Cov's
    beta = 1 penalty cannot hold a token against the policy-gradient term); and the share of
    the summed covariance held by fork positions and by distractor tokens.
    """
    mask = rollout.mask  # (B, T)
    if not bool(mask.any()):
        return {}
    lp, adv = rollout.old_log_probs, rollout.advantages  # (B, T) each
    cov = masked_token_covariance(lp, adv, mask)
    tokens = rollout.responses[mask]  # (N,)
    cov, lp, adv = cov[mask], lp[mask], adv[mask]  # (N,) each
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)[mask]  # (N,)
    task = trainer.task
    distractor = tokens >= task.vocab.distractor_ids.start  # (N,)
    fork = torch.isin(positions, torch.as_tensor(task.fork_positions, device=mask.device))
    top = cov.topk(max(1, int(2e-3 * cov.numel()))).indices
    total = cov.sum()
    values = {
        "anatomy/top_0.2%_distractor_share": distractor[top].double().mean(),
        "anatomy/top_0.2%_fork_share": fork[top].double().mean(),
        "anatomy/top_0.2%_log_prob": lp[top].double().mean(),
        "anatomy/top_0.2%_advantage": adv[top].double().mean(),
        "anatomy/top_0.2%_abs_advantage_above_1": (adv[top].abs() > 1).double().mean(),
        "anatomy/fork_cov_share": cov[fork].sum() / total,
        "anatomy/distractor_cov_share": cov[distractor].sum() / total,
    }
    return {k: float(v) for k, v in values.items()}


def roughness(entropy: np.ndarray) -> float:
    """Instability of an entropy curve: the std of its step-to-step changes over the second
    half of the run, relative to its mean there (dimensionless; 0 for a smooth line)."""
    half = np.asarray(entropy, dtype=np.float64)[len(entropy) // 2 :]
    half = half[np.isfinite(half)]
    if half.size < 3 or half.mean() <= 0:
        return float("nan")
    return float(np.std(np.diff(half), ddof=1) / half.mean())


def seed_stats(results: list[RunResult], k: int) -> dict[str, dict]:
    """method_stats plus the roughness, the valid tokens per update and 95% intervals."""
    stats = method_stats(results, k)
    extra = {
        "roughness": [roughness(r.column("entropy")) for r in results],
        "valid_tokens": [finite_mean(r.column("cov/valid_tokens")) for r in results],
        "tail_ratio_step1": [float(r.column("cov/tail_ratio")[0]) for r in results],
    }
    for name, values in extra.items():
        stats[name] = {"mean": finite_mean(values), "seeds": values}
    for stat in stats.values():
        stat["ci95"] = confidence_interval(stat["seeds"])[1]
    return stats


def _ci(stat: dict, digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['ci95']:.{digits}f}"


def methods_table(stats: dict[str, dict], k: int) -> dict:
    grpo_h = stats["grpo"]["final_entropy"]["mean"] if "grpo" in stats else float("nan")
    columns = ["method", "entropy at start", "entropy at end", "x GRPO", "final greedy",
               f"final mean@{k}", f"final pass@{k}", "tokens touched", "valid tokens / update",
               "roughness"]  # fmt: skip
    rows = []
    for method, s in stats.items():
        rows.append(
            [
                method,
                f"{s['initial_entropy']['mean']:.4f}",
                _ci(s["final_entropy"], 4),
                f"{s['final_entropy']['mean'] / grpo_h:.2f}",
                _ci(s["final_greedy"]),
                _ci(s[f"final_mean_at_{k}"]),
                _ci(s[f"final_pass_at_{k}"]),
                f"{s['touched']['mean']:.1e}" if s["touched"]["mean"] else "-",
                f"{s['valid_tokens']['mean']:.0f}",
                f"{s['roughness']['mean']:.3f}",
            ]
        )
    return {"title": "Methods at identical budgets (mean ± 95% interval over seeds)",
            "columns": columns, "rows": rows}  # fmt: skip


@experiment(
    "cure",
    "Clip-Cov / KL-Cov vs GRPO in an LLM-like regime (fork task: long scaffolded answers, a few "
    "forks, V = 1024) at the paper's settings: Table 1 row, methods with 95% intervals, claims",
    CureConfig,
    quick={
        "methods": ("grpo", "clip-higher", PAPER_CLIP_COV, PAPER_KL_COV),
        "train.total_steps": 20,
        "train.num_prompts": 16,
        "cuda_num_prompts": 0,
        "cuda_vocab_size": 0,
        "train.eval_every": 10,
        "train.eval_prompts": 64,
        "smoke_test": True,
    },
)
def run(config: CureConfig, context: RunContext) -> ExperimentResult:
    if config.smoke_test:
        print(SMOKE_BANNER, flush=True)
    config = for_device(config, context.device.type)
    num_prompts = config.train.num_prompts
    warm_seed = context.seed if config.shared_warm_start else -1
    specs = [
        RunSpec(
            method,
            context.seed + i,
            cure_train_config(config, method, num_prompts, warm_seed),
            hooks=(covariance_anatomy,),
        )
        for method in config.methods
        for i in range(config.num_seeds)
    ]
    results = run_sweep(specs, context, config.workers)
    k = specs[0].config.eval_samples
    eval_keys = ("eval/greedy_accuracy", f"eval/mean_at_{k}", f"eval/pass_at_{k}")
    log_seed_bands(
        context, results, ("entropy", "reward", *eval_keys, "select/frac", "cov/tail_ratio")
    )
    groups = group_by_variant(results)
    stats = {method: seed_stats(group, k) for method, group in groups.items()}
    table1 = report_table1(context, groups.get("grpo", results), "fork task, step 1")
    measured = table1["measured"]
    table = methods_table(stats, k)
    tables = [table1["table"], table]
    text = markdown_table(table["columns"], table["rows"])
    print(f"\n{table['title']}\n{text}")
    writer = context.writer()
    writer.add_text("cure/methods", text)
    sub_runs = [SubRun(f"{r.variant}/seed{r.seed}", r.rows) for r in results]
    figure = figure_curves(sub_runs, ("entropy", "reward", "cov/tail_ratio"), "cure")
    figure.savefig(context.out_dir / "cure_curves.png", dpi=80)
    writer.add_figure("cure/entropy_reward_tail", figure)
    anatomy = {
        key: finite_mean([r.rows[0].get(key, np.nan) for r in groups.get("grpo", results)])
        for key in ANATOMY_KEYS
    }
    print("\nstep-1 anatomy of the covariance (GRPO runs): " + ", ".join(
        f"{key.split('/')[1]} {value:.3g}" for key, value in anatomy.items()
    ))  # fmt: skip
    headline = {
        "smoke_test": config.smoke_test,
        "task": {
            "name": "fork",
            "kwargs": specs[0].config.task_kwargs,
            "vocab_size": config.fork.vocab_size,
        },  # fmt: skip
        "budget": {
            "steps": config.train.total_steps,
            "responses_per_step": num_prompts * config.train.num_generations,
            "updates_per_step": config.train.num_mini_batches,
            "seeds": config.num_seeds,
        },
        "table1": {"paper": PAPER_TABLE1, "measured": measured},
        "anatomy_step1": anatomy,
        "methods": stats,
        "tables": tables,
    }
    claims = cure_claims(stats, measured, config.smoke_test, k)
    bonus = {m: s for m, s in stats.items() if m == "grpo" or m.startswith("entropy-")}
    if len(bonus) > 1:
        headline["exploding_alpha"] = exploding_alpha(bonus)
        print(f"\nentropy bonus: smallest alpha whose entropy ends above its start: "
              f"{headline['exploding_alpha']}")  # fmt: skip
    if len(bonus) > 1 and "grpo" in bonus:  # the knife-edge, with the methods experiment's claims
        claims += [
            replace(claim, id="cure." + claim.id.split(".", 1)[1])
            for claim in methods_claims(bonus, k)
        ]
    return ExperimentResult(headline, claims)


def exploding_alpha(stats: dict[str, dict]) -> float | None:
    """The smallest entropy-bonus alpha among ``stats``' ``entropy-<alpha>`` methods whose
    final entropy is above its initial one (the methods experiment's "explodes"); None if none."""
    exploding = [
        float(m.removeprefix("entropy-"))
        for m, s in stats.items()
        if m.startswith("entropy-") and s["final_entropy"]["mean"] > s["initial_entropy"]["mean"]
    ]
    return min(exploding) if exploding else None


def _h(stats: dict, method: str) -> float:
    return stats[method]["final_entropy"]["mean"]


def _separation(stats: dict, method: str, key: str) -> float:
    """Lower 95% bound of ``method``'s ``key`` minus the upper bound of GRPO's (> 0: the
    intervals do not overlap and the method is above)."""
    a, g = stats[method][key], stats["grpo"][key]
    return (a["mean"] - a["ci95"]) - (g["mean"] + g["ci95"])


def cure_claims(stats: dict, table1: dict, smoke_test: bool, k: int) -> list[Claim]:
    """The claims of item 4 of the issue and the regime checks, for the methods that ran."""
    note = " (smoke test: not scored against the paper)" if smoke_test else ""
    claims = [
        greater_than(
            "cure.table1.tail_ratio_within_10x_of_paper",
            f"step-1 tail ratio (top-0.02% mean / mean) at least a tenth of the paper's "
            f"{PAPER_TABLE1['tail_ratio']:.0f}{note}",
            table1["tail_ratio"],
            PAPER_TABLE1["tail_ratio"] / 10,
        )
    ]
    if "grpo" not in stats:
        return claims
    g = stats["grpo"]
    claims.append(
        less_than(
            "cure.grpo.entropy_below_10pct_of_start",
            f"GRPO's final entropy relative to its start (the run is long enough){note}",
            g["final_entropy"]["mean"] / g["initial_entropy"]["mean"],
            0.1,
        )
    )
    claims.append(
        greater_than(
            "cure.batch.valid_tokens_per_update",
            f"valid tokens per optimisation batch (GRPO runs), the paper's regime >= 10k{note}",
            g["valid_tokens"]["mean"],
            10_000,
        )
    )
    for method, slug in ((PAPER_CLIP_COV, "clip_cov"), (PAPER_KL_COV, "kl_cov")):
        if method not in stats:
            continue
        claims.append(
            greater_than(
                f"cure.{slug}.entropy_5x_grpo",
                f"{method}: final entropy relative to GRPO's{note}",
                _h(stats, method) / _h(stats, "grpo"),
                5.0,
            )
        )
        claims.append(
            between(
                f"cure.{slug}.touches_1e-4_to_1e-3",
                f"{method}: mean fraction of tokens selected (paper: 1e-4..1e-3){note}",
                stats[method]["touched"]["mean"],
                1e-4,
                1e-3,
            )
        )
    if PAPER_KL_COV in stats:
        for key, what in ((f"final_mean_at_{k}", f"mean@{k}"), (f"final_pass_at_{k}", f"pass@{k}")):
            claims.append(
                greater_than(
                    f"cure.kl_cov.{what.replace('@', '_at_')}_above_grpo",
                    f"{PAPER_KL_COV}: held-out {what} above GRPO's with non-overlapping 95% "
                    f"intervals (KL-Cov's lower bound minus GRPO's upper bound){note}",
                    _separation(stats, PAPER_KL_COV, key),
                    0.0,
                )
            )
    for family, ratio_field in (("clip-cov", "clip_cov_ratio"), ("kl-cov", "kl_cov_ratio")):
        members = [m for m in stats if m.startswith(family) and not m.endswith("-b5")]
        if len(members) > 1:
            settings = [CURE_METHODS[m][ratio_field] for m in members]
            claims.append(
                greater_than(
                    f"cure.{family.replace('-', '_')}.entropy_increases_with_"
                    f"{'r' if family == 'clip-cov' else 'k'}",
                    f"{family}: rank correlation of the setting with the final entropy{note}",
                    rank_correlation(settings, [_h(stats, m) for m in members]),
                    0.99,
                )
            )
    if PAPER_KL_COV in stats and "kl-cov-2e-3-b5" in stats:
        claims.append(
            greater_than(
                "cure.kl_cov.entropy_increases_with_beta",
                f"KL-Cov k = 2e-3: final entropy with beta = 5 over beta = 1{note}",
                _h(stats, "kl-cov-2e-3-b5") / _h(stats, PAPER_KL_COV),
                1.0,
            )
        )
    if PAPER_KL_COV in stats and PAPER_CLIP_COV in stats:
        claims.append(
            less_than(
                "cure.kl_cov_steadier_than_clip_cov",
                f"roughness of the entropy curve (std of step changes over the second half / "
                f"mean), KL-Cov minus Clip-Cov at the paper's settings{note}",
                stats[PAPER_KL_COV]["roughness"]["mean"]
                - stats[PAPER_CLIP_COV]["roughness"]["mean"],
                0.0,
            )
        )
    return claims
