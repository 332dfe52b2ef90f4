"""Advantage estimators and the uniform-group filter on hand-computed rewards."""

import math

import pytest
import torch

from toy_entropy.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    filter_uniform_groups,
)

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 1.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0]])


def test_grpo_uses_the_unbiased_group_std_and_eps_1e6():
    advantages = compute_advantages("grpo", REWARDS)
    # Group 0: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = sqrt(1/3) (population std is 0.5).
    scale = math.sqrt(1 / 3) + 1e-6
    torch.testing.assert_close(advantages[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / scale)
    # Group 1: mean 2, unbiased std sqrt(2 / 3).
    scale = math.sqrt(2 / 3) + 1e-6
    torch.testing.assert_close(advantages[1], torch.tensor([1.0, -1.0, 0.0, 0.0]) / scale)
    # All-equal group: 0 / (0 + 1e-6) = 0, not NaN.
    assert torch.equal(advantages[2], torch.zeros(4))


def test_dr_grpo_rloo_and_reinforce_exact():
    torch.testing.assert_close(
        compute_advantages("dr_grpo", REWARDS)[1], torch.tensor([1.0, -1.0, 0.0, 0.0])
    )
    # RLOO: r_i minus the mean of the 3 others = 4/3 (r_i - mean).
    torch.testing.assert_close(
        compute_advantages("rloo", REWARDS)[1], torch.tensor([4 / 3, -4 / 3, 0.0, 0.0])
    )
    # REINFORCE: one baseline for the batch, the mean of all 12 rewards = 14 / 12.
    torch.testing.assert_close(compute_advantages("reinforce", REWARDS), REWARDS - 14 / 12)


@pytest.mark.parametrize("name", sorted(ADVANTAGE_ESTIMATORS))
def test_group_estimators_sum_to_zero_per_group(name):
    advantages = compute_advantages(name, torch.randn(5, 6, dtype=torch.float64))
    sums = advantages.sum(dim=1) if name != "reinforce" else advantages.sum()
    torch.testing.assert_close(sums, torch.zeros_like(sums))


def test_filter_keeps_groups_with_varied_rewards():
    assert torch.equal(filter_uniform_groups(REWARDS), torch.tensor([True, True, False]))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"expected one of \['dr_grpo', 'grpo', 'reinforce'"):
        compute_advantages("ppo", REWARDS)
    with pytest.raises(ValueError, match="G >= 2"):
        compute_advantages("grpo", REWARDS[:, :1])
    with pytest.raises(ValueError, match=r"must be \(P, G\)"):
        compute_advantages("grpo", REWARDS.reshape(-1))
    with pytest.raises(TypeError, match="floating"):
        compute_advantages("grpo", REWARDS.long())
    with pytest.raises(ValueError, match=r"must be \(P, G\)"):
        filter_uniform_groups(REWARDS.reshape(-1))
