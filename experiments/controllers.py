"""controllers: two ways to hold a target entropy, compared at equal budgets (issue #14).

- the **k-controller** of ``entropy-targets`` (:class:`EntropyController`): integral control of
  KL-Cov's k in log space, every rollout;
- the **adaptive entropy bonus** of Skywork-OR1 / TRL (``use_adaptive_entropy``,
  :class:`~toy_entropy.algorithms.losses.adaptive.AdaptiveEntropyCoef`): the bonus
  coefficient moves by ``entropy_coef_delta`` after every optimiser step, up while the entropy
  is at or below ``entropy_target``, down above it.

For each target H* (nats, the response-mean entropy of the rollout): tracking error (mean
``|H - H*| / H*`` over the second half), overshoot (how far below H* the entropy goes once it
has reached it, relative), settling step (the first step after which ``|H - H*| / H*`` stays
within ``tracking_bound``) and held-out accuracy, next to GRPO without control. Runs on the
``methods`` budget (countdown), the regime where ``entropy-targets`` was measured; the LLM-like
``fork`` regime costs 10x more per run on this machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from toy_entropy.experiments.entropy_targets import KControl, check_targets, tracking_error
from toy_entropy.experiments.methods import loss_changes, methods_budget
from toy_entropy.experiments.registry import ExperimentResult, RunContext, experiment
from toy_entropy.experiments.sweeps import (
    RunResult,
    RunSpec,
    group_by_variant,
    log_seed_bands,
    publish_sweep,
    run_sweep,
)
from toy_entropy.runs.claims import Claim, less_than
from toy_entropy.theory.curve_stats import interval_summary
from toy_entropy.training.config import check_range, replace_paths
from toy_entropy.training.trainer import TrainConfig

__all__ = ["ControllersConfig", "overshoot", "settling_step"]


@dataclass
class ControllersConfig:
    train: TrainConfig = field(default_factory=methods_budget)
    """every run's budget (that of ``methods``); the controlled runs change its loss"""
    targets: tuple[float, ...] = (0.3, 0.6)
    """entropy targets H* (nats)"""
    control: KControl = field(default_factory=KControl)
    """the k-controller (as entropy-targets: KL-Cov's k from 2e-2, beta 5, gain 0.5)"""
    entropy_coef_delta: float = 0.005
    """adaptive bonus: step of the coefficient per optimiser step (TRL's default)"""
    entropy_coef_max: float = 1.0
    """adaptive bonus: the coefficient's upper bound (TRL's default)"""
    tracking_bound: float = 0.25
    """a target is held when the relative tracking error is below this (as entropy-targets)"""
    num_seeds: int = 3
    """seeds per variant"""
    workers: int = 0
    """parallel training processes (0: one per CPU core; 1 on CUDA)"""

    def __post_init__(self) -> None:
        check_targets(self.targets, self.tracking_bound)
        check_range("num_seeds", self.num_seeds, 2)
        check_range("workers", self.workers, 0)
        _variant_configs(self, self.targets[0])  # the losses are valid


def _variant_configs(config: ControllersConfig, target: float) -> dict[str, TrainConfig]:
    """The k-controller's starting config and the adaptive bonus's config at ``target``."""
    adaptive = {"use_adaptive_entropy": True, "entropy_target": target, "entropy_coeff": 0.0,
                "entropy_coef_delta": config.entropy_coef_delta,
                "entropy_coef_max": config.entropy_coef_max}  # fmt: skip
    return {
        f"k-controller@{target:g}": replace_paths(
            config.train, loss_changes(config.control.loss_fields())
        ),
        f"adaptive-bonus@{target:g}": replace_paths(config.train, loss_changes(adaptive)),
    }


def overshoot(entropy: np.ndarray, target: float) -> float:
    """How far below ``target`` a falling entropy curve goes once it has reached it:
    ``max(0, max_t (H* - H_t) / H*)`` over the steps from the first ``H_t <= H*`` on (0 if the
    curve never reaches the target; dimensionless)."""
    entropy = np.asarray(entropy, dtype=np.float64)
    reached = np.flatnonzero(entropy <= target)
    if reached.size == 0:
        return 0.0
    return float(max(0.0, np.max((target - entropy[reached[0] :]) / target)))


def settling_step(entropy: np.ndarray, target: float, bound: float) -> float:
    """The first step index after which ``|H - H*| / H*`` stays within ``bound`` to the end
    (NaN if the last step is outside it)."""
    outside = np.abs(np.asarray(entropy, dtype=np.float64) - target) / target > bound
    if outside[-1]:
        return float("nan")
    last_outside = np.flatnonzero(outside)
    return float(last_outside[-1] + 1) if last_outside.size else 0.0


