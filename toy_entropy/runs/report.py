"""Markdown reports with PNG figures from run directories (``toy-entropy report RUN_DIR...``).

A run directory (shared/OUTPUTS.md) holds ``summary.json`` (headline numbers and claims),
``config.json`` and, for each training run, a sub-directory with ``metrics.jsonl``. Sub-runs
named ``<variant>/seed<S>`` are grouped by variant and drawn as mean +/- std bands over seeds;
``<variant>/seeds-mean`` runs (the TensorBoard band view) are skipped. The report shows, for
every run directory:

- the claims table (measured, expected, holds) and the tables the experiment put in its
  headline (``headline["tables"]``: ``{"title", "columns", "rows"}`` each, e.g. the methods table);
- entropy, reward and held-out accuracy curves, with seed bands where a variant has several
  seeds; against the RL step, or against the swept setting for runs that sweep one
  (:data:`SWEEP_AXES`, e.g. bandit-identity's step size);
- reward against entropy with the fitted law ``R = -a exp(H) + b``, for training runs only
  (a sweep over a setting is not a trajectory), drawn over the entropies the runs visited;
- the identity scatter: the actual entropy change per step against each predictor logged
  (``identity/predicted_dH``: the exact per-state covariance; ``granularity/*``: the coarser
  covariances the paper and the algorithms use).

Legends sit outside the axes. The figure functions take :class:`SubRun` lists, so experiments
draw the same figures into TensorBoard from the runs they hold in memory.
"""

from __future__ import annotations

import errno
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toy_entropy.runs.plots import band_plot, plt
from toy_entropy.runs.runlog import atomic_write_text
from toy_entropy.theory.curve_stats import seed_band
from toy_entropy.theory.lawfit import fit_entropy_reward_law

__all__ = [
    "SubRun",
    "RunDirectory",
    "load_run_directory",
    "figure_curves",
    "figure_law",
    "figure_identity",
    "split_by_length",
    "markdown_table",
    "claims_markdown",
    "write_report",
]

_SEED_RUN = re.compile(r"^(?P<variant>.+)/seed(?P<seed>\d+)$")
EVAL_KEYS = ("eval/greedy_accuracy", "eval/mean_at_8", "eval/pass_at_8")
IDENTITY_ACTUAL = "identity/actual_dH"
SWEEP_AXES = {"identity/log10_eta": "step size eta (log10)"}
"""A run that logs one of these metrics sweeps a setting instead of training: its "step" is the
index of the setting, and the metric is its x-axis (label)."""
AXIS_LABELS = {
    "entropy": "entropy H [nats]",
    "reward": "reward [0-1]",
    "eval/greedy_accuracy": "held-out greedy accuracy [0-1]",
    "cov/mean": "token covariance, batch mean",
    "select/frac": "fraction of tokens selected",
}
PREDICTOR_LABELS = {
    "identity/predicted_dH": "(i) exact per-state -Cov(log pi, dz)",
    "granularity/neg_sequence_cov": "(ii) per-prompt sequence -Cov(mean log pi, A)",
    "granularity/neg_token_cov": "(iii) batch token -Cov(log pi, A)",
}


