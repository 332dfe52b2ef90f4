"""entropy-targets: hold a target entropy with an online controller of KL-Cov's k (or Clip-Cov's r).

Beyond the paper, which leaves open what the right entropy level is. Clip-Cov and KL-Cov have a
knob, the fraction of tokens they act on, that sets how much of the collapse-driving covariance
they remove (docs/THEORY.md sections 3-5): more tokens, higher entropy. :class:`EntropyController`
turns the knob every rollout to hold a target entropy, then a sweep of targets shows what each
level costs or buys in held-out accuracy, next to GRPO without control.

The controller is integral control in log space: with the rollout's entropy H (the policy
before this step's updates) and the target H*,

    log k  <-  log k + gain * (H* - H) / H*,   clamped to [k_min, k_max],

so k grows while entropy is below the target and shrinks while it is above. It is a rollout hook
(``experiments/sweeps.py``): it replaces ``trainer.loss_config`` (a frozen dataclass) before the
step's updates and logs ``control/<knob>`` and ``control/error``. It keeps no state of its own
(the current k lives in the trainer's loss config), so one instance serves any number of runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from toy_entropy.experiments.methods import loss_changes, methods_budget
from toy_entropy.experiments.registry import ExperimentResult, RunContext, experiment
from toy_entropy.experiments.sweeps import RunSpec, group_by_variant, log_seed_bands, run_sweep
from toy_entropy.experiments.table1 import report_table1
from toy_entropy.runs.claims import Claim, less_than
from toy_entropy.runs.report import SubRun, figure_curves, markdown_table
from toy_entropy.theory.curve_stats import rank_correlation
from toy_entropy.theory.entropy import masked_response_mean
from toy_entropy.training.config import check_choice, check_range, replace_paths
from toy_entropy.training.rollout import Rollout
from toy_entropy.training.trainer import TrainConfig

__all__ = [
    "EntropyController",
    "EntropyTargetsConfig",
    "KControl",
    "KNOBS",
    "check_targets",
    "tracking_error",
]

KNOBS = {"kl_cov_ratio": "kl_cov", "clip_cov_ratio": "clip_cov"}
"""Controllable ratio -> the loss mode it belongs to."""


@dataclass(frozen=True)
class EntropyController:
    """Rollout hook holding the rollout entropy at ``target`` by adapting ``knob``.

    Attributes:
        target: H*, the entropy to hold (nats, the paper's response-mean H).
        knob: ``kl_cov_ratio`` or ``clip_cov_ratio``.
        gain: integral gain in log-knob units per relative entropy error.
        low, high: bounds of the knob (fractions of the tokens).
    """

    target: float
    knob: str = "kl_cov_ratio"
    gain: float = 0.5
    low: float = 1e-3
    high: float = 0.5

    def __post_init__(self) -> None:
        check_range("target", self.target, 0, low_inclusive=False)
        check_choice("knob", self.knob, list(KNOBS))
        check_range("gain", self.gain, 0, low_inclusive=False)
        check_range("low", self.low, 0, 1, low_inclusive=False)
        check_range("high", self.high, self.low, 1)

    def next_value(self, current: float, entropy: float) -> float:
        """The knob after one update from ``current`` given the measured ``entropy``."""
        error = (self.target - entropy) / self.target
        return float(min(self.high, max(self.low, current * math.exp(self.gain * error))))

    def __call__(self, trainer, rollout: Rollout) -> dict[str, float]:
        entropy = float(masked_response_mean(rollout.token_entropy, rollout.mask))
        value = self.next_value(getattr(trainer.loss_config, self.knob), entropy)
        trainer.loss_config = replace(trainer.loss_config, **{self.knob: value})
        return {
            f"control/{self.knob}": value,
            "control/target": self.target,
            "control/error": (self.target - entropy) / self.target,
        }


def check_targets(targets: tuple[float, ...], tracking_bound: float) -> None:
    """Entropy targets (nats) and the relative tracking bound a held target stays within."""
    if not targets:
        raise ValueError("targets=() is invalid: expected at least one entropy target")
    for target in targets:
        check_range("targets", target, 0, low_inclusive=False)
    check_range("tracking_bound", tracking_bound, 0, 1, low_inclusive=False)


def tracking_error(entropy: np.ndarray, target: float, settle: float = 0.5) -> float:
    """Mean relative distance ``|H - H*| / H*`` over the steps after the first ``settle``
    share (the controller's settling time is excluded)."""
    tail = entropy[int(settle * len(entropy)) :]
    return float(np.mean(np.abs(tail - target)) / target)


@dataclass(frozen=True)
class KControl:
    """The k-controller's settings: which ratio it turns, from where, with which gain."""

    knob: str = "kl_cov_ratio"
    """what the controller adapts: kl_cov_ratio (KL-Cov) or clip_cov_ratio (Clip-Cov)"""
    initial_ratio: float = 2e-2
    """the knob's starting value"""
    ppo_kl_coef: float = 5.0
    """KL-Cov's beta in the controlled runs"""
    gain: float = 0.5
    """controller gain (log-knob units per relative entropy error)"""

    def __post_init__(self) -> None:
        check_choice("control.knob", self.knob, list(KNOBS))
        check_range("control.initial_ratio", self.initial_ratio, 0, 1, low_inclusive=False)
        check_range("control.ppo_kl_coef", self.ppo_kl_coef, 0)
        check_range("control.gain", self.gain, 0, low_inclusive=False)

    def loss_fields(self) -> dict[str, Any]:
        """The PolicyLossConfig fields of a controlled run's start."""
        fields = {"loss_mode": KNOBS[self.knob], self.knob: self.initial_ratio}
        if self.knob == "kl_cov_ratio":
            fields["ppo_kl_coef"] = self.ppo_kl_coef
        return fields

    def controller(self, target: float) -> EntropyController:
        return EntropyController(target, self.knob, self.gain)


@dataclass
class EntropyTargetsConfig:
    train: TrainConfig = field(default_factory=methods_budget)
    """the budget of every run (that of ``methods``); the controlled runs change its loss"""
    targets: tuple[float, ...] = (0.3, 0.45, 0.6, 0.8)
    """entropy targets H* (nats)"""
    control: KControl = field(default_factory=KControl)
    """the k-controller"""
    num_seeds: int = 3
    """seeds per target (and for the uncontrolled GRPO reference)"""
    tracking_bound: float = 0.25
    """a target is held when the relative tracking error of the second half is below this"""
    workers: int = 0
    """parallel training processes (0: one per CPU core; 1 on CUDA)"""

    def __post_init__(self) -> None:
        check_targets(self.targets, self.tracking_bound)
        check_range("num_seeds", self.num_seeds, 2)
        check_range("workers", self.workers, 0)
        _configs(self)  # the controlled runs' loss must be valid


def _configs(config: EntropyTargetsConfig) -> tuple[TrainConfig, TrainConfig]:
    """The uncontrolled GRPO reference and the controlled run's starting config."""
    return config.train, replace_paths(config.train, loss_changes(config.control.loss_fields()))


@experiment(
    "entropy-targets",
    "beyond the paper: an online controller of KL-Cov's k holds a target entropy; a sweep of "
    "targets against held-out accuracy",
    EntropyTargetsConfig,
    quick={"targets": (0.6, 0.9), "num_seeds": 2, "train.total_steps": 40,
           "train.num_prompts": 16, "train.num_mini_batches": 2, "train.eval_every": 20,
           "train.eval_prompts": 64},
)  # fmt: skip
def run(config: EntropyTargetsConfig, context: RunContext) -> ExperimentResult:
    grpo, controlled = _configs(config)
    specs = [RunSpec("grpo", context.seed + i, grpo) for i in range(config.num_seeds)]
    for target in config.targets:
        controller = config.control.controller(target)
        specs += [
            RunSpec(f"target-{target:g}", context.seed + i, controlled, hooks=(controller,))
            for i in range(config.num_seeds)
        ]
    results = run_sweep(specs, context, config.workers)
    k = grpo.eval_samples
    eval_keys = ("eval/greedy_accuracy", f"eval/mean_at_{k}", f"eval/pass_at_{k}")
    knob_key = f"control/{config.control.knob}"
    log_seed_bands(context, results, ("entropy", "reward", *eval_keys, knob_key))
    per_variant: dict[str, dict] = {}
    for name, group in group_by_variant(results).items():
        target = None if name == "grpo" else float(name.split("-", 1)[1])
        stats: dict[str, list[float]] = {}
        for r in group:
            entropy = r.column("entropy")
            values = {
                "final_entropy": float(np.mean(entropy[-5:])),
                "tracking_error": tracking_error(entropy, target) if target else float("nan"),
                "final_knob": float(r.column(knob_key)[-1]) if target else 0.0,
            }
            for key in eval_keys:
                values[f"final_{key.split('/')[1]}"] = float(r.eval_curve(key)[1][-1])
            for key, value in values.items():
                stats.setdefault(key, []).append(value)
        per_variant[name] = {
            "target": target,
            **{
                key: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1))}
                for key, v in stats.items()
            },
        }
    controlled_names = [n for n in per_variant if n != "grpo"]
    targets = [per_variant[n]["target"] for n in controlled_names]
    trend = {
        key: rank_correlation(targets, [per_variant[n][key]["mean"] for n in controlled_names])
        if len(targets) > 1
        else float("nan")
        for key in (f"final_{k.split('/')[1]}" for k in eval_keys)
    }
    best = max(controlled_names, key=lambda n: per_variant[n][f"final_mean_at_{k}"]["mean"])
    table = _table(per_variant, k, config.control.knob)
    print("\n" + markdown_table(table["columns"], table["rows"]))
    writer = context.writer()
    writer.add_text("targets/table", markdown_table(table["columns"], table["rows"]))
    sub_runs = [SubRun(f"{r.variant}/seed{r.seed}", r.rows) for r in results]
    keys = ("entropy", knob_key, f"eval/mean_at_{k}")
    writer.add_figure("targets/entropy_knob_accuracy", figure_curves(sub_runs, keys))
    headline = {
        "table1": report_table1(context, results, "countdown, step 1"),
        "knob": config.control.knob,
        "variants": per_variant,
        "accuracy_vs_target_rank_correlation": trend,
        "best_target_by_mean_at_k": per_variant[best]["target"],
        "tables": [table],
    }
    claims: list[Claim] = [
        less_than(
            f"entropy_targets.target_{per_variant[n]['target']:g}.held",
            f"the controller holds H* = {per_variant[n]['target']:g} nats: mean |H - H*| / H* "
            "over the second half of the run (seed mean)",
            per_variant[n]["tracking_error"]["mean"],
            config.tracking_bound,
        )
        for n in controlled_names
    ]
    return ExperimentResult(headline, claims)


def _table(per_variant: dict, k: int, knob: str) -> dict:
    columns = [
        "run", "entropy at end", "tracking error", f"final {knob}", "final greedy",
        f"final mean@{k}", f"final pass@{k}",
    ]  # fmt: skip
    rows = []
    for name, s in per_variant.items():

        def pm(key: str, digits: int = 3, s=s) -> str:
            return f"{s[key]['mean']:.{digits}f} ± {s[key]['std']:.{digits}f}"

        rows.append(
            [
                name if s["target"] is None else f"H* = {s['target']:g}",
                pm("final_entropy"),
                "-" if s["target"] is None else pm("tracking_error", 2),
                "-" if s["target"] is None else f"{s['final_knob']['mean']:.2g}",
                pm("final_greedy_accuracy"),
                pm(f"final_mean_at_{k}"),
                pm(f"final_pass_at_{k}"),
            ]
        )
    return {"title": "Entropy targets held by the controller (mean ± std over seeds)",
            "columns": columns, "rows": rows}  # fmt: skip
