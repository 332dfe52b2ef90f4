"""sample-polarity: positive vs negative samples (PSR / NSR / W-REINFORCE) with exact pass@k.

arXiv 2506.01347 splits REINFORCE with rewards +1 / -1 into positive-sample reinforcement
(PSR: only the correct responses, pushed up) and negative-sample reinforcement (NSR: only the
wrong ones, pushed down), and reports that NSR keeps the entropy and improves pass@k for every
k up to 256, PSR improves pass@1 and hurts large k, and W-REINFORCE (positives weighted by
lambda = 0.1) does best. RLVR-Decomposed #6 disputes that the entropy lift survives without
PPO's clip and off-policy mini-batches.

Entropy and pass@k are exact; the training batch is sampled: ``group_size`` responses per
prompt per rollout (:func:`~toy_entropy.algorithms.exact_ppo.sampled_responses`), seeded, several
seeds. With the exact expected batch instead (``group_size`` 0, infinitely many samples) the methods
cannot differ on-policy: ``E[1{correct} grad log pi] = -E[1{wrong} grad log pi]`` since
``E[grad log pi] = 0``, so PSR, NSR and W-REINFORCE follow the same gradient direction
(lambda only rescales the step by 1 + lambda); the experiment checks this exactly. Every
difference between them therefore comes from finite samples, or from clip and off-policy
updates. The policy's prompts share structure like a language model's: the logits of prompt
p are ``shared_std * u + prompt_std * v_p`` and a step moves them by ``g_p + shared_weight *
sum_q g_q`` (the shared part u learns from every prompt). Each prompt has ``num_correct``
correct responses drawn at random, so the start has easy and hard prompts. pass@k is exact:
mean over prompts of ``1 - (1 - p_correct)^k`` (:meth:`PrefixPolicy.pass_at_k`).

Methods (the loss knobs ``positive_sample_weight`` / ``negative_sample_weight``):
``psr`` (+1 / -1 rewards, weights 1 / 0), ``nsr`` (0 / 1), ``w-reinforce-<lambda>``
(lambda / 1), ``grpo`` (normalised group advantage, 1 / 1). The main runs make one on-policy
update per rollout without clip (the exact policy gradient); the ablation repeats PSR, NSR and
W-REINFORCE 0.1 with {clip off, eps 0.2} x {1, 8 updates per rollout} at the same number of
gradient steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from toy_entropy.algorithms.advantages import compute_advantages
from toy_entropy.algorithms.exact_ppo import (
    ExactBatch,
    clip_config,
    ppo_updates,
    rollout_batch,
    sampled_responses,
)
from toy_entropy.algorithms.exact_selection import exact_group_advantages
from toy_entropy.experiments.registry import ExperimentResult, RunContext, experiment
from toy_entropy.models.prefix_policy import PrefixPolicy
from toy_entropy.runs.claims import Claim, greater_than, less_than
from toy_entropy.runs.plots import plt
from toy_entropy.runs.report import markdown_table
from toy_entropy.theory.curve_stats import interval_summary
from toy_entropy.training.config import check_positive_int, check_range

__all__ = ["PolarityConfig", "polarity_task", "method_weights", "train_exact"]

LOGGED_KS = (1, 4, 16, 64, 256)


@dataclass
class PolarityConfig:
    num_prompts: int = 8
    """P prompts"""
    vocab_size: int = 4
    """V, tokens (EOS included)"""
    length: int = 3
    """L, longest response"""
    num_correct: int = 1
    """correct responses per prompt, drawn uniformly among the R responses"""
    shared_std: float = 1.5
    """scale of the warm start's shared logits u"""
    prompt_std: float = 1.5
    """scale of the warm start's per-prompt logits v_p"""
    shared_weight: float = 1.0
    """coupling of the prompts' updates (0: independent tabular prompts)"""
    lambdas: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)
    """W-REINFORCE weights of the positive samples"""
    steps: int = 400
    """gradient steps of every method"""
    step_size: float = 2.0
    """eta, on the logits"""
    max_k: int = 256
    """pass@k curves for k = 1..max_k"""
    ablation_lambdas: tuple[float, ...] = (0.1,)
    """W-REINFORCE lambdas repeated in the {clip} x {updates per rollout} ablation"""
    ablation_updates: int = 8
    """updates per rollout of the off-policy arm of the ablation"""
    ablation_eps: float = 0.2
    """clip_ratio_low = clip_ratio_high of the clipped arm of the ablation"""
    group_size: int = 8
    """G responses sampled per prompt per rollout (0: the exact infinite-sample batch)"""
    num_seeds: int = 5
    """tasks, warm starts and samples (seed, seed + 1, ...)"""

    def __post_init__(self) -> None:
        check_positive_int("num_prompts", self.num_prompts)
        check_range("vocab_size", self.vocab_size, 3, 8)
        check_range("length", self.length, 1, 5)
        check_positive_int("num_correct", self.num_correct)
        check_range("shared_std", self.shared_std, 0)
        check_range("prompt_std", self.prompt_std, 0)
        check_range("shared_weight", self.shared_weight, 0)
        for value in (*self.lambdas, *self.ablation_lambdas):
            check_range("lambdas", value, 0, 1)
        check_positive_int("steps", self.steps)
        check_range("step_size", self.step_size, 0, low_inclusive=False)
        check_range("max_k", self.max_k, 1, 4096)
        check_positive_int("ablation_updates", self.ablation_updates)
        check_range("ablation_eps", self.ablation_eps, 0, 1, low_inclusive=False)
        check_range("group_size", self.group_size, 0, 4096)
        if self.group_size == 1:
            check_range("group_size", self.group_size, 2, 4096)  # GRPO needs 2 per group
        check_positive_int("num_seeds", self.num_seeds)


