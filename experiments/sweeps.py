"""Multi-seed sweeps of the sequence trainer: variants x seeds, in parallel processes, with bands.

A sweep is a list of :class:`RunSpec` (a variant name, a seed, a ``TrainConfig`` and optional
rollout hooks). :func:`run_sweep` trains each into ``DIR/<variant>/seed<S>/`` (its own
metrics.jsonl, TensorBoard events, hparams, checkpoint) and returns :class:`RunResult` objects
holding every step's metrics; :func:`log_seed_bands` writes one ``DIR/<variant>/seeds-mean/``
run per variant with mean +/- std tags that the custom-scalars layout overlays.

Hooks are how experiments measure what the trainer does not log, without changing it.
:class:`InstrumentedTrainer` calls

- each rollout hook with the rollout batch (the dict returned by ``Trainer.rollout``: tokens,
  mask, rewards, advantages, old_log_probs, token_entropy, ...) *before* the step's updates; it
  returns extra metrics for the step and may replace ``trainer.loss_config`` (a frozen
  dataclass: ``dataclasses.replace``) to steer the updates that follow, which is how the
  entropy controller works;
- each :class:`UpdateProbe` before every optimiser step with the mini-batch rows it is about to
  train on; the probe returns additive totals (device tensors), summed over the step's updates
  and turned into the step's metrics by ``probe.finish``.

Hooks must be picklable (module-level functions or dataclass instances) to cross into worker
processes.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from experiments.registry import RunContext
from experiments.training_runs import identity_figure
from toy_entropy.config import config_to_dict
from toy_entropy.curve_stats import seed_band
from toy_entropy.tb_layout import add_layout, band_tags
from toy_entropy.trainer import TrainConfig, Trainer

__all__ = [
    "RolloutHook",
    "UpdateProbe",
    "RunSpec",
    "RunResult",
    "InstrumentedTrainer",
    "train_run",
    "run_sweep",
    "resolve_workers",
    "log_seed_bands",
    "group_by_variant",
    "SeedBand",
    "step_band",
]

RolloutHook = Callable[[Trainer, dict], dict]
"""``hook(trainer, batch) -> {metric: value}``, called on every rollout before its updates."""


class UpdateProbe(Protocol):
    """Measures every optimiser step; see the module docstring."""

    def before_update(
        self, trainer: Trainer, batch: dict, rows: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Additive totals of the update about to train on ``batch[...][rows]``."""

    def finish(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        """The step's metrics from the totals summed over its updates."""


@dataclass(frozen=True)
class RunSpec:
    """One training run of a sweep.

    Attributes:
        variant: the name of what is varied (``grpo``, ``clip_cov-r0.02``, ``reverse``...).
        seed: the run's seed (warm start, prompts, sampling).
        config: the trainer config.
        hooks: rollout hooks (see the module docstring).
        probes: update probes (see the module docstring).
    """

    variant: str
    seed: int
    config: TrainConfig
    hooks: tuple[RolloutHook, ...] = ()
    probes: tuple[UpdateProbe, ...] = ()

    @property
    def sub_run(self) -> str:
        return f"{self.variant}/seed{self.seed}"


@dataclass
class RunResult:
    """What one run leaves in memory: every step's metrics (trainer + hooks) and its probes.

    Attributes:
        variant, seed: as in the spec.
        rows: one dict per RL step (``step`` included), as written to metrics.jsonl.
        initial_eval: the held-out evaluation before training (logged at step 0).
        identity_points: ``(predicted dH, actual dH)`` per optimiser step on the probe states.
        num_parameters: parameters of the transformer.
        seconds: wall-clock time of the run (warm start included).
    """

    variant: str
    seed: int
    rows: list[dict[str, float]]
    initial_eval: dict[str, float]
    identity_points: list[tuple[float, float]]
    num_parameters: int
    seconds: float

    def column(self, key: str) -> np.ndarray:
        """``(num_steps,)`` values of metric ``key`` (NaN where a step did not log it)."""
        values = [row.get(key) for row in self.rows]
        return np.array([np.nan if v is None else float(v) for v in values])

    def eval_curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Steps and values of an eval metric, the initial evaluation at step 0 included."""
        steps = [0] + [row["step"] for row in self.rows if key in row]
        values = [self.initial_eval[key]] + [row[key] for row in self.rows if key in row]
        return np.array(steps), np.array(values, dtype=np.float64)


class InstrumentedTrainer(Trainer):
    """The trainer with rollout hooks and update probes whose metrics join the step's log row.

    Args:
        hooks: rollout hooks; probes: update probes; the rest as
            :class:`~toy_entropy.trainer.Trainer`.
    """

    def __init__(
        self,
        config: TrainConfig,
        seed: int,
        device: torch.device,
        log_fn: Callable[[int, dict], None] | None = None,
        writer=None,
        checkpoint_dir: Path | None = None,
        hooks: Sequence[RolloutHook] = (),
        probes: Sequence[UpdateProbe] = (),
    ) -> None:
        self.hooks, self.probes = tuple(hooks), tuple(probes)
        self.rows: list[dict[str, float]] = []
        self._pending: dict[str, float] = {}
        self._totals: dict[str, torch.Tensor] = {}
        self._outer_log = log_fn
        super().__init__(config, seed, device, self._log, writer, checkpoint_dir)

    def rollout(self) -> dict:
        batch = super().rollout()
        for hook in self.hooks:
            self._pending.update(hook(self, batch))
        return batch

    def _optimise(
        self, batch: dict, rows: torch.Tensor, on_policy: bool = False
    ) -> dict[str, torch.Tensor]:
        for probe in self.probes:
            for name, value in probe.before_update(self, batch, rows).items():
                self._totals[name] = self._totals.get(name, 0) + value
        return super()._optimise(batch, rows, on_policy)

    def _log(self, step: int, metrics: dict) -> None:
        for probe in self.probes:
            self._pending.update(probe.finish(self._totals))
        row = {**metrics, **{k: float(v) for k, v in self._pending.items()}}
        self._pending, self._totals = {}, {}
        self.rows.append({"step": step, **row})
        if self._outer_log is not None:
            self._outer_log(step, row)


def train_run(spec: RunSpec, context: RunContext) -> RunResult:
    """Warm start and train one run into ``context.out_dir/<variant>/seed<S>``.

    Logs the initial evaluation at step 0, every step's metrics, the hparams with the final
    metrics and the identity scatter, like ``training_runs.train_one_run``, plus hook metrics.
    """
    started = time.perf_counter()
    writer = context.writer(spec.sub_run)
    trainer = InstrumentedTrainer(
        spec.config,
        spec.seed,
        context.device,
        log_fn=writer.log,
        writer=writer,
        checkpoint_dir=writer.directory / "checkpoints",
        hooks=spec.hooks,
        probes=spec.probes,
    )
    trainer.initial_eval = trainer.evaluate()
    writer.log(0, trainer.initial_eval)
    for _ in context.progress(range(spec.config.total_steps), desc=spec.sub_run):
        trainer.train_step()
    trainer.save_checkpoint()
    final = trainer.rows[-1]
    writer.add_hparams(
        {"variant": spec.variant, "seed": spec.seed, **config_to_dict(spec.config)},
        {k: v for k, v in final.items() if k in ("entropy", "reward") or k.startswith("eval/")},
    )
    writer.add_figure("identity/scatter_actual_vs_predicted", identity_figure(trainer))
    return RunResult(
        variant=spec.variant,
        seed=spec.seed,
        rows=trainer.rows,
        initial_eval=trainer.initial_eval,
        identity_points=list(trainer.identity_points),
        num_parameters=sum(p.numel() for p in trainer.model.parameters()),
        seconds=time.perf_counter() - started,
    )


def resolve_workers(workers: int, num_runs: int, device: torch.device) -> int:
    """Worker processes for a sweep: ``workers`` if > 0, else one per CPU core (1 on CUDA)."""
    if workers > 0:
        return min(workers, num_runs)
    if device.type != "cpu":
        return 1
    return max(1, min(os.cpu_count() or 1, num_runs))


def _warm_in_worker(config: TrainConfig, seed: int, device: str) -> None:
    torch.set_num_threads(1)
    Trainer(config, seed, torch.device(device))  # fills the warm-start cache


def _train_in_worker(spec: RunSpec, out_dir: str, device: str) -> RunResult:
    torch.set_num_threads(1)  # one core per process; the processes share the machine
    torch.manual_seed(spec.seed)
    context = RunContext(Path(out_dir), spec.seed, torch.device(device), show_progress=False)
    try:
        return train_run(spec, context)
    finally:
        context.close()


def _warm_key(spec: RunSpec) -> tuple:
    c = spec.config
    return (c.task, c.extra_tokens, c.model_preset, c.warmstart_steps, c.warmstart_noise,
            c.warmstart_lr, spec.seed if c.warmstart_seed < 0 else c.warmstart_seed)  # fmt: skip


def run_sweep(specs: Sequence[RunSpec], context: RunContext, workers: int = 0) -> list[RunResult]:
    """Train every spec; in ``workers`` processes (0: auto, see :func:`resolve_workers`).

    Returns the results in the order of ``specs``. Warm starts shared by several specs are
    made once, before the runs start, so that parallel runs do not repeat them.
    """
    if len({spec.sub_run for spec in specs}) != len(specs):
        raise ValueError("run_sweep: two specs have the same variant and seed")
    workers = resolve_workers(workers, len(specs), context.device)
    if workers == 1:
        return [train_run(spec, context) for spec in specs]
    device = str(context.device)
    pool_context = multiprocessing.get_context("spawn")  # fork is unsafe once torch has threads
    results: dict[str, RunResult] = {}
    with ProcessPoolExecutor(workers, mp_context=pool_context) as pool:
        warm = {_warm_key(spec): spec for spec in specs}
        for future in as_completed(
            [pool.submit(_warm_in_worker, s.config, s.seed, device) for s in warm.values()]
        ):
            future.result()
        futures = {
            pool.submit(_train_in_worker, spec, str(context.out_dir), device): spec
            for spec in specs
        }
        done = as_completed(futures)
        for future in context.progress(done, total=len(futures), desc="runs"):
            result = future.result()
            results[futures[future].sub_run] = result
    return [results[spec.sub_run] for spec in specs]


def group_by_variant(results: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    """Results grouped by variant, in first-seen order."""
    groups: dict[str, list[RunResult]] = {}
    for result in results:
        groups.setdefault(result.variant, []).append(result)
    return groups


@dataclass
class SeedBand:
    """A metric over seeds: ``steps`` (N,), ``mean`` and ``std`` (N,), ``per_seed`` (S, N)."""

    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    per_seed: np.ndarray = field(repr=False)


def step_band(results: Sequence[RunResult], key: str) -> SeedBand:
    """Mean and std over the seeds of ``results`` of a per-step metric, with its steps."""
    if key.startswith("eval/"):
        curves = [r.eval_curve(key) for r in results]
        steps = curves[0][0]
        values = np.stack([c[1] for c in curves])
    else:
        steps = np.array([row["step"] for row in results[0].rows])
        values = np.stack([r.column(key) for r in results])
    mean, std = seed_band(values)
    return SeedBand(steps, mean, std, values)


def log_seed_bands(
    context: RunContext, results: Sequence[RunResult], keys: Sequence[str]
) -> dict[str, dict[str, SeedBand]]:
    """Write ``<variant>/seeds-mean`` runs (mean and mean +/- std of ``keys``) and the layout.

    Returns ``{variant: {key: band}}``.
    """
    bands: dict[str, dict[str, SeedBand]] = {}
    for variant, group in group_by_variant(results).items():
        bands[variant] = {key: step_band(group, key) for key in keys}
        rows: dict[int, dict[str, float]] = {}
        for key, band in bands[variant].items():
            _, low_tag, high_tag = band_tags(key)  # the mean keeps the metric's own name
            for step, mean, std in zip(band.steps, band.mean, band.std):
                if np.isfinite(mean):
                    row = rows.setdefault(int(step), {})
                    row[key] = float(mean)
                    row[low_tag] = float(mean - std)
                    row[high_tag] = float(mean + std)
        writer = context.writer(f"{variant}/seeds-mean")
        for step in sorted(rows):
            writer.log(step, rows[step])
    add_layout(context.writer().tensorboard, keys)
    return bands
