"""The paper's Table 1 row next to ours: the tail of the token covariance at step 1.

Every training experiment that logs the covariance diagnostics (``cov/...``, from
:func:`toy_entropy.algorithms.losses.diagnostics.covariance_metrics`) can print this row: the mean
covariance of the top 0.02% / 0.2% / 2% / 20% of the tokens, the mean over all tokens, the tail
ratio (top-0.02% mean / mean) and the share of the positive covariance the top tokens hold, at
the first RL step (the mean over that step's optimisation batches), averaged over runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from toy_entropy.algorithms.losses.diagnostics import COV_TOP_FRACTIONS, PAPER_TABLE1
from toy_entropy.experiments.registry import RunContext
from toy_entropy.experiments.sweeps import RunResult
from toy_entropy.runs.report import markdown_table
from toy_entropy.theory.curve_stats import finite_mean

__all__ = ["table1_measured", "table1_table", "report_table1"]


def _label(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def table1_measured(
    results: Sequence[RunResult | Sequence[dict]], step: int = 1
) -> dict[str, float]:
    """Step-``step`` covariance tail statistics, mean over ``results`` (NaN where not logged).

    ``results`` are sweep results or, for single runs, lists of per-step metric rows (each
    with ``step``).

    Returns keys ``top_<q>%_mean``, ``top_<q>%_share`` for the Table 1 fractions, ``mean``,
    ``tail_ratio`` (of the averaged means, so a batch with a near-zero mean does not dominate)
    and ``valid_tokens`` (per optimisation batch).
    """
    runs = [r.rows if isinstance(r, RunResult) else r for r in results]
    rows = [next((row for row in run if row.get("step") == step), {}) for run in runs]

    def mean_of(key: str) -> float:
        return finite_mean([row.get(key, np.nan) for row in rows]) if rows else float("nan")

    measured = {"mean": mean_of("cov/mean"), "valid_tokens": mean_of("cov/valid_tokens")}
    for q in COV_TOP_FRACTIONS:
        measured[f"top_{_label(q)}_mean"] = mean_of(f"cov/top_{_label(q)}_mean")
        measured[f"top_{_label(q)}_share"] = mean_of(f"cov/top_{_label(q)}_share")
    measured["tail_ratio"] = (
        measured[f"top_{_label(min(COV_TOP_FRACTIONS))}_mean"] / (measured["mean"])
    )
    return measured


def table1_table(measured: dict[str, float], label: str) -> dict:
    """A table (title, columns, rows) with the paper's row and ``measured`` (``label``)."""
    means = [f"top {_label(q)}" for q in COV_TOP_FRACTIONS]
    shares = [f"share top {_label(q)}" for q in COV_TOP_FRACTIONS[:3]]
    columns = ["", *means, "all tokens", "tail ratio", *shares]
    paper = ["paper, Qwen2.5-7B step 1", f"{PAPER_TABLE1['top_0.02%_mean']:.3f}", "-", "-", "-"]
    paper += [f"{PAPER_TABLE1['mean']:.3f}", f"{PAPER_TABLE1['tail_ratio']:.0f}", "-", "-", "-"]
    ours = [label] + [f"{measured[f'top_{_label(q)}_mean']:.3f}" for q in COV_TOP_FRACTIONS]
    ours += [f"{measured['mean']:.4f}", f"{measured['tail_ratio']:.0f}"]
    ours += [f"{measured[f'top_{_label(q)}_share']:.3f}" for q in COV_TOP_FRACTIONS[:3]]
    return {"title": "Table 1: token covariance at step 1", "columns": columns,
            "rows": [paper, ours]}  # fmt: skip


def report_table1(
    context: RunContext, results: Sequence[RunResult | Sequence[dict]], label: str
) -> dict[str, dict]:
    """Print the Table 1 rows (the paper's and ``label``'s), log them as TensorBoard text and
    return ``{"paper": ..., "measured": ...}`` for the summary."""
    measured = table1_measured(results)
    table = table1_table(measured, label)
    text = markdown_table(table["columns"], table["rows"])
    print(f"\n{table['title']}\n{text}")
    context.writer().add_text("table1", text)
    return {"paper": PAPER_TABLE1, "measured": measured, "table": table}
