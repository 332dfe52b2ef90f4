"""lesson: the paper's four ideas in one run and one TensorBoard view (``toy-entropy run lesson``).

GRPO, Clip-Cov and KL-Cov train the same warm-started transformer at identical budgets, a few
seeds each (the ``methods`` machinery: :func:`~experiments.methods.method_config`,
:func:`~experiments.sweeps.run_sweep`, :func:`~experiments.sweeps.log_seed_bands`). The run
directory then opens in TensorBoard on a teaching view:

- IMAGES: (a) entropy collapse and reward rise of GRPO with seed bands; (b) reward against
  entropy with the law ``R = -a exp(H) + b`` fitted on all steps and on the first 15%;
  (c) actual against predicted entropy change per optimiser step, with y = x and the
  correlation; (d) the cure: entropy and held-out accuracy of GRPO, Clip-Cov and KL-Cov.
- CUSTOM SCALARS: the same curves as mean +/- std bands per method, and actual vs predicted dH.
- TEXT: the claims table and a guide; HPARAMS: one row per method, only the fields that differ.

Few TensorBoard runs, so that every dashboard opens with all of them ticked and in distinct
colours: the top-level run (figures, text, layout), one ``<method>/seeds-mean`` run per method,
and ``identity-dH/actual`` and ``identity-dH/predicted`` (the GRPO seed mean of each). The
individual seed runs keep metrics.jsonl and checkpoints (``toy-entropy report`` reads them) but
write no TensorBoard events.

The cure hook: part (d) uses the current tasks and the methods' defaults (``reverse``, r and k
of 1e-2), where Clip-Cov and KL-Cov act at the one-token-per-batch level. A regime in which the
cure is clearer plugs in through :data:`CURE_SETTINGS` (task, methods and budget of the lesson);
nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from toy_entropy.experiments.methods import MethodsConfig, method_config
from toy_entropy.experiments.registry import ExperimentResult, RunContext, experiment
from toy_entropy.experiments.sweeps import (
    RunResult,
    RunSpec,
    group_by_variant,
    log_seed_bands,
    run_sweep,
    step_band,
)
from toy_entropy.experiments.training_runs import identity_figure, identity_stats, law_summary
from toy_entropy.runs.claims import Claim, greater_than, less_than
from toy_entropy.runs.report import (
    SubRun,
    axis_label,
    claims_markdown,
    figure_curves,
    figure_law,
)
from toy_entropy.runs.tb_layout import band_tags
from toy_entropy.theory.lawfit import fit_entropy_reward_law
from toy_entropy.training.config import flat_config
from toy_entropy.training.trainer import TrainConfig

__all__ = ["CURE_SETTINGS", "LessonConfig", "lesson_layout", "varying_fields"]

BASELINE = "grpo"

CURE_SETTINGS: dict = {
    "task": "reverse",
    "methods": (BASELINE, "clip-cov-1e-2", "kl-cov-1e-2"),
}
"""Task and methods of the lesson (the defaults of :class:`LessonConfig`): where a better cure
regime (a task or budget in which Clip-Cov and KL-Cov hold entropy more clearly) plugs in."""

IDENTITY_RUNS = {"actual": "identity/actual_dH", "predicted": "identity/predicted_dH"}
"""Run name under ``identity-dH/`` -> the per-step metric whose GRPO seed mean it logs."""
IDENTITY_TAG = "identity/dH_per_step"
IMAGE_PREFIX = "0_lesson"
"""Tag group of the figures; TIME SERIES, the dashboard TensorBoard opens on, sorts groups by
name, so the lesson's figures come first."""


def lesson_budget() -> TrainConfig:
    """The lesson's budget: 40 steps of 16 x 8 responses, 2 updates per rollout (KL-Cov acts
    from the second), the warm start of ``sanity`` (cached)."""
    return TrainConfig(
        task=CURE_SETTINGS["task"],
        total_steps=40,
        num_prompts=16,
        num_mini_batches=2,
        eval_every=10,
        eval_prompts=64,
    )


