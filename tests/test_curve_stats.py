"""Curve statistics on synthetic curves with known answers."""

import math

import numpy as np
import pytest

from toy_entropy.theory.curve_stats import (
    agreement,
    bucket_means,
    finite_mean,
    fraction_positive,
    moving_average,
    rank_correlation,
    seed_band,
    share_of_change,
)


def test_share_of_exponential_decay_matches_closed_form():
    # y = H0 exp(-t / tau) on t = 0..N-1: the share of the drop by step k is
    # (1 - exp(-k / tau)) / (1 - exp(-(N - 1) / tau)).
    n, tau = 2401, 120.0
    t = np.arange(n)
    entropy = 1.7 * np.exp(-t / tau) + 0.05
    for fraction in (1 / 12, 1 / 3):
        k = round(fraction * (n - 1))
        expected = (1 - math.exp(-k / tau)) / (1 - math.exp(-(n - 1) / tau))
        assert share_of_change(entropy, fraction) == pytest.approx(expected, rel=1e-12)
    # k = 200 of 2400 with tau = 120: 1 - e^{-5/3} = 0.8111...
    assert share_of_change(entropy, 1 / 12) == pytest.approx(0.811124, abs=1e-6)


def test_share_of_a_rising_reward_and_of_a_line():
    reward = 0.9 - 0.6 * np.exp(-np.arange(13) / 2.0)  # gain, not drop: same share formula
    k = 1  # round(12 / 12)
    expected = (1 - math.exp(-k / 2.0)) / (1 - math.exp(-12 / 2.0))
    assert share_of_change(reward, 1 / 12) == pytest.approx(expected)
    line = np.linspace(3.0, 1.0, 25)  # linear: the share equals the fraction of steps
    assert share_of_change(line, 1 / 3) == pytest.approx(1 / 3)
    assert share_of_change(line, 1.0) == pytest.approx(1.0)
    assert math.isnan(share_of_change([1.0, 2.0, 1.0], 0.5))


def test_share_with_window_averages_noise_but_keeps_the_start():
    line = np.linspace(0.0, 12.0, 13)  # steps 0..12, y = t
    # window 3 at k = 4: mean(3, 4, 5) = 4; end: mean(10, 11, 12) = 11
    assert share_of_change(line, 1 / 3, window=3) == pytest.approx(4 / 11)
    with pytest.raises(ValueError, match="window"):
        share_of_change(line, 0.5, window=2)
    with pytest.raises(ValueError, match="fraction"):
        share_of_change(line, 0.0)


def test_moving_average_shrinks_at_the_ends():
    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_allclose(moving_average(y, 3), [1.5, 2.0, 3.0, 4.0, 4.5])
    np.testing.assert_allclose(moving_average(y, 1), y)


def test_fraction_positive_and_finite_mean_ignore_nan():
    assert fraction_positive([0.1, -0.2, 0.3, float("nan"), 0.0]) == pytest.approx(0.5)
    assert math.isnan(fraction_positive([float("nan")]))
    assert finite_mean([1.0, float("nan"), 3.0]) == pytest.approx(2.0)
    assert finite_mean([1.0, 2.0, 4.0], weights=[1.0, 0.0, 3.0]) == pytest.approx(13 / 4)


def test_seed_band_is_the_sample_mean_and_std():
    curves = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, float("nan")]])
    mean, std = seed_band(curves)
    np.testing.assert_allclose(mean, [3.0, 2.0])
    np.testing.assert_allclose(std, [2.0, 0.0])  # sample std of 1, 3, 5 is 2
    mean, std = seed_band([[1.0, 2.0]])
    np.testing.assert_allclose(std, [0.0, 0.0])


def test_bucket_means_by_group_accuracy():
    accuracy = np.array([0.0, 0.125, 0.5, 0.625, 0.875, 1.0])
    covariance = np.array([9.0, 1.0, 2.0, 4.0, 6.0, 9.0])
    tokens = np.array([1.0, 1.0, 1.0, 3.0, 1.0, 1.0])
    means, totals = bucket_means(covariance, accuracy, [0.0, 0.5, 0.99], weights=tokens)
    # bucket 0: (0, 0.5] plus key == 0 -> 9, 1, 2; bucket 1: (0.5, 0.99] -> 4 (x3), 6
    np.testing.assert_allclose(means, [4.0, 4.5])
    np.testing.assert_allclose(totals, [3.0, 4.0])
    means, _ = bucket_means(covariance, accuracy, [0.2, 0.3])
    assert math.isnan(means[0])
    with pytest.raises(ValueError, match="edges"):
        bucket_means(covariance, accuracy, [0.5, 0.5])


def test_rank_correlation_is_spearman():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 25, 100]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ranks (0, 1, 2) and (1.5, 0, 1.5)... with a tie: x = [1, 2, 3], y = [5, 1, 5]
    assert rank_correlation([1, 2, 3], [5, 1, 5]) == pytest.approx(0.0)
    assert math.isnan(rank_correlation([1, 2, 3], [7, 7, 7]))


def test_agreement_of_a_scaled_predictor():
    predicted = np.array([-2.0, -1.0, 0.5, 1.0])
    actual = 0.5 * predicted
    stats = agreement(predicted, actual)
    assert stats["correlation"] == pytest.approx(1.0)
    assert stats["slope"] == pytest.approx(0.5)
    assert stats["sign_agreement"] == 1.0
    flipped = agreement(predicted, -actual + np.array([0.0, 0.0, 0.0, 2.0]))
    assert flipped["sign_agreement"] == pytest.approx(0.25)  # only the last point agrees


def test_confidence_interval_uses_student_t():
    from toy_entropy.theory.curve_stats import confidence_interval

    mean, half = confidence_interval([1.0, 2.0, 3.0])  # std 1, n 3, t_{0.975, 2} = 4.303
    assert mean == 2.0 and half == pytest.approx(4.303 / np.sqrt(3))
    assert confidence_interval([5.0, float("nan")])[0] == 5.0
    assert np.isnan(confidence_interval([5.0])[1]) and np.isnan(confidence_interval([])[0])
    big = np.arange(100.0)
    assert confidence_interval(big)[1] == pytest.approx(1.96 * big.std(ddof=1) / 10)


def test_interval_summary_keeps_the_seeds():
    from toy_entropy.theory.curve_stats import interval_summary

    summary = interval_summary(np.array([1.0, 2.0, 3.0]))
    assert summary["mean"] == 2.0 and summary["ci95"] == pytest.approx(4.303 / np.sqrt(3))
    assert summary["seeds"] == [1.0, 2.0, 3.0] and type(summary["seeds"][0]) is float
