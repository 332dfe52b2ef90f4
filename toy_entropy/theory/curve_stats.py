"""Statistics of training curves: front-loading shares, signs, seed bands, buckets, agreement.

Every function takes plain arrays (numpy or anything ``np.asarray`` accepts) and returns floats
or arrays, so they apply equally to a run's ``metrics.jsonl`` columns, to in-memory histories and
to synthetic curves with known answers (``tests/test_curve_stats.py``).

Conventions: a curve is ``y[0..N-1]`` over steps ``0..N-1`` where ``y[0]`` is the value of the
initial policy (the trainer's first rollout samples the policy before any update). "The first
fraction f of the steps" ends at index ``round(f * (N - 1))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "share_of_change",
    "moving_average",
    "fraction_positive",
    "seed_band",
    "bucket_means",
    "rank_correlation",
    "agreement",
    "finite_mean",
    "confidence_interval",
    "interval_summary",
]

# Two-sided 95% quantiles t_{0.975, df} of Student's t for df = 1..30 (beyond: 1.96).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def _curve(values, name: str = "curve", min_length: int = 1) -> np.ndarray:
    y = np.asarray(values, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {y.shape}")
    if y.size < min_length:
        raise ValueError(f"{name} needs at least {min_length} points, got {y.size}")
    return y


def moving_average(values, window: int) -> np.ndarray:
    """Centred moving average with a window of ``window`` points (odd), shrunk at the ends.

    Args:
        values: ``(N,)`` curve.
        window: odd number of points >= 1; 1 returns a copy.

    Returns:
        ``(N,)``; point i is the mean of ``values[max(0, i-h) : i+h+1]`` with ``h = window // 2``.
    """
    y = _curve(values)
    if not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window={window!r} is invalid: expected an odd integer >= 1")
    half = window // 2
    cumulative = np.concatenate([[0.0], np.cumsum(y)])
    index = np.arange(y.size)
    low, high = np.maximum(index - half, 0), np.minimum(index + half + 1, y.size)
    return (cumulative[high] - cumulative[low]) / (high - low)


def share_of_change(values, fraction: float, window: int = 1) -> float:
    """Share of the total change of a curve reached after the first ``fraction`` of its steps.

    ``(y_k - y_0) / (y_end - y_0)`` with ``k = round(fraction * (N - 1))``: for an entropy curve
    the share of the total drop, for a reward curve the share of the total gain (the paper: 73%
    of the entropy drop and 76% of the reward gain in the first 1/12 of the steps). ``y_0`` is
    the first point as it is; with ``window > 1`` the point at k and the end point are means of
    ``window`` points (centred at k; the last ``window`` points) to damp sampling noise.

    Args:
        values: ``(N,)`` curve, N >= 2.
        fraction: in (0, 1].
        window: points averaged at k and at the end (>= 1, odd).

    Returns:
        The share (1 = all of the change happened by then; it can exceed 1 or be negative for
        non-monotone curves); NaN when the curve ends where it started.
    """
    y = _curve(values, min_length=2)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r} is invalid: expected a value in (0, 1]")
    if not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window={window!r} is invalid: expected an odd integer >= 1")
    k = int(round(fraction * (y.size - 1)))
    half = window // 2
    at_k = y[max(1, k - half) : k + half + 1].mean() if k > 0 else y[0]
    end = y[-window:].mean()
    total = end - y[0]
    if total == 0:
        return float("nan")
    return float((at_k - y[0]) / total)


def fraction_positive(values) -> float:
    """Share of the finite values that are > 0 (NaN when none is finite)."""
    y = _curve(values)
    finite = y[np.isfinite(y)]
    return float(np.mean(finite > 0)) if finite.size else float("nan")


def finite_mean(values, weights=None) -> float:
    """Mean of the finite values (weighted where ``weights`` is given); NaN when none."""
    y = _curve(values)
    keep = np.isfinite(y)
    if weights is None:
        return float(y[keep].mean()) if keep.any() else float("nan")
    w = _curve(weights, "weights")
    if w.shape != y.shape:
        raise ValueError(f"weights shape {w.shape} differs from values shape {y.shape}")
    keep &= np.isfinite(w) & (w > 0)
    return float(np.average(y[keep], weights=w[keep])) if keep.any() else float("nan")


def confidence_interval(values) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval of the finite values.

    ``half = t_{0.975, n-1} * std / sqrt(n)`` (sample std); NaN half-width with fewer than two
    values, NaN mean with none.
    """
    y = np.asarray(values, dtype=np.float64).reshape(-1)
    y = y[np.isfinite(y)]
    if y.size == 0:
        return float("nan"), float("nan")
    if y.size == 1:
        return float(y[0]), float("nan")
    df = y.size - 1
    t = _T975[df - 1] if df <= len(_T975) else 1.96
    return float(y.mean()), float(t * y.std(ddof=1) / math.sqrt(y.size))


