"""Shared pieces of the sequence experiments: one logged training run and its summaries."""

from __future__ import annotations

from functools import partial

import numpy as np

from toy_entropy.experiments.registry import RunContext
from toy_entropy.runs.plots import plt, scatter_identity
from toy_entropy.runs.runlog import RunWriter, tensorboard_tag
from toy_entropy.runs.tb_layout import add_layout
from toy_entropy.theory.lawfit import extrapolate_law, fit_entropy_reward_law
from toy_entropy.training.config import flat_config
from toy_entropy.training.trainer import TrainConfig, Trainer, resume_state

__all__ = [
    "train_one_run",
    "log_run_end",
    "identity_figure",
    "identity_stats",
    "identity_summary",
    "law_summary",
]


def train_one_run(
    config: TrainConfig, context: RunContext, seed: int, sub_run: str | None
) -> Trainer:
    """Warm start and train one run, logging to ``context.out_dir[/sub_run]``.

    The initial held-out evaluation is logged at step 0; the identity scatter is logged as a
    TensorBoard figure at the end. With ``context.resume`` the run continues from the newest
    checkpoint in ``checkpoints/`` (refused if there is none), logging each step once.
    """
    checkpoints = context.run_dir(sub_run) / "checkpoints"
    state = resume_state(checkpoints, config, required=True) if context.resume else None
    writer = context.writer(sub_run, resume_from_step=state["step"] if state else None)
    trainer = Trainer(
        config,
        seed,
        context.device,
        log_fn=writer.log,
        writer=writer,
        checkpoint_dir=checkpoints,
        show_progress=context.show_progress,
    )
    trainer.fit(state, progress=partial(context.progress, desc=sub_run or "train"))
    log_run_end(writer, trainer, {"seed": seed, **flat_config(config)})
    return trainer


def log_run_end(writer: RunWriter, trainer: Trainer, hparams: dict) -> None:
    """The hparams with the final metrics, the identity scatter and the custom-scalars layout
    (only the charts of tags the run logged) of a finished run."""
    final = trainer.history[-1].metrics if trainer.history else trainer.initial_eval
    logged = {name for record in trainer.history for name in record.metrics}
    add_layout(writer.tensorboard, logged={tensorboard_tag(name) for name in logged})
    writer.add_hparams(
        hparams,
        {k: v for k, v in final.items() if k in ("entropy", "reward") or k.startswith("eval/")},
    )
    if trainer.identity_points:
        writer.add_figure(
            "identity/scatter_actual_vs_predicted", identity_figure(trainer.identity_points)
        )


def identity_figure(points, title: str = "entropy change per optimiser step (probe states)"):
    """Actual against predicted dH (nats), one point per ``(predicted, actual)`` pair, with the
    y = x line; the title gives the correlation and the least-squares slope."""
    figure, axis = plt.subplots(figsize=(4.8, 4.3))
    predicted, actual = zip(*points)
    scatter_identity(axis, predicted, actual)
    stats = identity_stats(points)
    axis.set_title(
        f"{title}\ncorrelation {stats['correlation']:.3f}, slope {stats['slope']:.2f}, "
        f"{stats['num_updates']} steps",
        fontsize=9,
    )
    figure.tight_layout()
    return figure


def identity_summary(trainer: Trainer) -> dict[str, float]:
    """:func:`identity_stats` of the trainer's probe-set points."""
    return identity_stats(trainer.identity_points)


def identity_stats(points) -> dict[str, float]:
    """Correlation, sign agreement and least-squares slope of actual on predicted dH.

    Args:
        points: ``(predicted dH, actual dH)`` pairs in nats, one per optimiser step.
    """
    if not points:
        nan = float("nan")
        return {"correlation": nan, "sign_agreement": nan, "slope": nan, "num_updates": 0}
    predicted, actual = (np.array(v) for v in zip(*points))
    varies = len(actual) > 2 and np.std(predicted) > 0 and np.std(actual) > 0
    correlation = float(np.corrcoef(predicted, actual)[0, 1]) if varies else float("nan")
    slope = float(np.dot(predicted, actual) / max(np.dot(predicted, predicted), 1e-30))
    return {
        "correlation": correlation,
        "sign_agreement": float(np.mean(np.sign(predicted) == np.sign(actual))),
        "slope": slope,
        "num_updates": len(actual),
    }


def law_summary(entropy: np.ndarray, reward: np.ndarray) -> dict[str, float]:
    """The law fitted on all steps, and fitted on the first 15% to predict the rest.

    Steps the non-finite guard rolled back (NaN entries) are left out. Too few steps for a fit
    give NaN values and a ``note`` saying so.
    """
    entropy, reward = np.asarray(entropy, dtype=float), np.asarray(reward, dtype=float)
    kept = np.isfinite(entropy) & np.isfinite(reward)
    entropy, reward = entropy[kept], reward[kept]
    nan = float("nan")
    summary = {"a": nan, "b": nan, "r2": nan, "ceiling": nan, "num_points": int(kept.sum())}
    if entropy.size < 2:
        return {**summary, "rmse": nan, "final_error": nan, "note": "too few steps to fit"}
    summary.update(fit_entropy_reward_law(entropy, reward).to_dict())
    try:
        extrapolation = extrapolate_law(entropy, reward, 0.15)
    except ValueError:  # nothing left to predict after the early fit
        return {**summary, "rmse": nan, "final_error": nan, "note": "too few steps to extrapolate"}
    return {**summary, "rmse": extrapolation.rmse, "final_error": extrapolation.final_error}
