"""Tabular softmax updates (expected, sampled, closed form, ODE) and the entropy-reward law."""

import numpy as np
import pytest
import torch

from toy_entropy.theory.lawfit import extrapolate_law, fit_entropy_reward_law
from toy_entropy.theory.tabular import (
    TabularSoftmaxPolicy,
    expected_logit_update,
    npg_closed_form_logits,
    pg_ode_logits,
    sampled_logit_update,
)


def _problem():
    torch.manual_seed(0)
    return torch.randn(3, 5, dtype=torch.float64), torch.rand(3, 5, dtype=torch.float64)


def test_npg_closed_form_equals_iterated_expected_updates():
    logits, means = _problem()
    z = logits.clone()
    for _ in range(20):
        z = z + expected_logit_update(z, means, "npg", 0.3)
    closed = npg_closed_form_logits(logits, means, 0.3, torch.tensor([20]))[0]
    torch.testing.assert_close(torch.softmax(z, -1), torch.softmax(closed, -1))


def test_pg_ode_is_the_small_step_limit_of_the_iterated_map():
    logits, means = _problem()
    ode = pg_ode_logits(logits, means, step_size=0.01, num_steps=100)
    z = logits.clone()
    for _ in range(100):
        z = z + expected_logit_update(z, means, "pg", 0.01)
    # the Euler map at a small step matches the RK4 solution to O(eta)
    assert (torch.softmax(z, -1) - torch.softmax(ode[-1], -1)).abs().max().item() < 1e-3
    assert ode.shape == (101, 3, 5)


@pytest.mark.parametrize("rule", ["pg", "npg"])
def test_sampled_update_is_unbiased_with_leave_one_out_advantages(rule):
    logits, means = _problem()
    generator = torch.Generator().manual_seed(1)
    group = 64
    total = torch.zeros_like(logits)
    repeats = 400
    for _ in range(repeats):
        actions = torch.multinomial(torch.softmax(logits, -1), group, True, generator=generator)
        rewards = means.gather(1, actions)  # deterministic rewards: only the sampling is noisy
        loo = (rewards.sum(1, keepdim=True) - rewards) / (group - 1)
        total += sampled_logit_update(logits, actions, rewards - loo, rule, 1.0)
    estimate = total / repeats
    exact = expected_logit_update(logits, means, rule, 1.0)
    if rule == "npg":  # NPG logits are defined up to a per-context constant
        estimate = estimate - estimate.mean(-1, keepdim=True)
        exact = exact - exact.mean(-1, keepdim=True)
    assert (estimate - exact).abs().max().item() < 0.03


def test_sampled_pg_update_hand_computed():
    logits = torch.zeros(1, 2, dtype=torch.float64)  # pi = (1/2, 1/2)
    actions = torch.tensor([[0, 1]])
    advantages = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    # (1/G) sum_i A_i (e_ai - pi) = 1/2 [(1/2, -1/2) - (-1/2, 1/2)] = (1/2, -1/2)
    torch.testing.assert_close(
        sampled_logit_update(logits, actions, advantages, "pg", 1.0),
        torch.tensor([[0.5, -0.5]], dtype=torch.float64),
    )
    # NPG: (1/G) sum_i A_i e_ai / pi_ai = 1/2 (2, -2)
    torch.testing.assert_close(
        sampled_logit_update(logits, actions, advantages, "npg", 1.0),
        torch.tensor([[1.0, -1.0]], dtype=torch.float64),
    )


def test_policy_entropy_reward_and_errors():
    policy = TabularSoftmaxPolicy(torch.zeros(2, 4))
    assert policy.mean_entropy().item() == pytest.approx(np.log(4))
    means = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]])
    assert policy.expected_reward(means).item() == pytest.approx(0.125)
    with pytest.raises(ValueError, match="update rule"):
        expected_logit_update(policy.logits, means, "adam", 0.1)
    with pytest.raises(ValueError, match="logit_change shape"):
        policy.apply(torch.zeros(3))


def test_law_fit_recovers_known_coefficients():
    entropy = np.linspace(2.0, 0.05, 50)
    reward = -0.3 * np.exp(entropy) + 2.5
    fit = fit_entropy_reward_law(entropy, reward)
    assert fit.a == pytest.approx(0.3) and fit.b == pytest.approx(2.5)
    assert fit.r2 == pytest.approx(1.0) and fit.ceiling == pytest.approx(2.2)
    extrapolation = extrapolate_law(entropy, reward, 0.15)
    assert extrapolation.rmse < 1e-9 and extrapolation.fit.num_points == 8


def test_law_extrapolation_error_is_measured_on_the_rest():
    entropy = np.linspace(2.0, 0.0, 20)
    reward = -0.3 * np.exp(entropy) + 2.5
    reward[10:] += 0.1  # the law breaks after the fit window
    result = extrapolate_law(entropy, reward, 0.25)
    assert result.rmse == pytest.approx(np.sqrt((5 * 0.0**2 + 10 * 0.1**2) / 15))
    assert result.final_error == pytest.approx(-0.1)


@pytest.mark.parametrize(
    "entropy, reward, message",
    [([1.0], [1.0], "at least 2"), ([1.0, 2.0], [1.0], "differ"), ([1, np.nan], [0, 1], "finite")],
)
def test_law_bad_input(entropy, reward, message):
    with pytest.raises(ValueError, match=message):
        fit_entropy_reward_law(entropy, reward)


def test_advantage_estimators_hand_computed():
    from toy_entropy.algorithms.advantages import compute_advantages, filter_uniform_groups

    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std().item()  # unbiased: sqrt(1/3)
    grpo = compute_advantages("grpo", rewards)
    assert grpo[0, 0].item() == pytest.approx(0.5 / (std + 1e-6))
    assert torch.equal(grpo[1], torch.zeros(4))
    assert torch.equal(
        compute_advantages("dr_grpo", rewards)[0], torch.tensor([0.5, -0.5, -0.5, 0.5])
    )
    rloo = compute_advantages("rloo", rewards)[0]
    torch.testing.assert_close(rloo, torch.tensor([1 - 1 / 3, -2 / 3, -2 / 3, 1 - 1 / 3]))
    assert compute_advantages("reinforce", rewards)[0, 1].item() == pytest.approx(-0.75)
    assert filter_uniform_groups(rewards).tolist() == [True, False]
    with pytest.raises(ValueError, match="rloo"):
        compute_advantages("ppo", rewards)
    with pytest.raises(ValueError, match="G >= 2"):
        compute_advantages("grpo", rewards[:, :1])
