"""Multi-seed sweeps of the sequence trainer: variants x seeds, in parallel processes, with bands.

A sweep is a list of :class:`RunSpec` (a variant name, a seed, a ``TrainConfig`` and optional
rollout hooks). :func:`run_sweep` trains each into ``DIR/<variant>/seed<S>/`` (its own
metrics.jsonl, TensorBoard events, hparams, checkpoint) and returns :class:`RunResult` objects
holding every step's metrics; :func:`log_seed_bands` writes one ``DIR/<variant>/seeds-mean/``
run per variant with mean +/- std tags that the custom-scalars layout overlays.

Hooks (``toy_entropy.training.rollout``: rollout hooks and update probes) are how experiments
measure what the trainer does not log, without changing it; a spec's hooks are passed to its
``Trainer`` and their metrics join the step rows.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, as_completed, wait
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from toy_entropy.experiments.registry import RunContext
from toy_entropy.experiments.training_runs import log_run_end
from toy_entropy.runs.report import SubRun, figure_curves, markdown_table
from toy_entropy.runs.tb_layout import add_layout, band_tags
from toy_entropy.theory.curve_stats import seed_band
from toy_entropy.training import interrupts
from toy_entropy.training.config import flat_config
from toy_entropy.training.rollout import RolloutHook, UpdateProbe
from toy_entropy.training.trainer import TrainConfig, Trainer, resume_state

__all__ = [
    "RunSpec",
    "RunResult",
    "train_run",
    "run_sweep",
    "resolve_workers",
    "log_seed_bands",
    "group_by_variant",
    "SeedBand",
    "step_band",
]


@dataclass(frozen=True)
class RunSpec:
    """One training run of a sweep.

    Attributes:
        variant: the name of what is varied (``grpo``, ``clip_cov-r0.02``, ``reverse``...).
        seed: the run's seed (warm start, prompts, sampling).
        config: the trainer config.
        hooks: rollout hooks (see the module docstring).
        probes: update probes (see the module docstring).
        tensorboard: write TensorBoard events for the run (False: metrics.jsonl and
            checkpoints only, for experiments that show aggregates instead of every run).
    """

    variant: str
    seed: int
    config: TrainConfig
    hooks: tuple[RolloutHook, ...] = ()
    probes: tuple[UpdateProbe, ...] = ()
    tensorboard: bool = True

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


def train_run(spec: RunSpec, context: RunContext) -> RunResult:
    """Warm start and train one run into ``context.out_dir/<variant>/seed<S>``.

    Logs the initial evaluation at step 0, every step's metrics, the hparams with the final
    metrics and the identity scatter, like ``training_runs.train_one_run``, plus hook metrics.
    With ``context.resume``, a finished run (its last checkpoint at ``total_steps``) is read
    back from its checkpoint, an unfinished one continues from its newest
    checkpoint, and one without a checkpoint starts over.
    """
    started = time.perf_counter()
    checkpoints = context.run_dir(spec.sub_run) / "checkpoints"
    state = resume_state(checkpoints, spec.config, required=False) if context.resume else None
    if state is not None and state["step"] >= spec.config.total_steps:
        return _finished_result(spec, state)
    resume_from_step = state["step"] if state else None
    writer = context.writer(spec.sub_run, resume_from_step, tensorboard=spec.tensorboard)
    trainer = Trainer(
        spec.config,
        spec.seed,
        context.device,
        log_fn=writer.log,
        writer=writer,
        checkpoint_dir=checkpoints,
        rollout_hooks=spec.hooks,
        update_probes=spec.probes,
    )
    trainer.fit(state, progress=partial(context.progress, desc=spec.sub_run))
    log_run_end(writer, trainer, {"variant": spec.variant, "seed": spec.seed,
                                  **flat_config(spec.config)})  # fmt: skip
    return RunResult(
        variant=spec.variant,
        seed=spec.seed,
        rows=_rows(trainer.history),
        initial_eval=trainer.initial_eval,
        identity_points=list(trainer.identity_points),
        num_parameters=sum(p.numel() for p in trainer.model.parameters()),
        seconds=time.perf_counter() - started,
    )


def _rows(history) -> list[dict]:
    """One dict per step (``step`` included) from ``Trainer.history`` (hook metrics included)."""
    return [{"step": record.step, **record.metrics} for record in history]


def _finished_result(spec: RunSpec, state: dict) -> RunResult:
    """The result of a run that finished before the sweep was interrupted (its checkpoint)."""
    return RunResult(
        variant=spec.variant,
        seed=spec.seed,
        rows=[{"step": step, **metrics} for step, metrics in state["history"]],
        initial_eval=dict(state["initial_eval"]),
        identity_points=list(state["identity_points"]),
        num_parameters=sum(v.numel() for v in state["model"].values()),
        seconds=0.0,
    )


def resolve_workers(workers: int, num_runs: int, device: torch.device) -> int:
    """Worker processes for a sweep: ``workers`` if > 0, else one per CPU core (1 on CUDA)."""
    if workers > 0:
        return min(workers, num_runs)
    if device.type != "cpu":
        return 1
    return max(1, min(os.cpu_count() or 1, num_runs))


def _start_worker() -> None:
    """Initialiser of a sweep's worker processes."""
    interrupts.die_with_parent()  # no orphan keeps writing after its parent is killed
    interrupts.install(abort_on_repeat=False)  # a stop request finishes the step in flight
    torch.set_num_threads(1)  # one core per process; the processes share the machine


