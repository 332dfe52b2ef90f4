"""The map of the cure from training runs: Clip-Cov / KL-Cov against GRPO, one row per regime.

``python -m toy_entropy.experiments.cure_map RUN_DIR [RUN_DIR ...]`` reads finished ``cure`` and
``questions-training`` run directories and prints one row per regime: the fork density and
vocabulary of its ``fork`` task, the prompts per rollout, the updates per rollout, the valid
tokens per optimisation batch, the step-1 tail ratio of GRPO's token covariance, and for the
paper's Clip-Cov (r = 2e-4) and KL-Cov (k = 2e-3) the final entropy relative to GRPO's and
the final held-out mean@k minus GRPO's (seed means, as :func:`method_stats`).

A variant ``<method>@<U>`` (``questions-training``'s updates part) is the method at U updates
per rollout; a plain ``<method>`` has the run's ``train.num_mini_batches`` (and is left out where
``@U`` variants exist: those include U = num_mini_batches). Regimes without GRPO or without
either covariance method are skipped. The tail ratio is :func:`table1_measured`'s.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

import numpy as np

from toy_entropy.experiments.cure import CureConfig, ForkRegime, for_device
from toy_entropy.experiments.methods import method_stats
from toy_entropy.experiments.sweeps import RunResult
from toy_entropy.experiments.table1 import table1_measured
from toy_entropy.runs.report import RunDirectory, load_run_directory, markdown_table
from toy_entropy.theory.curve_stats import finite_mean
from toy_entropy.training.config import config_from_dict
from toy_entropy.training.trainer import TrainConfig

__all__ = ["map_rows", "main", "COLUMNS"]

CLIP_COV, KL_COV = "clip-cov-2e-4", "kl-cov-2e-3"
COLUMNS = [
    "run", "fork density", "V", "prompts x G", "updates / rollout", "valid tokens / update",
    "seeds", "tail ratio (step 1)", "Clip-Cov H / GRPO", "KL-Cov H / GRPO",
    "Clip-Cov d mean@k", "KL-Cov d mean@k",
]  # fmt: skip


def _result(variant: str, seed: int, rows: list[dict]) -> RunResult:
    """A RunResult from a metrics.jsonl's rows (the step-0 row holds the initial evaluation)."""
    initial = next((row for row in rows if row.get("step") == 0), {})
    steps = [row for row in rows if row.get("step", 0) > 0]
    return RunResult(variant, seed, steps, dict(initial), [], 0, 0.0)


def _grouped(run: RunDirectory) -> dict[int | None, dict[str, list[RunResult]]]:
    """Updates per rollout (None: the run's own) -> method -> its seeds' results."""
    groups: dict[int | None, dict[str, list[RunResult]]] = {}
    for sub in run.sub_runs:
        variant, _, seed = sub.name.partition("/seed")
        if not seed.isdigit():
            continue
        method, _, updates = variant.partition("@")
        key = int(updates) if updates.isdigit() else None
        groups.setdefault(key, {}).setdefault(method, []).append(
            _result(variant, int(seed), sub.rows)
        )
    return groups


def _entropy_ratio(stats: dict[str, dict], method: str) -> str:
    if method not in stats:
        return "-"
    return f"{stats[method]['final_entropy']['mean'] / stats['grpo']['final_entropy']['mean']:.2f}"


def _accuracy_gain(stats: dict[str, dict], method: str, k: int) -> str:
    if method not in stats:
        return "-"
    key = f"final_mean_at_{k}"
    return f"{stats[method][key]['mean'] - stats['grpo'][key]['mean']:+.3f}"


def _regime(run: RunDirectory) -> tuple[ForkRegime, TrainConfig]:
    """The fork regime and the training budget a run directory ran with (a ``cure`` run on
    CUDA: as :func:`for_device` made them)."""
    config = run.config.get("config", {})
    if not config.get("fork"):
        raise ValueError(f"{run.path}: not a run on the fork task (its config has no 'fork')")
    if run.config.get("experiment") == "cure":
        device_type = str(run.config.get("device", "cpu")).split(":")[0]
        cure = for_device(config_from_dict(CureConfig, config), device_type)
        return cure.fork, cure.train
    return ForkRegime(**config["fork"]), config_from_dict(TrainConfig, config["train"])


def map_rows(run: RunDirectory, k: int = 8) -> list[list]:
    """The map's rows of one run directory (see the module docstring)."""
    regime, train = _regime(run)
    density = regime.task().fork_density
    groups = _grouped(run)
    if len(groups) > 1:  # the updates part: its U = num_mini_batches runs repeat the plain ones
        groups.pop(None, None)
    rows = []
    for updates, methods in sorted(groups.items(), key=lambda item: item[0] or 0):
        if "grpo" not in methods or not ({CLIP_COV, KL_COV} & set(methods)):
            continue
        with warnings.catch_warnings():  # one seed: method_stats' std is NaN, as it should be
            warnings.simplefilter("ignore", RuntimeWarning)
            stats = {m: method_stats(results, k) for m, results in methods.items()}
        grpo = methods["grpo"]
        tail = table1_measured(grpo)["tail_ratio"]
        valid = finite_mean([finite_mean(r.column("cov/valid_tokens")) for r in grpo])
        rows.append(
            [
                run.path.name,
                f"{density:.3f}",
                regime.vocab_size,
                f"{train.num_prompts} x {train.num_generations}",
                updates if updates is not None else train.num_mini_batches,
                f"{valid:.0f}",
                len(grpo),
                f"{tail:.0f}" if np.isfinite(tail) else "-",
                _entropy_ratio(stats, CLIP_COV), _entropy_ratio(stats, KL_COV),
                _accuracy_gain(stats, CLIP_COV, k), _accuracy_gain(stats, KL_COV, k),
            ]
        )  # fmt: skip
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m toy_entropy.experiments.cure_map",
        description="The cure's map from finished cure / questions-training run directories.",
    )
    parser.add_argument("run_dirs", nargs="+", help="finished run directories on the fork task")
    args = parser.parse_args(argv)
    rows = []
    for path in args.run_dirs:
        try:
            rows += map_rows(load_run_directory(path))
        except ValueError as error:
            print(f"cure_map: {error}", file=sys.stderr)
            return 2
    print(markdown_table(COLUMNS, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