def interval_summary(values) -> dict:
    """``{"mean", "ci95", "seeds"}`` of per-seed ``values``: the mean and 95% half-width of
    :func:`confidence_interval` (finite values only) and the values as floats."""
    mean, half = confidence_interval(values)
    return {"mean": mean, "ci95": half, "seeds": [float(v) for v in values]}


def seed_band(curves: Sequence[Sequence[float]] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation over seeds, step by step.

    Args:
        curves: ``(S, N)``, one row per seed (NaN entries are ignored).

    Returns:
        ``(mean, std)``, each ``(N,)``; std is 0 with a single seed.
    """
    y = np.asarray(curves, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] < 1:
        raise ValueError(f"curves must be (seeds, steps), got shape {y.shape}")
    counts = np.isfinite(y).sum(axis=0)
    total = np.where(np.isfinite(y), y, 0.0).sum(axis=0)
    mean = np.divide(total, counts, out=np.full(y.shape[1], np.nan), where=counts > 0)
    squares = np.where(np.isfinite(y), (y - mean) ** 2, 0.0).sum(axis=0)
    variance = np.divide(squares, counts - 1, out=np.zeros(y.shape[1]), where=counts > 1)
    return mean, np.sqrt(variance)


def bucket_means(
    values, keys, edges: Sequence[float], weights=None
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean of ``values`` in buckets of ``keys``.

    Bucket j holds ``edges[j] < key <= edges[j+1]`` (the first bucket also holds
    ``key == edges[0]``).

    Args:
        values, keys: ``(M,)``.
        edges: ``(J+1,)`` increasing bucket edges.
        weights: ``(M,)`` non-negative weights (default 1).

    Returns:
        ``(means, totals)``, each ``(J,)``: the weighted mean (NaN for an empty bucket) and the
        total weight in each bucket.
    """
    v, k = _curve(values, "values"), _curve(keys, "keys")
    w = np.ones_like(v) if weights is None else _curve(weights, "weights")
    e = np.asarray(edges, dtype=np.float64)
    if not (v.shape == k.shape == w.shape):
        raise ValueError(f"values {v.shape}, keys {k.shape} and weights {w.shape} must match")
    if e.ndim != 1 or e.size < 2 or np.any(np.diff(e) <= 0):
        raise ValueError(f"edges={list(e)} is invalid: expected >= 2 increasing values")
    index = np.searchsorted(e, k, side="left") - 1  # edges[j] < k <= edges[j+1] -> j
    index[k == e[0]] = 0
    inside = (index >= 0) & (index < e.size - 1)
    totals = np.bincount(index[inside], weights=w[inside], minlength=e.size - 1)
    sums = np.bincount(index[inside], weights=(w * v)[inside], minlength=e.size - 1)
    means = np.divide(sums, totals, out=np.full(e.size - 1, np.nan), where=totals > 0)
    return means, totals


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties given their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size)
    ranks[order] = np.arange(x.size)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def rank_correlation(x, y) -> float:
    """Spearman rank correlation of two ``(N,)`` sequences (NaN if either is constant)."""
    a, b = _curve(x, "x", 2), _curve(y, "y", 2)
    if a.shape != b.shape:
        raise ValueError(f"x ({a.size} points) and y ({b.size} points) differ in length")
    ra, rb = _ranks(a), _ranks(b)
    if np.all(ra == ra[0]) or np.all(rb == rb[0]):
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def agreement(predicted, actual) -> dict[str, float]:
    """How well a predictor of a signed quantity tracks it, point by point.

    Args:
        predicted, actual: ``(N,)``, e.g. a predicted and the actual entropy change per step.

    Returns:
        ``correlation`` (Pearson), ``sign_agreement`` (share of points with equal signs),
        ``slope`` (least squares of actual on predicted through the origin: the scale that
        maps the predictor onto the actual values) and ``num_points``.
    """
    p, a = _curve(predicted, "predicted"), _curve(actual, "actual")
    if p.shape != a.shape:
        raise ValueError(f"predicted ({p.size} points) and actual ({a.size}) differ in length")
    keep = np.isfinite(p) & np.isfinite(a)
    p, a = p[keep], a[keep]
    correlation = float("nan")
    if p.size > 2 and p.std() > 0 and a.std() > 0:
        correlation = float(np.corrcoef(p, a)[0, 1])
    denominator = float(np.dot(p, p))
    return {
        "correlation": correlation,
        "sign_agreement": float(np.mean(np.sign(p) == np.sign(a))) if p.size else math.nan,
        "slope": float(np.dot(p, a) / denominator) if denominator > 0 else math.nan,
        "num_points": int(p.size),
    }
