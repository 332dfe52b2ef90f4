"""TensorBoard's custom-scalars layout: the teaching view of a run, and seed bands per variant.

``tensorboard --logdir DIR`` then shows, in the CUSTOM SCALARS tab, one category per idea of the
theory (docs/reading_the_plots.md explains each chart):

1. the trade: entropy and reward side by side, held-out accuracy;
2. the covariance that drives it: the mean token covariance, its share of positive tokens, its
   heavy tail, and the tokens Clip-Cov / KL-Cov touch;
3. the identity: the actual entropy change of each step against -Cov(log pi, dz);
4. seed bands: one mean +/- std band per variant (method, task, target) overlaid in one chart.

Multiline charts take regular expressions of tags and draw every run that has them. A margin
chart draws a value tag with a lower and an upper tag; every variant's aggregate run
(``<variant>/seeds-mean``) logs the same three tags, so one chart overlays all variants.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

__all__ = ["band_tags", "teaching_layout", "add_layout"]


def band_tags(key: str) -> tuple[str, str, str]:
    """The TensorBoard tags ``(value, lower, upper)`` of the seed band of metric ``key``.

    The value is the metric's own tag (``charts/entropy`` for ``entropy``), so the aggregate run
    lines up with the seed runs in every other chart.
    """
    value = key if "/" in key else f"charts/{key}"
    flat = key.replace("/", "_")
    return value, f"band/{flat}_low", f"band/{flat}_high"


def teaching_layout(band_keys: Sequence[str] = (), logged: Collection[str] | None = None) -> dict:
    """The layout as ``SummaryWriter.add_custom_scalars`` takes it.

    Args:
        band_keys: metrics logged as seed bands (see :func:`band_tags`); one margin chart each.
        logged: the TensorBoard tags the run logged; if given, only the charts that draw one
            of them are kept (and categories left without charts are dropped), so that no
            chart opens empty.
    """
    layout = {
        "1 entropy is traded for reward": {
            "entropy H(pi, D) [nats]": ["Multiline", [r"charts/entropy$"]],
            "reward (training rollouts)": ["Multiline", [r"charts/reward$"]],
            "held-out accuracy": ["Multiline", [r"eval/greedy_accuracy", r"eval/mean_at_\d+"]],
            "held-out pass@k": ["Multiline", [r"eval/pass_at_\d+"]],
        },
        "2 the covariance drives it": {
            "token covariance, batch mean": ["Multiline", [r"cov/mean$"]],
            "share of tokens with positive covariance": ["Multiline", [r"cov/pos_frac"]],
            "heavy tail: mean of the top tokens": ["Multiline", [r"cov/top_.*"]],
            "covariance by prompt difficulty": ["Multiline", [r"cov_by_accuracy/.*"]],
            "tokens touched by Clip-Cov / KL-Cov": ["Multiline", [r"select/frac"]],
            "clip-higher: covariance of admitted tokens": [
                "Multiline",
                [r"cov/clip_higher_admitted_mean"],
            ],
        },
        "3 the identity dH = -Cov(log pi, dz)": {
            "actual and predicted dH per step [nats]": [
                "Multiline",
                [r"identity/actual_dH", r"identity/predicted_dH"],
            ],
            "other predictors (sequence / token covariance)": ["Multiline", [r"granularity/.*"]],
        },
    }
    if band_keys:
        layout["4 mean +/- std over seeds, per variant"] = {
            key: ["Margin", list(band_tags(key))] for key in band_keys
        }
    if logged is None:
        return layout
    kept = {
        category: {
            title: chart
            for title, chart in charts.items()
            if any(re.search(pattern, tag) for pattern in chart[1] for tag in logged)
        }
        for category, charts in layout.items()
    }
    return {category: charts for category, charts in kept.items() if charts}


def add_layout(
    summary_writer,
    band_keys: Sequence[str] = (),
    layout: dict | None = None,
    logged: Collection[str] | None = None,
) -> None:
    """Write ``layout`` (default: :func:`teaching_layout` of ``band_keys`` and ``logged``) into
    a ``torch.utils.tensorboard.SummaryWriter``'s run; nothing when the writer is ``None``."""
    if summary_writer is not None:
        if layout is None:
            layout = teaching_layout(band_keys, logged)
        summary_writer.add_custom_scalars(layout)