@dataclass
class SubRun:
    """One training run's logged rows.

    Attributes:
        name: its path relative to the run directory (``grpo/seed0``; ``.`` for the top level).
        rows: the metrics.jsonl objects, in order.
    """

    name: str
    rows: list[dict[str, Any]]

    @property
    def variant(self) -> str:
        match = _SEED_RUN.match(self.name)
        return match["variant"] if match else self.name

    @property
    def seed(self) -> int | None:
        match = _SEED_RUN.match(self.name)
        return int(match["seed"]) if match else None

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Steps and finite values of ``key`` over the rows that logged it."""
        points = [
            (row["step"], float(row[key]))
            for row in self.rows
            if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])
        ]
        if not points:
            return np.zeros(0), np.zeros(0)
        steps, values = zip(*points)
        return np.array(steps), np.array(values)

    def has(self, key: str) -> bool:
        return any(isinstance(row.get(key), (int, float)) for row in self.rows)

    @property
    def sweep_axis(self) -> str | None:
        """The :data:`SWEEP_AXES` metric this run sweeps, or None for a training run."""
        return next((key for key in SWEEP_AXES if self.has(key)), None)

    def x_axis(self, steps: np.ndarray) -> tuple[np.ndarray, str]:
        """The x values of ``steps`` and the axis label: the RL step, or the swept setting."""
        key = self.sweep_axis
        if key is None:
            return steps, "RL step"
        setting = dict(zip(*self.series(key)))
        return np.array([setting.get(step, np.nan) for step in steps.tolist()]), SWEEP_AXES[key]


def axis_label(key: str) -> str:
    """The y-axis label of metric ``key``, with its unit where it has one."""
    if key in AXIS_LABELS:
        return AXIS_LABELS[key]
    match = re.fullmatch(r"eval/(mean|pass)_at_(\d+)", key)
    if match:
        return f"held-out {match[1]}@{match[2]} [0-1]"
    return key


def seed_counts(sub_runs: Sequence[SubRun]) -> list[int]:
    """Seeds per variant (1 for a run that is not a ``<variant>/seed<S>`` run)."""
    counts: dict[str, int] = {}
    for run in sub_runs:
        counts[run.variant] = counts.get(run.variant, 0) + 1
    return list(counts.values())


@dataclass
class RunDirectory:
    """A run directory as the report reads it."""

    path: Path
    summary: dict[str, Any]
    config: dict[str, Any]
    sub_runs: list[SubRun] = field(default_factory=list)

    @property
    def experiment(self) -> str:
        return str(self.summary.get("experiment", self.path.name))


def _read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number} is not valid JSON: {error.msg}") from None
    return rows


def _read_json_object(path: Path) -> dict:
    """A JSON file that must hold an object; ValueError naming the file otherwise."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is unreadable: {error}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error.msg}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a {type(value).__name__}, not a toy-entropy record")
    return value


def load_run_directory(path: str | Path) -> RunDirectory:
    """Read ``summary.json``, ``config.json`` and every ``metrics.jsonl`` below ``path``.

    Raises:
        ValueError: ``path`` is not a directory or has no readable summary.json.
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory")
    summary_path = path / "summary.json"
    if not summary_path.is_file():
        raise ValueError(f"{path} has no summary.json (not a finished toy-entropy run directory)")
    summary = _read_json_object(summary_path)
    config_path = path / "config.json"
    config = _read_json_object(config_path) if config_path.is_file() else {}
    sub_runs = []
    for metrics in sorted(path.rglob("metrics.jsonl")):
        name = metrics.parent.relative_to(path).as_posix()
        if name.endswith("/seeds-mean") or name == "seeds-mean":
            continue
        sub_runs.append(SubRun(name, _read_rows(metrics)))
    return RunDirectory(path, summary, config, sub_runs)


# ---- figures -------------------------------------------------------------------------------


def _by_variant(sub_runs: Sequence[SubRun], key: str) -> dict[str, list[SubRun]]:
    groups: dict[str, list[SubRun]] = {}
    for run in sub_runs:
        if run.has(key):
            groups.setdefault(run.variant, []).append(run)
    return groups


def _band(runs: Sequence[SubRun], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, mean and std over runs of ``key``, on the steps every run logged."""
    series = [run.series(key) for run in runs]
    common = sorted(set.intersection(*(set(steps.tolist()) for steps, _ in series)))
    values = np.stack(
        [np.array([dict(zip(s.tolist(), v))[step] for step in common]) for s, v in series]
    )  # (runs, steps)
    mean, std = seed_band(values)
    return np.array(common), mean, std


def _colors(sub_runs: Sequence[SubRun]) -> dict[str, Any]:
    """One colour per variant, stable across the panels and figures of a run directory."""
    variants = list(dict.fromkeys(run.variant for run in sub_runs))
    palette = plt.get_cmap("tab10" if len(variants) <= 10 else "tab20")
    return {variant: palette(i % palette.N) for i, variant in enumerate(variants)}


