"""The entropy-reward law ``R = -a * exp(H) + b``: least-squares fit and extrapolation.

The law is linear in ``(a, b)`` given ``x = exp(H)``, so ordinary least squares of R on exp(H)
fits it exactly (docs/THEORY.md section 2). ``b - a`` is the predicted reward at ``H = 0``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["LawFit", "fit_entropy_reward_law", "ExtrapolationResult", "extrapolate_law"]


@dataclass(frozen=True)
class LawFit:
    """Fitted ``R = -a * exp(H) + b``.

    Attributes:
        a, b: coefficients (reward units; H in nats).
        r2: coefficient of determination on the fitted points.
        ceiling: ``b - a``, the predicted reward when entropy reaches 0.
        num_points: number of points fitted.
    """

    a: float
    b: float
    r2: float
    ceiling: float
    num_points: int

    def predict(self, entropy: np.ndarray) -> np.ndarray:
        return -self.a * np.exp(np.asarray(entropy, dtype=np.float64)) + self.b

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _as_curves(entropy, reward) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(entropy, dtype=np.float64).ravel()
    r = np.asarray(reward, dtype=np.float64).ravel()
    if h.shape != r.shape:
        raise ValueError(f"entropy ({h.size} points) and reward ({r.size} points) differ in length")
    if h.size < 2:
        raise ValueError(f"the law needs at least 2 points, got {h.size}")
    if not (np.all(np.isfinite(h)) and np.all(np.isfinite(r))):
        raise ValueError("entropy and reward must be finite to fit the law")
    return h, r


def fit_entropy_reward_law(entropy, reward) -> LawFit:
    """Least-squares fit of ``R = -a exp(H) + b``.

    Args:
        entropy: ``(N,)`` entropies in nats.
        reward: ``(N,)`` rewards.
    """
    h, r = _as_curves(entropy, reward)
    x = np.exp(h)
    design = np.stack([-x, np.ones_like(x)], axis=1)  # (N, 2)
    (a, b), *_ = np.linalg.lstsq(design, r, rcond=None)
    residual = r - design @ np.array([a, b])
    total = np.sum((r - r.mean()) ** 2)
    r2 = 1.0 - np.sum(residual**2) / total if total > 0 else float("nan")
    return LawFit(float(a), float(b), float(r2), float(b - a), int(h.size))


@dataclass(frozen=True)
class ExtrapolationResult:
    """A fit on the first part of a run, scored on the rest.

    Attributes:
        fit: the law fitted on the first ``fit_fraction`` of the points.
        rmse: root-mean-square error of the prediction on the remaining points.
        final_error: predicted minus actual reward at the last point.
        fit_fraction: share of the points used for the fit.
    """

    fit: LawFit
    rmse: float
    final_error: float
    fit_fraction: float

    def to_dict(self) -> dict[str, float]:
        return {
            **{f"fit_{k}": v for k, v in self.fit.to_dict().items()},
            "rmse": self.rmse,
            "final_error": self.final_error,
            "fit_fraction": self.fit_fraction,
        }


def extrapolate_law(entropy, reward, fit_fraction: float = 0.15) -> ExtrapolationResult:
    """Fit the law on the first ``fit_fraction`` of the points and predict the rest."""
    if not 0 < fit_fraction < 1:
        raise ValueError(f"fit_fraction={fit_fraction!r} is invalid: expected in (0, 1)")
    h, r = _as_curves(entropy, reward)
    num_fit = max(2, int(np.ceil(fit_fraction * h.size)))
    if num_fit >= h.size:
        raise ValueError(f"{h.size} points leave nothing to predict after fitting on {num_fit}")
    fit = fit_entropy_reward_law(h[:num_fit], r[:num_fit])
    predicted = fit.predict(h[num_fit:])
    error = predicted - r[num_fit:]
    return ExtrapolationResult(
        fit, float(np.sqrt(np.mean(error**2))), float(error[-1]), fit_fraction
    )