def polarity_task(config: PolarityConfig, seed: int) -> tuple[PrefixPolicy, torch.Tensor]:
    """The warm-started policy and its 0/1 rewards ``(P, R)`` (module docstring)."""
    policy = PrefixPolicy(config.num_prompts, config.vocab_size, config.length)
    P, S, V = policy.logits.shape
    R = policy.num_responses
    if config.num_correct >= R:
        raise ValueError(f"num_correct={config.num_correct} must be below R={R} responses")
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn(1, S, V, generator=generator, dtype=torch.float64)
    own = torch.randn(P, S, V, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        policy.logits.copy_(config.shared_std * shared + config.prompt_std * own)
    rewards = torch.zeros(P, R, dtype=torch.float64)
    for p in range(P):
        rewards[p, torch.randperm(R, generator=generator)[: config.num_correct]] = 1.0
    return policy, rewards


def method_weights(method: str) -> tuple[float, float]:
    """``(positive_sample_weight, negative_sample_weight)`` of a method name."""
    if method in ("psr", "nsr", "grpo"):
        return {"psr": (1.0, 0.0), "nsr": (0.0, 1.0), "grpo": (1.0, 1.0)}[method]
    if method.startswith("w-reinforce-"):
        return float(method.removeprefix("w-reinforce-")), 1.0
    raise ValueError(f"unknown method {method!r}: psr, nsr, grpo or w-reinforce-<lambda>")


def _rollout(
    policy: PrefixPolicy,
    rewards: torch.Tensor,
    method: str,
    group_size: int,
    generator: torch.Generator,
) -> ExactBatch:
    """One rollout's batch: G sampled responses per prompt (exact batch for G = 0), with
    GRPO's group advantage (sampled or exact) or the +1 / -1 reward."""
    if group_size == 0:
        advantage = 2.0 * rewards - 1.0
        if method == "grpo":
            advantage, kept = exact_group_advantages(policy.response_probs().detach(), rewards)
            advantage = advantage * kept
        return rollout_batch(policy, advantage)
    index, weights = sampled_responses(policy, group_size, generator)  # (P, G), (P, R)
    advantage = 2.0 * rewards - 1.0  # (P, R)
    if method == "grpo":  # every copy of a response has the same group advantage
        sampled = compute_advantages("grpo", rewards.gather(1, index))  # (P, G)
        advantage = torch.zeros_like(rewards).scatter_(1, index, sampled)
    return rollout_batch(policy, advantage, weights)


def train_exact(
    policy: PrefixPolicy,
    rewards: torch.Tensor,
    method: str,
    config: PolarityConfig,
    updates_per_rollout: int = 1,
    eps: float | None = None,
    seed: int = 0,
    group_size: int | None = None,
) -> dict[str, list]:
    """``config.steps`` gradient steps of ``method`` from the policy's logits (restored after),
    on batches of ``group_size`` (default ``config.group_size``) responses sampled with
    ``seed``. Returns per-step lists (start included) of ``entropy`` (nats), ``reward``
    (expected, = exact pass@1) and ``pass_at`` (exact pass@k for :data:`LOGGED_KS`), and the
    final ``pass_curve`` (k = 1..max_k)."""
    positive, negative = method_weights(method)
    if positive == 0 and negative == 0:
        raise ValueError(f"{method}: both sample weights are 0")
    loss = clip_config(eps, eps, positive_sample_weight=positive, negative_sample_weight=negative)
    start = policy.logits.detach().clone()
    curves: dict[str, list] = {"entropy": [], "reward": [], "pass_at": []}
    group_size = config.group_size if group_size is None else group_size
    generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def record(logits: torch.Tensor) -> None:
        curves["entropy"].append(float(policy.entropy(logits=logits)))
        curves["pass_at"].append(policy.pass_at_k(rewards, LOGGED_KS, logits=logits).tolist())
        curves["reward"].append(curves["pass_at"][-1][0])

    try:
        record(start)
        done = 0
        while done < config.steps:
            batch = _rollout(policy, rewards, method, group_size, generator)
            k = min(updates_per_rollout, config.steps - done)
            path = ppo_updates(policy, batch, loss, config.step_size, k, config.shared_weight)
            for logits in path:
                record(logits)
            with torch.no_grad():
                policy.logits.copy_(path[-1])
            done += k
        ks = range(1, config.max_k + 1)
        curves["pass_curve"] = policy.pass_at_k(rewards, ks).tolist()
    finally:
        with torch.no_grad():
            policy.logits.copy_(start)
    return curves


def _crossover(curve: list[float], start: list[float]) -> int | None:
    """The smallest k with pass@k below the start's, or None."""
    below = [k for k, (a, b) in enumerate(zip(curve, start, strict=True), start=1) if a < b]
    return below[0] if below else None


@experiment(
    "sample-polarity",
    "PSR / NSR / GRPO / W-REINFORCE on an exact prefix policy: entropy and exact pass@k for "
    "k = 1..256, the k where positive-only falls below the start, the clip x off-policy ablation",
    PolarityConfig,
    quick={"steps": 40, "num_seeds": 2, "lambdas": (0.1,), "num_prompts": 4},
)
def run(config: PolarityConfig, context: RunContext) -> ExperimentResult:
    started = time.perf_counter()
    methods = ["psr", "nsr", "grpo"] + [f"w-reinforce-{lam:g}" for lam in config.lambdas]
    ablated = ["psr", "nsr"] + [f"w-reinforce-{lam:g}" for lam in config.ablation_lambdas]
    arms = [(u, e) for e in (None, config.ablation_eps) for u in (1, config.ablation_updates)]
    seeds = [context.seed + i for i in range(config.num_seeds)]
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    ablation: dict[tuple, list[float]] = {(m, u, e): [] for m in ablated for u, e in arms}
    starts, exact_gaps = [], []
    for seed in context.progress(seeds, total=len(seeds), desc="seeds"):
        policy, rewards = polarity_task(config, seed)
        ks = range(1, config.max_k + 1)
        starts.append({
            "entropy": float(policy.entropy(logits=policy.logits.detach())),
            "pass_curve": policy.pass_at_k(rewards, ks).tolist(),
        })  # fmt: skip
        for method in methods:
            runs[method].append(train_exact(policy, rewards, method, config, seed=seed))
        for method, updates, eps in ablation:
            if (updates, eps) == (1, None) and method in runs:
                curves = runs[method][-1]
            else:
                curves = train_exact(policy, rewards, method, config, updates, eps, seed)
            ablation[(method, updates, eps)].append(curves["entropy"][-1] / curves["entropy"][0])
        exact = [train_exact(policy, rewards, m, config, group_size=0) for m in ("psr", "nsr")]
        exact_gaps.append(
            max(abs(a - b) for a, b in zip(exact[0]["entropy"], exact[1]["entropy"], strict=True))
        )
    _log_curves(context, runs)
    summary = _summarise(config, runs, starts, ablation, methods)
    summary["exact_psr_nsr_max_entropy_gap"] = max(exact_gaps)
    tables = _tables(summary, config)
    text = "\n\n".join(f"{t['title']}\n{markdown_table(t['columns'], t['rows'])}" for t in tables)
    print("\n" + text)
    writer = context.writer()
    writer.add_text("sample_polarity/tables", text)
    writer.add_figure("sample_polarity/curves", _figure(runs, starts, methods, context.out_dir))
    headline = summary | {"tables": tables, "seconds": time.perf_counter() - started}
    return ExperimentResult(headline, _claims(summary, config))


def _log_curves(context: RunContext, runs: dict[str, list[dict]]) -> None:
    """One sub-run per method: the seed-mean curves."""
    for method, seed_runs in runs.items():
        writer = context.writer(method)
        entropy = np.mean([r["entropy"] for r in seed_runs], axis=0)
        reward = np.mean([r["reward"] for r in seed_runs], axis=0)
        pass_at = np.mean([r["pass_at"] for r in seed_runs], axis=0)  # (steps + 1, K)
        for step in range(entropy.size):
            row = {"entropy": entropy[step], "reward": reward[step]}
            row |= {f"exact/pass_at_{k}": pass_at[step, i] for i, k in enumerate(LOGGED_KS)}
            writer.log(step, row)


def _summarise(config, runs, starts, ablation, methods) -> dict:
    start_curves = [s["pass_curve"] for s in starts]
    per_method = {}
    for method in methods:
        seed_runs = runs[method]
        gains = np.array([r["pass_curve"] for r in seed_runs]) - np.array(start_curves)  # (n, K)
        crossings = [
            _crossover(r["pass_curve"], s) for r, s in zip(seed_runs, start_curves, strict=True)
        ]
        ratios = [r["entropy"][-1] / r["entropy"][0] for r in seed_runs]
        per_method[method] = {
            "final_entropy_ratio": interval_summary(ratios),
            "final_entropy": interval_summary([r["entropy"][-1] for r in seed_runs]),
            "pass_at_1_gain": interval_summary(gains[:, 0]),
            "pass_at_max_k_gain": interval_summary(gains[:, -1]),
            "min_gain_over_k": interval_summary(gains.min(axis=1)),
            "crossover_k": crossings,
            "pass_curve_mean": np.mean([r["pass_curve"] for r in seed_runs], axis=0).tolist(),
        }  # fmt: skip
    arms = {
        f"{m}|{'clip' if e is not None else 'no clip'}|{u} per rollout": interval_summary(v)
        for (m, u, e), v in ablation.items()
    }
    return {
        "start": {
            "entropy": interval_summary([s["entropy"] for s in starts]),
            "pass_curve_mean": np.mean(start_curves, axis=0).tolist(),
        },
        "methods": per_method,
        "ablation_entropy_ratio": arms,
    }


def _fmt(interval: dict, spec: str = "+.3f") -> str:
    return f"{interval['mean']:{spec}} ± {interval['ci95']:.3f}"


def _tables(summary: dict, config: PolarityConfig) -> list[dict]:
    k = config.max_k
    columns = ["method", "H_end / H_0", "pass@1 gain", f"pass@{k} gain", "min gain over k",
               "k where pass@k < start (per seed)"]  # fmt: skip
    rows = [
        [
            method,
            _fmt(s["final_entropy_ratio"], ".3f"),
            _fmt(s["pass_at_1_gain"]),
            _fmt(s["pass_at_max_k_gain"]),
            _fmt(s["min_gain_over_k"]),
            ", ".join("none" if c is None else str(c) for c in s["crossover_k"]),
        ]
        for method, s in summary["methods"].items()
    ]
    main = {
        "title": f"{config.steps} steps, G = {config.group_size} sampled responses per prompt, "
        "on-policy, no clip; exact entropy and pass@k; mean ± 95% CI over seeds",
        "columns": columns,
        "rows": rows,
    }
    ablation_rows = [
        [*name.split("|"), _fmt(value, ".3f")]
        for name, value in summary["ablation_entropy_ratio"].items()
    ]
    ablation = {
        "title": "ablation: H_end / H_0 by clip and updates per rollout (same gradient steps)",
        "columns": ["method", "clip", "updates", "H_end / H_0"],
        "rows": ablation_rows,
    }
    return [main, ablation]


def _figure(runs, starts, methods, out_dir):
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    start = np.mean([s["pass_curve"] for s in starts], axis=0)
    ks = np.arange(1, start.size + 1)
    for method in methods:
        entropy = np.mean([r["entropy"] for r in runs[method]], axis=0)
        axes[0].plot(entropy, label=method)
        curve = np.mean([r["pass_curve"] for r in runs[method]], axis=0)
        axes[1].plot(ks, curve - start, label=method)
    axes[0].set_xlabel("gradient step")
    axes[0].set_ylabel("H(pi, D) (nats)")
    axes[1].axhline(0.0, color="grey", lw=0.5)
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("k")
    axes[1].set_ylabel("exact pass@k - start")
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out_dir / "sample_polarity.png", dpi=80)
    return figure


