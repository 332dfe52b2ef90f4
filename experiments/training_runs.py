"""Shared pieces of the sequence experiments: one logged training run and its summaries."""

from __future__ import annotations

import numpy as np

from experiments.registry import RunContext
from toy_entropy.checkpoint import latest_checkpoint, load_checkpoint
from toy_entropy.config import config_to_dict
from toy_entropy.lawfit import extrapolate_law, fit_entropy_reward_law
from toy_entropy.plots import plt, scatter_identity
from toy_entropy.trainer import TrainConfig, Trainer

__all__ = ["train_one_run", "identity_summary", "law_summary"]


def train_one_run(
    config: TrainConfig, context: RunContext, seed: int, sub_run: str | None
) -> Trainer:
    """Warm start and train one run, logging to ``context.out_dir[/sub_run]``.

    The initial held-out evaluation is logged at step 0; the identity scatter is logged as a
    TensorBoard figure at the end. With ``context.resume`` the run continues from the newest
    checkpoint in ``checkpoints/`` (or starts over if there is none), logging each step once.
    """
    checkpoints = context.run_dir(sub_run) / "checkpoints"
    state = None
    if context.resume:
        path = latest_checkpoint(checkpoints)
        state = None if path is None else load_checkpoint(path)
    writer = context.writer(
        sub_run, resume_from_step=(state["step"] if state else -1) if context.resume else None
    )
    trainer = Trainer(
        config, seed, context.device, log_fn=writer.log, writer=writer, checkpoint_dir=checkpoints
    )
    if state is not None:
        trainer.load_state(state)
    else:
        trainer.initial_eval = trainer.evaluate()
        writer.log(0, trainer.initial_eval)
    bar = context.progress(range(trainer.step, config.total_steps), desc=sub_run or "train")
    for _ in bar:
        metrics = trainer.train_step()
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(
                step=trainer.step, reward=f"{metrics['reward']:.3f}", H=f"{metrics['entropy']:.3f}"
            )
    trainer.save_checkpoint()
    final = trainer.history[-1].metrics
    writer.add_hparams(
        {"seed": seed, **config_to_dict(config)},
        {k: v for k, v in final.items() if k in ("entropy", "reward") or k.startswith("eval/")},
    )
    writer.add_figure("identity/scatter_actual_vs_predicted", identity_figure(trainer))
    return trainer


def identity_figure(trainer: Trainer):
    figure, axis = plt.subplots(figsize=(4.5, 4))
    if trainer.identity_points:  # none when the group filter left no update at all
        predicted, actual = zip(*trainer.identity_points)
        scatter_identity(axis, predicted, actual)
    axis.set_title("entropy change per optimiser step (probe states)")
    return figure


def identity_summary(trainer: Trainer) -> dict[str, float]:
    """Correlation, sign agreement and least-squares slope of actual on predicted dH."""
    predicted, actual = (np.array(v) for v in zip(*trainer.identity_points))
    correlation = float(np.corrcoef(predicted, actual)[0, 1]) if len(actual) > 2 else float("nan")
    slope = float(np.dot(predicted, actual) / max(np.dot(predicted, predicted), 1e-30))
    return {
        "correlation": correlation,
        "sign_agreement": float(np.mean(np.sign(predicted) == np.sign(actual))),
        "slope": slope,
        "num_updates": len(actual),
    }


def law_summary(entropy: np.ndarray, reward: np.ndarray) -> dict[str, float]:
    """The law fitted on all steps, and fitted on the first 15% to predict the rest."""
    fit = fit_entropy_reward_law(entropy, reward)
    extrapolation = extrapolate_law(entropy, reward, 0.15)
    return {**fit.to_dict(), "rmse": extrapolation.rmse, "final_error": extrapolation.final_error}