def figure_curves(sub_runs: Sequence[SubRun], keys: Sequence[str], title: str = ""):
    """One panel per metric in ``keys``, side by side; one curve per variant, with a mean +/-
    std band where it has several seeds. The legend sits below the panels. None if no run
    logs any of ``keys``."""
    keys = [key for key in keys if any(run.has(key) for run in sub_runs)]
    if not keys:
        return None
    colors = _colors(sub_runs)
    figure, axes = plt.subplots(
        1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False, layout="constrained"
    )
    drawn: dict[str, Any] = {}  # variant -> colour, in the order of the palette
    for axis, key in zip(axes.ravel(), keys):
        for variant, runs in _by_variant(sub_runs, key).items():
            steps, mean, std = _band(runs, key)
            x, x_label = runs[0].x_axis(steps)
            spread = std if len(runs) > 1 else None
            band_plot(axis, x, mean, spread, label=variant, color=colors[variant])
            drawn[variant] = colors[variant]
        axis.set_xlabel(x_label)
        axis.set_ylabel(axis_label(key))
    if len(drawn) > 1:
        figure.legend(
            [plt.Line2D([], [], color=color) for color in drawn.values()],
            list(drawn),
            fontsize=7,
            loc="outside lower center",
            ncol=min(len(drawn), 3 * len(keys)),
        )
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def split_by_length(sub_runs: Sequence[SubRun]) -> list[list[SubRun]]:
    """Sub-runs grouped by their last logged step, so curves of one length share axes."""
    groups: dict[int, list[SubRun]] = {}
    for run in sub_runs:
        last = max((row.get("step", 0) for row in run.rows), default=0)
        groups.setdefault(last, []).append(run)
    return [groups[last] for last in sorted(groups)]


def figure_law(sub_runs: Sequence[SubRun], title: str = ""):
    """Reward against entropy per variant with ``R = -a exp(H) + b`` fitted on all its points
    (solid) and on the first 15% of each run's steps (dotted), drawn over the entropies the
    variant visited (the ceiling ``b - a`` at H = 0 is in the legend, not drawn). Training runs
    only: a run sweeping a setting (:data:`SWEEP_AXES`) is not a trajectory. None without
    entropy and reward."""
    groups = _by_variant(sub_runs, "reward")
    groups = {
        v: [r for r in runs if r.has("entropy") and r.sweep_axis is None]
        for v, runs in groups.items()
    }
    groups = {v: runs for v, runs in groups.items() if runs}
    if not groups:
        return None
    colors = _colors(sub_runs)
    figure, axis = plt.subplots(figsize=(5.5, 4.2), layout="constrained")
    drawn = 0
    for variant, runs in groups.items():
        entropy, reward, early_h, early_r = [], [], [], []
        for run in runs:
            h_steps, h = run.series("entropy")
            r_map = dict(zip(*run.series("reward")))
            pairs = [(x, r_map[s]) for s, x in zip(h_steps.tolist(), h) if s in r_map]
            if len(pairs) < 4:
                continue
            hs, rs = map(np.array, zip(*pairs))
            entropy.append(hs)
            reward.append(rs)
            cut = max(2, int(np.ceil(0.15 * hs.size)))
            early_h.append(hs[:cut])
            early_r.append(rs[:cut])
        if not entropy:
            continue
        h, r = np.concatenate(entropy), np.concatenate(reward)
        color = colors[variant]
        axis.scatter(h, r, s=5, alpha=0.35, color=color)
        grid = np.linspace(h.min(), h.max(), 100)
        fit = fit_entropy_reward_law(h, r)
        name = f"{variant}: " if len(groups) > 1 else ""
        label = f"{name}a={fit.a:.2f}, b={fit.b:.2f}, R2={fit.r2:.2f}, b-a={fit.ceiling:.2f}"
        axis.plot(grid, fit.predict(grid), color=color, label=label)
        early = fit_entropy_reward_law(np.concatenate(early_h), np.concatenate(early_r))
        axis.plot(grid, early.predict(grid), color=color, linestyle=":")
        drawn += 1
    if not drawn:
        plt.close(figure)
        return None
    axis.set_xlabel("entropy H [nats]")
    axis.set_ylabel("reward [0-1]")
    figure.legend(fontsize=7, loc="outside lower center", ncol=1 if drawn < 4 else 2)
    subtitle = "solid: fit on all steps, dotted: fit on the first 15%"
    axis.set_title(f"{title}\n{subtitle}" if title else f"R = -a exp(H) + b ({subtitle})",
                   fontsize=9)  # fmt: skip
    return figure