def _warm_in_worker(config: TrainConfig, seed: int, device: str) -> None:
    Trainer(config, seed, torch.device(device))  # fills the warm-start cache


def _train_in_worker(spec: RunSpec, out_dir: str, device: str, resume: bool) -> RunResult:
    interrupts.check()  # a run queued before a stop request does not start
    torch.manual_seed(spec.seed)
    context = RunContext(
        Path(out_dir), spec.seed, torch.device(device), show_progress=False, resume=resume
    )
    try:
        return train_run(spec, context)
    finally:
        context.close()


def _warm_key(spec: RunSpec) -> tuple:
    """What tells one warm start from another: the task, the model and the recipe with its
    resolved seed."""
    c = spec.config
    seed = spec.seed if c.warmstart.seed < 0 else c.warmstart.seed
    return (c.task, c.task_kwargs, c.extra_tokens, c.model_size, replace(c.warmstart, seed=seed))


def run_sweep(specs: Sequence[RunSpec], context: RunContext, workers: int = 0) -> list[RunResult]:
    """Train every spec; in ``workers`` processes (0: auto, see :func:`resolve_workers`).

    Returns the results in the order of ``specs``. Warm starts shared by several specs are
    made once, before the runs start, so that parallel runs do not repeat them. On a stop
    request (SIGINT / SIGTERM, passed on to the workers) the runs in flight finish their step
    and checkpoint it, queued runs do not start, and
    :class:`~toy_entropy.training.interrupts.Interrupted` is raised once every worker has stopped;
    ``--resume`` then continues the sweep.
    """
    if len({spec.sub_run for spec in specs}) != len(specs):
        raise ValueError("run_sweep: two specs have the same variant and seed")
    workers = resolve_workers(workers, len(specs), context.device)
    if workers == 1:
        results = []
        for spec in specs:
            interrupts.check()
            results.append(train_run(spec, context))
        return results
    device = str(context.device)
    pool_context = multiprocessing.get_context("spawn")  # fork is unsafe once torch has threads
    results: dict[str, RunResult] = {}
    pool = ProcessPoolExecutor(workers, mp_context=pool_context, initializer=_start_worker)
    pids: set[int] = set()  # every worker seen; the pool forgets them once shut down

    def workers_seen() -> set[int]:
        pids.update(_worker_pids(pool))
        return pids

    interrupts.forward_to(workers_seen)
    submitted: list[Future] = []
    try:
        warm = {_warm_key(spec): spec for spec in specs}
        submitted += [pool.submit(_warm_in_worker, s.config, s.seed, device) for s in warm.values()]
        for future in context.progress(as_completed(submitted), len(submitted), "warm starts"):
            future.result()
        interrupts.check()
        futures = {
            pool.submit(_train_in_worker, spec, str(context.out_dir), device, context.resume): spec
            for spec in specs
        }
        submitted += futures
        total = sum(spec.config.total_steps for spec in specs)
        pending = set(futures)
        with context.progress_bar(total, desc=f"{len(specs)} runs, steps") as bar:
            while pending:
                workers_seen()
                done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:
                    results[futures[future].sub_run] = future.result()
                bar.update(_steps_logged(context.out_dir, specs) - bar.n)
    except KeyboardInterrupt:  # a second Ctrl-C: abort now, without checkpoints
        _signal_workers(workers_seen(), signal.SIGKILL)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    except BaseException:
        # Queued runs are dropped; the running ones finish their step and checkpoint it, then
        # the idle workers are ended without waiting for their interpreters to wind down.
        _signal_workers(workers_seen(), signal.SIGTERM)
        for future in submitted:
            future.cancel()
        wait([f for f in submitted if not f.cancelled()], timeout=300)
        _signal_workers(pids, signal.SIGKILL)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        interrupts.forward_to(None)
    pool.shutdown(wait=True)
    return [results[spec.sub_run] for spec in specs]


