"""The paper's Table 1 row next to ours: the tail of the token covariance at step 1.

Every training experiment that logs the covariance diagnostics (``cov/...``, from
:func:`toy_entropy.losses.diagnostics.covariance_metrics`) can print this row: the mean
covariance of the top 0.02% / 0.2% / 2% / 20% of the tokens, the mean over all tokens, the tail
ratio (top-0.02% mean / mean) and the share of the positive covariance the top tokens hold, at
the first RL step (the mean over that step's optimisation batches), averaged over runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from experiments.sweeps import RunResult
from toy_entropy.curve_stats import finite_mean
from toy_entropy.losses.diagnostics import COV_TOP_FRACTIONS, PAPER_TABLE1

__all__ = ["table1_measured", "table1_table"]


def _label(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def table1_measured(results: Sequence[RunResult], step: int = 1) -> dict[str, float]:
    """Step-``step`` covariance tail statistics, mean over ``results`` (NaN where not logged).

    Returns keys ``top_<q>%_mean``, ``top_<q>%_share`` for the Table 1 fractions, ``mean``,
    ``tail_ratio`` (of the averaged means, so a batch with a near-zero mean does not dominate)
    and ``valid_tokens`` (per optimisation batch).
    """
    rows = [next((row for row in r.rows if row["step"] == step), {}) for r in results]

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