def figure_identity(sub_runs: Sequence[SubRun], title: str = ""):
    """Actual entropy change per step against each predictor logged. None without them.

    The exact predictor is in nats; the coarse ones (``granularity/*``) carry no step size, so
    each variant's points are drawn at ``slope * predictor`` with the least-squares slope of
    actual on predictor: on the y = x line when they track the change up to scale.
    """
    predictors = [
        key
        for key in PREDICTOR_LABELS
        if any(r.has(key) and r.has(IDENTITY_ACTUAL) for r in sub_runs)
    ]
    if not predictors:
        return None
    colors = _colors(sub_runs)
    figure, axes = plt.subplots(
        1, len(predictors), figsize=(4.3 * len(predictors), 4), squeeze=False, layout="constrained"
    )
    for axis, key in zip(axes[0], predictors):
        for variant, runs in _by_variant(sub_runs, key).items():
            predicted, actual = [], []
            for run in runs:
                actual_map = dict(zip(*run.series(IDENTITY_ACTUAL)))
                for step, value in zip(*run.series(key)):
                    if step in actual_map:
                        predicted.append(value)
                        actual.append(actual_map[step])
            if not predicted:
                continue
            predicted, actual = np.array(predicted), np.array(actual)
            if key != "identity/predicted_dH":
                predicted = (
                    predicted * np.dot(predicted, actual) / max(np.dot(predicted, predicted), 1e-30)
                )
            axis.scatter(predicted, actual, s=8, alpha=0.6, label=variant, color=colors[variant])
        axis.xaxis.set_major_locator(plt.MaxNLocator(4))
        low, high = axis.get_xlim()
        axis.plot([low, high], [low, high], color="grey", linewidth=0.8, linestyle="--")
        axis.set_title(PREDICTOR_LABELS[key], fontsize=8)
        axis.set_ylabel("actual dH  [nats]")
        if key == "identity/predicted_dH":
            axis.set_xlabel("predicted dH = -Cov(log pi, dz)  [nats]")
        else:
            axis.set_xlabel("predictor x fitted scale  [nats]")
    variants = len(_by_variant(sub_runs, predictors[0]))
    if variants > 1:
        handles, labels = axes[0][0].get_legend_handles_labels()
        figure.legend(
            handles, labels, fontsize=7, loc="outside lower center", ncol=min(variants, 5)
        )
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


# ---- markdown ------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4g}"
    if value is None:
        return "-"
    return str(value).replace("|", "\\|")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _measured(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_measured(v)}" for k, v in value.items())
    return _cell(value)


def claims_markdown(claims: Sequence[dict]) -> str:
    rows = [
        (
            "yes" if c.get("holds") else "**no**",
            f"`{c.get('id')}`",
            _measured(c.get("measured")),
            c.get("expected"),
            c.get("statement"),
        )
        for c in claims
    ]
    return markdown_table(("holds", "claim", "measured", "expected", "statement"), rows)


def _command(run: RunDirectory) -> str:
    preset = " --quick" if run.config.get("preset") == "quick" else ""
    seed = run.config.get("seed", run.summary.get("seed", 0))
    return f"toy-entropy run {run.experiment}{preset} --seed {seed} --out {run.path}"