def _steps_logged(out_dir: Path, specs: Sequence[RunSpec]) -> int:
    """RL steps the sweep's runs have logged so far (rows of their metrics.jsonl after step 0)."""
    count = 0
    for spec in specs:
        path = out_dir / spec.sub_run / "metrics.jsonl"
        if path.exists():
            with open(path, "rb") as handle:
                count += max(0, sum(1 for _ in handle) - 1)
    return count


def _worker_pids(pool: ProcessPoolExecutor) -> list[int]:
    # ProcessPoolExecutor has no public list of its processes before Python 3.14.
    return [process.pid for process in (getattr(pool, "_processes", None) or {}).values()]


def _signal_workers(pids, signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


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
    context: RunContext,
    results: Sequence[RunResult],
    keys: Sequence[str],
    layout: dict | None = None,
) -> dict[str, dict[str, SeedBand]]:
    """Write ``<variant>/seeds-mean`` runs (mean and mean +/- std of ``keys``) and the layout.

    The custom-scalars ``layout`` (default: the teaching layout with one band chart per key)
    goes into the top-level run and into every ``seeds-mean`` run, so that each opens on it.
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
        add_layout(writer.tensorboard, keys, layout)
    add_layout(context.writer().tensorboard, keys, layout)
    return bands


def publish_sweep(
    context: RunContext, name: str, tables: Sequence[dict], results: Sequence[RunResult],
    keys: Sequence[str],
) -> None:  # fmt: skip
    """Print each table (``{"title", "columns", "rows"}``) and keep it as the TensorBoard text
    ``<name>/<title>``; draw ``keys`` of every run into ``<name>_curves.png`` in the run
    directory and the TensorBoard figure ``<name>/curves``."""
    writer = context.writer()
    for table in tables:
        text = markdown_table(table["columns"], table["rows"])
        print(f"\n{table['title']}\n{text}")
        writer.add_text(f"{name}/{table['title'].split(' (')[0]}", text)
    sub_runs = [SubRun(f"{r.variant}/seed{r.seed}", r.rows) for r in results]
    figure = figure_curves(sub_runs, keys, name)
    if figure is not None:
        figure.savefig(context.out_dir / f"{name.replace('-', '_')}_curves.png", dpi=80)
        writer.add_figure(f"{name}/curves", figure)
