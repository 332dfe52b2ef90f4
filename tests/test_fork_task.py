"""The LLM-like ``fork`` task: layout, verifier, warm-start demonstrations, env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import toy_entropy.envs  # noqa: F401  (registers the ToyEntropy ids)
from toy_entropy.envs.sequence import make_task


def test_spread_and_front_answers_and_the_hard_first_fork():
    task = make_task("fork", num_forks=2, segment_length=3)
    prompts = task.prompts_from_text(["k1 k6 =", "k1 k6 ? ="])
    answers = [task.vocab.decode(row) for row in prompts.targets]
    assert answers == [
        "f1 s1 s2 s3 f6 s6 s7 s0 <eos>",
        "f2 s2 s3 s4 f6 s6 s7 s0 <eos>",  # hard: the first fork is (k + 1) mod K
    ]
    front = make_task("fork", num_forks=2, segment_length=3, placement="front")
    target = front.prompts_from_text(["k1 k6 ="]).targets[0]
    assert front.vocab.decode(target) == "f1 f6 s1 s2 s3 s6 s7 s0 <eos>"
    assert task.max_response_length == 9 and task.fork_density == pytest.approx(2 / 9)
    long = make_task("fork", num_forks=8, segment_length=63)
    assert long.max_response_length == 513 and long.fork_density == pytest.approx(8 / 513)


def test_verifier_rewards_exactly_the_correct_answer():
    task = make_task("fork", num_forks=3, segment_length=4, extra_tokens=100)
    prompts = task.sample_prompts(64, "train", 0)
    index = torch.arange(64)
    targets = prompts.targets
    mask = torch.ones_like(targets, dtype=torch.bool)
    assert task.score(prompts, index, targets, mask).eq(1).all()
    wrong_fork = targets.clone()
    wrong_fork[:, 5] = task.vocab.id("f0") + (targets[:, 5] - task.vocab.id("f0") + 1) % 8
    assert task.score(prompts, index, wrong_fork, mask).eq(0).all()
    distractor = targets.clone()
    distractor[:, 2] = task.vocab.distractor_ids[7]
    assert task.score(prompts, index, distractor, mask).eq(0).all()


def test_warm_start_demonstrations_have_the_configured_noise_rates():
    task = make_task(
        "fork", num_forks=4, segment_length=10, hard_fraction=0.5, decoy_rate=0.8,
        fork_noise=0.25, distractor_rate=0.02, extra_tokens=500,
    )  # fmt: skip
    prompts = task.sample_prompts(4000, "train", 1)
    demos, mask = task.warm_start_demonstrations(prompts, np.random.default_rng(2))
    assert mask.all() and demos[:, -1].eq(task.vocab.eos_id).all()
    forks = torch.as_tensor(task.fork_positions)
    scaffold = torch.as_tensor(task.scaffold_positions.reshape(-1))
    # Later forks: uniform with probability 1/4, so wrong with 0.25 * 7/8.
    wrong = demos[:, forks[1:]] != prompts.targets[:, forks[1:]]
    assert wrong.double().mean().item() == pytest.approx(0.25 * 7 / 8, abs=0.01)
    # Hard prompts show the correct first fork with (1 - 0.8) * 0.75 + 0.25 / 8.
    hard = prompts.hard
    right_first = demos[hard, forks[0]] == prompts.targets[hard, forks[0]]
    assert right_first.double().mean().item() == pytest.approx(0.2 * 0.75 + 0.25 / 8, abs=0.02)
    # Scaffold: distractors at the distractor rate, and nowhere else.
    is_distractor = demos >= task.vocab.distractor_ids.start
    assert is_distractor[:, scaffold].double().mean().item() == pytest.approx(0.02, abs=0.002)
    assert not is_distractor[:, forks].any()


def test_fork_arguments_are_checked():
    with pytest.raises(ValueError, match="placement"):
        make_task("fork", placement="middle")
    with pytest.raises(ValueError, match="extra_tokens"):
        make_task("fork", distractor_rate=0.01)
    with pytest.raises(ValueError, match="fork_options"):
        make_task("fork", fork_options=1)
    with pytest.raises(ValueError, match="a fork prompt"):
        make_task("fork").prompts_from_text(["k1 k2 ="])


def test_fork_env_episode_with_task_arguments():
    env = gym.make("ToyEntropy/Fork-v0", num_forks=2, segment_length=2, extra_tokens=20)
    _, info = env.reset(seed=3)
    task = env.unwrapped.task
    assert task.vocab.size == 49 and task.max_response_length == 7
    target = env.unwrapped._prompts.targets[0]
    rewards = [env.step(int(token))[1] for token in target]
    assert rewards[-1] == 1.0 and sum(rewards[:-1]) == 0.0