def _claims(summary: dict, config: PolarityConfig) -> list[Claim]:
    methods, k = summary["methods"], config.max_k
    claims = [
        less_than(
            "sample_polarity.exact.psr_equals_nsr",
            "exact (infinite-sample) batch, on-policy: max |H_PSR - H_NSR| over steps and seeds "
            "(nats)",
            summary["exact_psr_nsr_max_entropy_gap"],
            1e-9,
        ),
        greater_than(
            "sample_polarity.nsr.keeps_entropy",
            "NSR: final entropy / start (mean over seeds)",
            methods["nsr"]["final_entropy_ratio"]["mean"],
            0.9,
        ),
        greater_than(
            "sample_polarity.nsr.improves_every_k",
            f"NSR: smallest gain of exact pass@k over k = 1..{k} (mean over seeds)",
            methods["nsr"]["min_gain_over_k"]["mean"],
            0.0,
        ),
        greater_than(
            "sample_polarity.psr.improves_pass_at_1",
            "PSR: gain of exact pass@1 (mean over seeds)",
            methods["psr"]["pass_at_1_gain"]["mean"],
            0.0,
        ),
        less_than(
            "sample_polarity.psr.hurts_large_k",
            f"PSR: gain of exact pass@{k} (mean over seeds)",
            methods["psr"]["pass_at_max_k_gain"]["mean"],
            0.0,
        ),
    ]
    w = "w-reinforce-0.1"
    if w in methods:
        claims.append(
            greater_than(
                "sample_polarity.w_reinforce_0.1.beats_grpo_at_large_k",
                f"W-REINFORCE 0.1 minus GRPO: exact pass@{k} gain (mean over seeds)",
                methods[w]["pass_at_max_k_gain"]["mean"]
                - methods["grpo"]["pass_at_max_k_gain"]["mean"],
                0.0,
            )
        )
    arm = summary["ablation_entropy_ratio"]["nsr|no clip|1 per rollout"]
    claims.append(
        greater_than(
            "sample_polarity.nsr.entropy_lift_without_clip_or_off_policy",
            "NSR with one on-policy update per rollout and no clip: final entropy / start",
            arm["mean"],
            1.0,
        )
    )
    return claims
