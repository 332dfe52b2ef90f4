"""Exact entropy and covariance math against hand-computed values."""

import math

import pytest
import torch

from toy_entropy.theory.entropy import (
    dataset_entropy,
    entropy_from_logits,
    logprob_logit_covariance,
    masked_response_mean,
    masked_token_mean,
    npg_logit_update,
    pg_logit_update,
    predicted_entropy_change,
)


def test_entropy_of_uniform_and_two_point_distributions():
    assert entropy_from_logits(torch.zeros(4)).item() == pytest.approx(math.log(4))
    logits = torch.log(torch.tensor([0.25, 0.75]))
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert entropy_from_logits(logits).item() == pytest.approx(expected, rel=1e-6)


def test_entropy_is_stable_for_huge_and_masked_logits():
    logits = torch.tensor([[1e4, 0.0, -1e4], [0.0, 0.0, -math.inf]])
    entropy = entropy_from_logits(logits)
    assert entropy[0].item() == pytest.approx(0.0, abs=1e-6)
    assert entropy[1].item() == pytest.approx(math.log(2), rel=1e-6)
    masked = torch.tensor([0.3, -math.inf, 1.2], requires_grad=True)
    entropy_from_logits(masked).backward()
    assert torch.isfinite(masked.grad).all()
    assert masked.grad[1].item() == 0.0


def test_entropy_gradient_matches_closed_form():
    # dH/dz_a = -pi_a (log pi_a + H)
    logits = torch.tensor([0.5, -1.0, 2.0, 0.1], dtype=torch.float64, requires_grad=True)
    entropy = entropy_from_logits(logits)
    entropy.backward()
    probs = torch.softmax(logits.detach(), -1)
    expected = -probs * (probs.log() + entropy.detach())
    torch.testing.assert_close(logits.grad, expected)


def test_batched_over_leading_shape_and_dtype_kept():
    logits = torch.randn(2, 3, 5, dtype=torch.float64)
    entropy = entropy_from_logits(logits)
    assert entropy.shape == (2, 3) and entropy.dtype == torch.float64
    torch.testing.assert_close(entropy[1, 2], entropy_from_logits(logits[1, 2]))


def test_response_mean_and_token_mean_differ_as_defined():
    values = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    # response mean: (1 + 3) / 2; token mean: (4 + 3) / 5
    assert masked_response_mean(values, mask).item() == pytest.approx(2.0)
    assert masked_token_mean(values, mask).item() == pytest.approx(7 / 5)


def test_response_mean_skips_empty_responses():
    values = torch.tensor([[2.0, 4.0], [9.0, 9.0]])
    mask = torch.tensor([[1, 1], [0, 0]])
    assert masked_response_mean(values, mask).item() == pytest.approx(3.0)


def test_dataset_entropy_modes():
    logits = torch.zeros(2, 3, 4)  # every position uniform over 4 tokens
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    for mode in ("response-mean", "token-mean"):
        assert dataset_entropy(logits, mask, mode).item() == pytest.approx(math.log(4))
    with pytest.raises(ValueError, match="mode"):
        dataset_entropy(logits, mask, "sum")
    with pytest.raises(ValueError, match="mask shape"):
        dataset_entropy(logits, mask[:, :2])


def test_covariance_hand_computed():
    # pi = (1/2, 1/4, 1/4); log pi = (-ln2, -2ln2, -2ln2); dz = (1, 0, 0)
    logits = torch.log(torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    dz = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    ln2 = math.log(2)
    mean_lp = 0.5 * -ln2 + 0.5 * -2 * ln2
    expected = 0.5 * (-ln2 - mean_lp) * 0.5 + 0.5 * (-2 * ln2 - mean_lp) * (-0.5)
    assert logprob_logit_covariance(logits, dz).item() == pytest.approx(expected)
    assert predicted_entropy_change(logits, dz).item() == pytest.approx(-expected)


def test_covariance_ignores_constant_shift_and_masked_actions():
    logits = torch.tensor([0.3, -math.inf, 1.0, -0.5], dtype=torch.float64)
    dz = torch.tensor([0.2, 123.0, -0.1, 0.4], dtype=torch.float64)
    base = logprob_logit_covariance(logits, dz)
    torch.testing.assert_close(logprob_logit_covariance(logits, dz + 7.0), base)
    dz_other = dz.clone()
    dz_other[1] = -5.0
    torch.testing.assert_close(logprob_logit_covariance(logits, dz_other), base)


@pytest.mark.parametrize("update", [pg_logit_update, npg_logit_update])
def test_identity_holds_to_first_order(update):
    torch.manual_seed(0)
    logits = torch.randn(6, 8, dtype=torch.float64)
    values = torch.rand(6, 8, dtype=torch.float64)
    for eta, tolerance in ((1e-3, 1e-2), (1e-4, 1e-3)):
        dz = update(logits, values, eta)
        actual = entropy_from_logits(logits + dz) - entropy_from_logits(logits)
        predicted = predicted_entropy_change(logits, dz)
        rel = ((actual - predicted).abs() / actual.abs()).max().item()
        assert rel < tolerance


def test_closed_form_updates():
    logits = torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64))
    values = torch.tensor([1.0, 0.0], dtype=torch.float64)
    # A = (0.5, -0.5): PG dz = eta * pi * A, NPG dz = eta * A
    torch.testing.assert_close(
        pg_logit_update(logits, values, 0.1), torch.tensor([0.025, -0.025]).double()
    )
    torch.testing.assert_close(
        npg_logit_update(logits, values, 0.1), torch.tensor([0.05, -0.05]).double()
    )


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="logit_change shape"):
        logprob_logit_covariance(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="scalar"):
        entropy_from_logits(torch.tensor(1.0))