def _save(figure, directory: Path, name: str) -> Path:
    path = directory / f"{name}.png"
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def write_report(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Write a markdown report of ``run_dirs`` to ``out`` (default ``RUN_DIR/report.md``).

    Figures go to ``<out stem>_figures/`` next to the report, linked relatively.

    Raises:
        ValueError: no run directory, or one that is not a finished run directory.
    """
    if not run_dirs:
        raise ValueError("report: give at least one run directory")
    runs = [load_run_directory(path) for path in run_dirs]
    out = Path(out) if out is not None else runs[0].path / "report.md"
    if out.suffix != ".md":
        raise ValueError(f"--out={out} is invalid: expected a .md file")
    if out.is_dir():
        raise ValueError(f"--out={out} is a directory; give a .md file name")
    figures = out.parent / f"{out.stem}_figures"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        figures.mkdir(exist_ok=True)
        for stale in figures.glob("[0-9][0-9]_*.png"):  # figures of an earlier report
            stale.unlink()
        lines = ["# toy-entropy report", ""]
        for index, run in enumerate(runs):
            lines += _run_section(run, index, figures, out.parent)
        atomic_write_text(out, "\n".join(lines) + "\n")
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise
        raise ValueError(
            f"--out={out}: cannot write the report: {error.strerror or error}"
        ) from None
    return out


LAW_CAPTION = (
    "Reward against entropy with the law R = -a exp(H) + b fitted on all steps (solid) and on "
    "the first 15% (dotted)"
)
IDENTITY_CAPTION = "Actual entropy change against its predictors"


def curves_caption(sub_runs: Sequence[SubRun], keys: Sequence[str]) -> str:
    """What :func:`figure_curves` of ``sub_runs`` shows: the metrics logged, against what, and
    "mean +/- std over N seeds" only when some variant has several seeds."""
    names = {"entropy": "entropy", "reward": "reward"}
    shown = [names.get(k, "held-out accuracy") for k in keys if any(r.has(k) for r in sub_runs)]
    shown = list(dict.fromkeys(shown))
    if not shown:
        return ""
    what = ", ".join(shown[:-1]) + (" and " if len(shown) > 1 else "") + shown[-1]
    sweeps = {SWEEP_AXES[r.sweep_axis] for r in sub_runs if r.sweep_axis is not None}
    against = " against the " + ", ".join(sorted(sweeps)) if sweeps else " per RL step"
    seeds = max(seed_counts(sub_runs), default=1)
    spread = f" (mean +/- std over {seeds} seeds)" if seeds > 1 else ""
    return what[0].upper() + what[1:] + against + spread


def _run_section(run: RunDirectory, index: int, figures: Path, root: Path) -> list[str]:
    claims = run.summary.get("claims", [])
    held = sum(bool(c.get("holds")) for c in claims)
    lines = [
        f"## {run.experiment}",
        "",
        f"Run directory `{run.path}`; produced by `{_command(run)}`"
        + (f" on device {run.config['device']}" if "device" in run.config else "")
        + f". {held} of {len(claims)} claims hold.",
        "",
    ]
    if claims:
        lines += ["### Claims", "", claims_markdown(claims), ""]
    for table in run.summary.get("headline", {}).get("tables", []):
        lines += [f"### {table['title']}", "", markdown_table(table["columns"], table["rows"]), ""]
    # The top-level run is named after the experiment in legends, not ".".
    sub_runs = [SubRun(run.experiment, r.rows) if r.name == "." else r for r in run.sub_runs]
    keys = ("entropy", "reward", *EVAL_KEYS[:2])
    made = [
        (f"curves{i}", figure_curves(group, keys), curves_caption(group, keys))
        for i, group in enumerate(split_by_length(sub_runs))
    ]
    made += [
        ("law", figure_law(sub_runs), LAW_CAPTION),
        ("identity", figure_identity(sub_runs), IDENTITY_CAPTION),
    ]
    for kind, figure, caption in made:
        if figure is None:
            continue
        path = _save(figure, figures, f"{index:02d}_{run.experiment}_{kind}")
        lines += [f"![{caption}]({path.relative_to(root).as_posix()})", ""]
    headline = {k: v for k, v in run.summary.get("headline", {}).items() if k != "tables"}
    if headline:
        body = json.dumps(headline, indent=1)
        lines += ["<details><summary>headline numbers</summary>", "", "```json", body, "```"]
        lines += ["", "</details>", ""]
    return lines