def _variant_stats(group: list[RunResult], target: float | None, bound: float, k: int) -> dict:
    per_seed: dict[str, list[float]] = {}
    for r in group:
        entropy = r.column("entropy")
        values = {
            "final_entropy": float(np.mean(entropy[-5:])),
            f"final_mean_at_{k}": float(r.eval_curve(f"eval/mean_at_{k}")[1][-1]),
        }
        if target is not None:
            values["tracking_error"] = tracking_error(entropy, target)
            values["overshoot"] = overshoot(entropy, target)
            values["settling_step"] = settling_step(entropy, target, bound)
        for key, value in values.items():
            per_seed.setdefault(key, []).append(value)
    return {key: interval_summary(v) for key, v in per_seed.items()}


def _table(stats: dict[str, dict], k: int) -> dict:
    columns = ["run", "entropy at end", "tracking error", "overshoot", "settling step",
               f"final mean@{k}"]  # fmt: skip

    def ci(s: dict, key: str, digits: int = 3) -> str:
        return f"{s[key]['mean']:.{digits}f} ± {s[key]['ci95']:.{digits}f}" if key in s else "-"

    rows = [
        [name, ci(s, "final_entropy"), ci(s, "tracking_error", 2), ci(s, "overshoot", 2),
         ci(s, "settling_step", 0), ci(s, f"final_mean_at_{k}")]
        for name, s in stats.items()
    ]  # fmt: skip
    return {"title": "Entropy controllers (mean ± 95% interval over seeds)", "columns": columns,
            "rows": rows}  # fmt: skip


def _claims(stats: dict[str, dict], config: ControllersConfig, k: int) -> list[Claim]:
    claims: list[Claim] = []
    for target in config.targets:
        kc, ab = stats[f"k-controller@{target:g}"], stats[f"adaptive-bonus@{target:g}"]
        claims += [
            less_than(
                f"controllers.target_{target:g}.adaptive_bonus_holds",
                f"the adaptive bonus holds H* = {target:g}: tracking error (seed mean)",
                ab["tracking_error"]["mean"],
                config.tracking_bound,
            ),
            less_than(
                f"controllers.target_{target:g}.k_controller_tracks_closer",
                f"H* = {target:g}: tracking error of the k-controller minus the adaptive bonus's",
                kc["tracking_error"]["mean"] - ab["tracking_error"]["mean"],
                0.0,
            ),
            less_than(
                f"controllers.target_{target:g}.k_controller_overshoots_less",
                f"H* = {target:g}: overshoot of the k-controller minus the adaptive bonus's",
                kc["overshoot"]["mean"] - ab["overshoot"]["mean"],
                0.0,
            ),
        ]
    return claims


@experiment(
    "controllers",
    "holding a target entropy: the adaptive entropy bonus (TRL / Skywork-OR1) against the "
    "k-controller of KL-Cov, at two targets: tracking, overshoot, settling, accuracy",
    ControllersConfig,
    quick={"num_seeds": 2, "train.total_steps": 40, "train.num_prompts": 16,
           "train.num_mini_batches": 2, "train.eval_every": 20, "train.eval_prompts": 64},
)  # fmt: skip
def run(config: ControllersConfig, context: RunContext) -> ExperimentResult:
    seeds = [context.seed + i for i in range(config.num_seeds)]
    specs = [RunSpec("grpo", seed, config.train) for seed in seeds]
    for target in config.targets:
        controller = config.control.controller(target)
        for name, train in _variant_configs(config, target).items():
            hooks = (controller,) if name.startswith("k-controller") else ()
            specs += [RunSpec(name, seed, train, hooks=hooks) for seed in seeds]
    results = run_sweep(specs, context, config.workers)
    k = config.train.eval_samples
    log_seed_bands(context, results, ("entropy", "reward", f"eval/mean_at_{k}",
                                      "control/kl_cov_ratio", "loss/entropy_coef"))  # fmt: skip
    stats = {
        name: _variant_stats(
            group, None if name == "grpo" else float(name.split("@")[1]), config.tracking_bound, k
        )  # fmt: skip
        for name, group in group_by_variant(results).items()
    }
    table = _table(stats, k)
    publish_sweep(context, "controllers", [table], results, ("entropy", f"eval/mean_at_{k}"))
    headline = {"variants": stats, "tables": [table]}
    return ExperimentResult(headline, _claims(stats, config, k))