@dataclass
class LessonConfig(MethodsConfig):
    """The methods comparison at a lesson's budget (two minutes on two CPU cores)."""

    train: TrainConfig = field(default_factory=lesson_budget)
    """the shared budget (see :func:`lesson_budget`); every method runs it with its own loss"""
    methods: tuple[str, ...] = CURE_SETTINGS["methods"]
    """methods to compare; the first must be grpo (the collapse, the law and the identity)"""
    num_seeds: int = 3
    """seeds per method (the bands)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.methods[0] != BASELINE:
            raise ValueError(
                f"methods={','.join(self.methods)} is invalid: the first method must be "
                f"{BASELINE} (the collapse, the law and the identity are shown on it)"
            )
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods={','.join(self.methods)} is invalid: a method repeats")


def lesson_layout(band_keys: tuple[str, ...]) -> dict:
    """The custom-scalars layout of the lesson: one mean +/- std chart per key (every method
    overlaid, one colour per ``<method>/seeds-mean`` run), and actual vs predicted dH."""
    charts = {
        f"{axis_label(key)}, mean +/- std over seeds": ["Margin", list(band_tags(key))]
        for key in band_keys
    }
    return {
        "1 entropy is traded for reward (every method)": charts,
        "2 the identity dH = -Cov(log pi, dz) (GRPO, mean over seeds)": {
            "actual vs predicted entropy change per RL step [nats]": [
                "Multiline",
                [IDENTITY_TAG],
            ],
        },
    }


def varying_fields(configs: dict[str, dict]) -> list[str]:
    """The config fields whose values differ between the ``{name: flat config}`` given
    (:func:`toy_entropy.training.config.flat_config`)."""
    first = next(iter(configs.values()))
    return [key for key in first if any(c.get(key) != first[key] for c in configs.values())]


@experiment(
    "lesson",
    "the four ideas in one run and one TensorBoard view: collapse, law, identity, "
    "Clip-Cov / KL-Cov (about 2 minutes on 2 CPU cores)",
    LessonConfig,
    quick={"num_seeds": 2, "train.total_steps": 20, "train.eval_every": 10},
)
def run(config: LessonConfig, context: RunContext) -> ExperimentResult:
    specs = [
        RunSpec(method, context.seed + i, method_config(config, method), tensorboard=False)
        for method in config.methods
        for i in range(config.num_seeds)
    ]
    results = run_sweep(specs, context, config.workers)
    groups = group_by_variant(results)
    k = specs[0].config.eval_samples
    accuracy = f"eval/mean_at_{k}"
    band_keys = ("entropy", "reward", accuracy)
    layout = lesson_layout(band_keys)
    # TensorBoard colours runs in the order they started: the top-level run and the two
    # identity runs first, so that up to three methods get the palette's distinct 4th-6th
    # colours (its 7th is grey).
    writer = context.writer()
    _log_identity_runs(context, groups[BASELINE], layout)
    log_seed_bands(context, results, band_keys, layout)
    _log_hparams(context, config, groups, accuracy)

    baseline = [_sub_run(r) for r in groups[BASELINE]]
    every = [_sub_run(r) for r in results]
    points = [point for r in groups[BASELINE] for point in r.identity_points]
    seeds = f"{config.num_seeds} seeds"
    # One panel per image: a TensorBoard card shows a 4:3 figure legibly, a row of panels not.
    figures = {
        "a1_collapse_entropy": figure_curves(
            baseline, ("entropy",), f"(a) GRPO: entropy collapses ({seeds})"
        ),
        "a2_collapse_reward": figure_curves(
            baseline, ("reward",), f"(a) GRPO: reward rises ({seeds})"
        ),
        "b_law": figure_law(baseline, f"(b) R = -a exp(H) + b, GRPO ({seeds})"),
        "c_identity": identity_figure(
            points, "(c) GRPO: actual vs predicted dH per optimiser step"
        ),
        "d1_cure_entropy": figure_curves(
            every, ("entropy",), f"(d) the cure: entropy by method ({seeds})"
        ),
        "d2_cure_accuracy": figure_curves(
            every, (accuracy,), f"(d) the cure: held-out accuracy by method ({seeds})"
        ),
    }
    for name, figure in figures.items():
        writer.add_figure(f"{IMAGE_PREFIX}/{name}", figure)

    headline = _headline(config, groups, points, accuracy)
    claims = _claims(headline)
    # TEXT sorts tags by name: the guide, then the claims, then the config.
    writer.add_text("about/dashboards", GUIDE)
    writer.add_text("claims/table", claims_markdown([c.to_dict() for c in claims]))
    return ExperimentResult(headline, claims)


GUIDE = """\
**Where to look** (docs/lesson.md explains each figure)

