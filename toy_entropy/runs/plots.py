"""Matplotlib figures shared by experiments and reports (headless Agg backend)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plt", "band_plot", "scatter_identity", "loglog_error_plot"]


def band_plot(ax, steps, mean, std=None, label: str = "", color=None, linestyle="-") -> None:
    """A mean curve with a shaded mean +/- std band."""
    steps, mean = np.asarray(steps), np.asarray(mean)
    (line,) = ax.plot(steps, mean, label=label, color=color, linestyle=linestyle)
    if std is not None:
        std = np.asarray(std)
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)


def scatter_identity(ax, predicted, actual, label: str = "") -> None:
    """Actual against predicted entropy change with the y = x line."""
    predicted, actual = np.asarray(predicted), np.asarray(actual)
    ax.scatter(predicted, actual, s=8, alpha=0.6, label=label)
    low = float(min(predicted.min(), actual.min()))
    high = float(max(predicted.max(), actual.max()))
    ax.plot([low, high], [low, high], color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("predicted dH = -Cov(log pi, dz)  [nats]")
    ax.set_ylabel("actual dH  [nats]")


def loglog_error_plot(ax, etas, errors, label: str = "") -> None:
    ax.loglog(np.asarray(etas), np.asarray(errors), marker="o", label=label)
    ax.set_xlabel("step size eta")
    ax.set_ylabel("relative error of the first-order prediction")
