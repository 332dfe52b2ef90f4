"""Bandit environments: check_env over every registered id, vector form, bad actions."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from toy_entropy import envs
from toy_entropy.envs.bandit_problem import make_bandit_problem

BANDIT_IDS = [i for i in envs.registered_ids() if "Bandit" in i]


def test_both_bandit_ids_registered():
    assert {"ToyEntropy/Bandit-v0", "ToyEntropy/ContextualBandit-v0"} <= set(BANDIT_IDS)


@pytest.mark.parametrize("env_id", BANDIT_IDS)
def test_check_env_passes_without_warnings(env_id):
    env = gym.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=True)


def test_bernoulli_rewards_match_means_and_seeding_is_deterministic():
    env = gym.make("ToyEntropy/Bandit-v0", num_arms=3, reward_means=[0.2, 0.5, 0.9])
    env.reset(seed=7)
    rewards = []
    for _ in range(4000):
        env.reset()
        rewards.append(env.step(2)[1])
    assert np.mean(rewards) == pytest.approx(0.9, abs=0.02)
    first = [gym.make("ToyEntropy/Bandit-v0").reset(seed=3) for _ in range(2)]
    assert first[0] == first[1]


def test_single_step_episode_flags_are_python_bools():
    env = gym.make("ToyEntropy/ContextualBandit-v0", num_contexts=3, num_arms=4)
    obs, _ = env.reset(seed=0)
    next_obs, reward, terminated, truncated, info = env.step(1)
    assert terminated is True and truncated is False
    assert obs in range(3) and isinstance(reward, float)


@pytest.mark.parametrize("action", [10, -1])
def test_out_of_range_action_names_the_space(action):
    env = gym.make("ToyEntropy/Bandit-v0", num_arms=10).unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"Discrete\(10\)"):
        env.step(action)


@pytest.mark.parametrize("action", [1.5, "2", [1]])
def test_wrong_type_action_names_the_space(action):
    env = gym.make("ToyEntropy/Bandit-v0", num_arms=10).unwrapped
    env.reset(seed=0)
    with pytest.raises(TypeError, match=r"Discrete\(10\)"):
        env.step(action)


def test_zipf_prior_places_best_arm_at_requested_rank():
    likely = make_bandit_problem(2, 5, prior="zipf", best_arm_rank=0)
    rare = make_bandit_problem(2, 5, prior="zipf", best_arm_rank=4)
    for context in range(2):
        best = int(np.argmax(likely.reward_means[context]))
        assert np.argmax(likely.prior_logits[context]) == best
        assert np.argmin(rare.prior_logits[context]) == best
    # Zipf with exponent s: log-odds of ranks 0 and 1 equal s * log 2
    gap = np.sort(likely.prior_logits[0])[::-1]
    assert gap[0] - gap[1] == pytest.approx(1.5 * np.log(2))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_arms": 1}, "num_arms"),
        ({"reward_dist": "poisson"}, "reward_dist"),
        ({"prior": "flat"}, "prior"),
        ({"best_arm_rank": 10}, "best_arm_rank"),
        ({"reward_means": [0.5, 2.0]}, "reward_means"),
        ({"reward_means": [0.1, 0.2, 0.3]}, "shape"),
    ],
)
def test_bad_problem_arguments_raise(kwargs, message):
    arguments = {"num_contexts": 1, "num_arms": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        make_bandit_problem(**arguments)


@pytest.mark.parametrize("env_id", BANDIT_IDS)
def test_vector_env_shapes_dtypes_device_and_seeding(env_id):
    vec = gym.make_vec(env_id, num_envs=16, vectorization_mode="vector_entry_point", device="cpu")
    obs, _ = vec.reset(seed=5)
    assert obs.shape == (16,) and obs.dtype == torch.long and obs.device.type == "cpu"
    actions = torch.zeros(16, dtype=torch.long)
    next_obs, rewards, terminated, truncated, info = vec.step(actions)
    assert rewards.shape == (16,) and rewards.dtype == torch.float32
    assert terminated.all() and not truncated.any()
    again = gym.make_vec(env_id, num_envs=16, vectorization_mode="vector_entry_point")
    obs2, _ = again.reset(seed=5)
    assert torch.equal(obs, obs2)
    assert torch.equal(again.step(actions)[1], rewards)


def test_vector_env_group_reset_and_gaussian_means():
    vec = gym.make_vec(
        "ToyEntropy/ContextualBandit-v0",
        num_envs=4000,
        num_contexts=2,
        num_arms=3,
        reward_dist="gaussian",
        reward_std=0.5,
    )
    contexts = torch.tensor([0, 1]).repeat_interleave(2000)
    vec.reset(seed=0, options={"contexts": contexts})
    _, rewards, *_ = vec.step(torch.zeros(4000, dtype=torch.long))
    means = vec.unwrapped.reward_means if hasattr(vec, "unwrapped") else vec.reward_means
    assert rewards[:2000].mean().item() == pytest.approx(means[0, 0].item(), abs=0.05)
    assert rewards[2000:].mean().item() == pytest.approx(means[1, 0].item(), abs=0.05)


@pytest.mark.parametrize(
    "actions, error",
    [
        (torch.zeros(3, dtype=torch.long), ValueError),
        (torch.full((4,), 10), ValueError),
        (torch.zeros(4), TypeError),
        ([0, 1, 2, 3], TypeError),
    ],
)
def test_vector_env_bad_actions(actions, error):
    vec = gym.make_vec("ToyEntropy/Bandit-v0", num_envs=4, num_arms=10)
    vec.reset(seed=0)
    with pytest.raises(error, match=r"\[0, 10\)|Discrete|integer"):
        vec.step(actions)