| dashboard | what it shows |
| --- | --- |
| TIME SERIES, IMAGES `0_lesson/a1_...`, `a2_...` | GRPO: entropy falls fast at the start \
while reward rises |
| `0_lesson/b_law` | reward against entropy and R = -a exp(H) + b; the dotted fit uses only \
the first 15% of the steps: where it meets the later points, the law extrapolates |
| `0_lesson/c_identity` | each optimiser step's actual entropy change against \
-Cov(log pi, dz): on the y = x line |
| `0_lesson/d1_...`, `d2_...` | Clip-Cov and KL-Cov against GRPO: entropy and held-out \
accuracy |
| CUSTOM SCALARS | the same curves as mean +/- std bands, one colour per method, and actual \
vs predicted dH; untick "Ignore outliers in chart scaling" to see the first steps |
| HPARAMS | one row per method: the settings that differ and the final numbers |
"""


def _sub_run(result: RunResult) -> SubRun:
    """A run's rows as its metrics.jsonl holds them: the initial evaluation at step 0 first, so
    that held-out accuracy starts where training starts."""
    rows = [{"step": 0, **result.initial_eval}, *result.rows]
    return SubRun(f"{result.variant}/seed{result.seed}", rows)


def _log_identity_runs(context: RunContext, baseline: list[RunResult], layout: dict) -> None:
    """``identity-dH/actual`` and ``identity-dH/predicted``: the GRPO seed mean per RL step,
    under one tag, so the custom-scalars chart draws them in two colours."""
    for name, key in IDENTITY_RUNS.items():
        band = step_band(baseline, key)
        writer = context.writer(f"identity-dH/{name}")
        for step, value in zip(band.steps, band.mean):
            if np.isfinite(value):
                writer.log(int(step), {IDENTITY_TAG: float(value)})
        writer.tensorboard.add_custom_scalars(layout)


def _log_hparams(
    context: RunContext, config: LessonConfig, groups: dict[str, list[RunResult]], accuracy: str
) -> None:
    """One HPARAMS row per method (its seeds-mean run, which names it): the config fields that
    differ between the methods, and the final entropy, reward and accuracy, means over seeds."""
    configs = {m: flat_config(method_config(config, m)) for m in groups}
    varying = varying_fields(configs)
    for method, group in groups.items():
        finals = {
            key: float(np.mean([r.column(key)[-1] for r in group])) for key in ("entropy", "reward")
        }
        finals[accuracy] = float(np.mean([r.eval_curve(accuracy)[1][-1] for r in group]))
        hparams = {name: configs[method][name] for name in varying}
        context.writer(f"{method}/seeds-mean").add_hparams(hparams, finals)


def _headline(
    config: LessonConfig,
    groups: dict[str, list[RunResult]],
    points: list[tuple[float, float]],
    accuracy: str,
) -> dict:
    baseline = groups[BASELINE]
    entropy = np.stack([r.column("entropy") for r in baseline])  # (seeds, steps)
    reward = np.stack([r.column("reward") for r in baseline])
    final_entropy = {
        method: float(np.mean([np.nanmean(r.column("entropy")[-5:]) for r in group]))
        for method, group in groups.items()
    }
    return {
        "task": config.train.task,
        "budget": {
            "steps": config.train.total_steps,
            "responses_per_step": config.train.num_prompts * config.train.num_generations,
            "updates_per_step": config.train.num_mini_batches,
            "seeds": config.num_seeds,
        },
        "grpo": {
            "initial_entropy": float(entropy[:, 0].mean()),
            "final_entropy": float(entropy[:, -1].mean()),
            "initial_reward": float(reward[:, 0].mean()),
            "final_reward": float(reward[:, -1].mean()),
            "initial_accuracy": float(np.mean([r.initial_eval[accuracy] for r in baseline])),
            "final_accuracy": float(np.mean([r.eval_curve(accuracy)[1][-1] for r in baseline])),
        },
        "law": _law(baseline),
        "identity": identity_stats(points),
        "final_entropy": final_entropy,
    }


def _law(baseline: list[RunResult]) -> dict:
    """The law fitted on every GRPO seed's (entropy, reward) points pooled, and the error of
    the early fit (first 15% of a run's steps) on the rest of that run, mean over seeds."""
    entropy = np.concatenate([r.column("entropy") for r in baseline])
    reward = np.concatenate([r.column("reward") for r in baseline])
    kept = np.isfinite(entropy) & np.isfinite(reward)  # steps the non-finite guard skipped
    per_seed = [law_summary(r.column("entropy"), r.column("reward")) for r in baseline]
    return {
        **fit_entropy_reward_law(entropy[kept], reward[kept]).to_dict(),
        "early_fit_rmse_seed_mean": float(np.mean([fit["rmse"] for fit in per_seed])),
    }


def _claims(headline: dict) -> list[Claim]:
    grpo, law, identity = headline["grpo"], headline["law"], headline["identity"]
    claims = [
        less_than(
            "lesson.grpo.entropy_collapses",
            "GRPO's entropy falls by more than half (final / initial, mean over seeds)",
            grpo["final_entropy"] / grpo["initial_entropy"],
            0.5,
        ),
        greater_than(
            "lesson.grpo.reward_rises",
            "GRPO's training reward rises (final minus initial, mean over seeds)",
            grpo["final_reward"] - grpo["initial_reward"],
            0.0,
        ),
        greater_than(
            "lesson.law.fits",
            "R = -a exp(H) + b fits GRPO's (entropy, reward) points (R^2, all seeds pooled)",
            law["r2"],
            0.5,
        ),
        greater_than(
            "lesson.identity.correlation",
            "the actual entropy change per optimiser step correlates with -Cov(log pi, dz)",
            identity["correlation"],
            0.9,
        ),
    ]
    grpo_h = headline["final_entropy"][BASELINE]
    for method, entropy in headline["final_entropy"].items():
        if method == BASELINE:
            continue
        claims.append(
            greater_than(
                f"lesson.cure.{method}.holds_entropy",
                f"{method} ends with at least twice GRPO's entropy (ratio of the last-5-step "
                "means, mean over seeds)",
                entropy / grpo_h,
                2.0,
            )
        )
    return claims
