"""Tail statistics of the token covariance on hand-made batches with known answers."""

from __future__ import annotations

import pytest
import torch

from toy_entropy.algorithms.losses import PolicyLossConfig
from toy_entropy.algorithms.losses.diagnostics import PAPER_TABLE1, covariance_metrics
from toy_entropy.algorithms.losses.distributed import SingleProcess


def _metrics(cov: torch.Tensor) -> dict[str, float]:
    """covariance_metrics of a (B, T) covariance whose positions are all valid."""
    valid = torch.ones_like(cov, dtype=torch.bool)
    n_tokens = torch.tensor(float(cov.numel()))
    out = covariance_metrics(
        cov, valid, torch.zeros_like(cov), torch.ones_like(cov), PolicyLossConfig(), n_tokens,
        SingleProcess(),
    )  # fmt: skip
    return {k: float(v) for k, v in out.items()}


def _llm_like_batch() -> torch.Tensor:
    """10,000 tokens: 2 at 6.0 (the top 0.02%), 18 at 1.0, 180 at 0.1, 4900 at +1e-3 and
    4900 at -1e-3, shuffled into a (40, 250) batch."""
    values = torch.cat(
        [
            torch.full((2,), 6.0),
            torch.full((18,), 1.0),
            torch.full((180,), 0.1),
            torch.full((4900,), 1e-3),
            torch.full((4900,), -1e-3),
        ]
    ).double()
    order = torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))
    return values[order].reshape(40, 250)


def test_tail_shares_and_ratio_have_the_hand_computed_values():
    m = _metrics(_llm_like_batch())
    positive_sum = 12.0 + 18.0 + 18.0 + 4.9
    assert m["cov/mean"] == pytest.approx(48.0 / 10_000)
    assert m["cov/top_0.02%_mean"] == pytest.approx(6.0)
    assert m["cov/top_0.2%_mean"] == pytest.approx(30.0 / 20)
    assert m["cov/top_2%_mean"] == pytest.approx(48.0 / 200)
    assert m["cov/top_0.02%_share"] == pytest.approx(12.0 / positive_sum)
    assert m["cov/top_0.2%_share"] == pytest.approx(30.0 / positive_sum)
    assert m["cov/top_2%_share"] == pytest.approx(48.0 / positive_sum)
    assert m["cov/top_20%_share"] == pytest.approx((48.0 + 1800 * 1e-3) / positive_sum)
    assert m["cov/tail_ratio"] == pytest.approx(6.0 / 0.0048)  # 1250


def test_shares_ignore_negative_tokens_and_a_flat_batch_has_ratio_one():
    # Every token equal: the top mean is the mean, and the top q of tokens hold a share q.
    flat = _metrics(torch.full((10, 1000), 0.5, dtype=torch.float64))
    assert flat["cov/tail_ratio"] == pytest.approx(1.0)
    assert flat["cov/top_2%_share"] == pytest.approx(0.02)
    # Only one positive token: it holds all of the positive covariance at every fraction.
    one = torch.full((1, 100), -0.01, dtype=torch.float64)
    one[0, 37] = 3.0
    m = _metrics(one)
    assert m["cov/top_0.02%_share"] == pytest.approx(1.0)
    assert m["cov/top_20%_share"] == pytest.approx(1.0)
    assert m["cov/tail_ratio"] == pytest.approx(3.0 / ((3.0 - 0.99) / 100))


def test_no_positive_covariance_gives_nan_shares():
    m = _metrics(torch.full((2, 50), -1.0, dtype=torch.float64))
    assert torch.isnan(torch.tensor(m["cov/top_2%_share"]))
    assert m["cov/tail_ratio"] == pytest.approx(1.0)


def test_paper_table1_ratio():
    assert PAPER_TABLE1["tail_ratio"] == pytest.approx(1884.7, abs=0.1)
