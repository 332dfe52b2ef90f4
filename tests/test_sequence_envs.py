"""Tests of the sequence-generation envs: check_env on every id, episodes, the torch vector env."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import toy_entropy.envs  # noqa: F401  (registers the ToyEntropy ids)
from toy_entropy.envs.sequence import SequenceVectorEnv, make_task

SEQUENCE_IDS = sorted(
    env_id
    for env_id, spec in gym.registry.items()
    if str(spec.entry_point).startswith("toy_entropy.envs.sequence")
)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def play(env, text: str) -> list[tuple]:
    """Step the single env through the tokens of ``text``; the (obs, reward, term, trunc) list."""
    results = []
    for token in env.unwrapped.task.vocab.encode(text):
        obs, reward, terminated, truncated, _ = env.step(token)
        results.append((obs, reward, terminated, truncated))
    return results


def test_every_task_has_a_registered_id():
    assert SEQUENCE_IDS == [
        "ToyEntropy/Addition-v0",
        "ToyEntropy/Countdown-v0",
        "ToyEntropy/Fork-v0",
        "ToyEntropy/HardPrompt-v0",
        "ToyEntropy/Reverse-v0",
        "ToyEntropy/Sort-v0",
    ]


@pytest.mark.parametrize("env_id", SEQUENCE_IDS)
@pytest.mark.parametrize("render_mode", [None, "ansi"])
def test_check_env_passes_without_warnings(env_id, render_mode):
    # Token mode only: check_env fails any env that truncates after one step, which a
    # response-mode episode (one step) does whenever the sampled response lacks <eos>.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make(env_id, render_mode=render_mode)
        check_env(env.unwrapped)
        env.close()


# ---- single env ---------------------------------------------------------------------------


def test_single_env_episode_rewards_the_correct_answer_at_the_end():
    env = gym.make("ToyEntropy/Reverse-v0", render_mode="ansi")
    obs, info = env.reset(seed=0, options={"prompt": "3 1 4 1 5 ="})
    assert info == {"prompt": "<bos> 3 1 4 1 5 =", "hard": False}
    assert obs["length"] == 7 and obs["tokens"].tolist() == [1, 6, 4, 7, 4, 8, 13] + [0] * 6
    results = play(env, "5 1 4 1 3 <eos>")
    assert [r[1] for r in results] == [0, 0, 0, 0, 0, 1.0]
    assert [r[2] for r in results] == [False] * 5 + [True]
    assert not any(r[3] for r in results)
    assert [int(r[0]["length"]) for r in results] == [8, 9, 10, 11, 12, 13]
    assert env.render() == "<bos> 3 1 4 1 5 = | 5 1 4 1 3 <eos>"
    with pytest.raises(RuntimeError, match="reset"):
        env.step(2)
    env.reset(options={"prompt": "3 1 4 1 5 ="})
    assert [r[1] for r in play(env, "5 1 4 1 <eos>")] == [0, 0, 0, 0, 0]


def test_single_env_truncates_at_the_response_limit():
    env = gym.make("ToyEntropy/Addition-v0")
    env.reset(seed=0, options={"prompt": "0 7 + 5 8 ="})
    results = play(env, "5 6 0 0")  # the answer without <eos>: 4 tokens, the limit
    assert [(r[1], r[2], r[3]) for r in results] == [(0, False, False)] * 3 + [(0, False, True)]


def test_single_env_passes_task_arguments_and_rejects_bad_actions():
    env = gym.make("ToyEntropy/Sort-v0", list_length=8, extra_tokens=10)
    assert env.action_space == gym.spaces.Discrete(24)
    assert env.observation_space["tokens"].shape == (10 + 9,)
    env.reset(seed=0)
    for action, error in [(1.5, TypeError), (True, TypeError), (-1, ValueError), (24, ValueError)]:
        with pytest.raises(error, match=r"action space Discrete\(24\)"):
            env.step(action)
    env.step(np.int64(3))  # numpy integers are fine


def test_single_env_response_mode_writes_and_scores_a_whole_answer_in_one_step():
    env = gym.make("ToyEntropy/Reverse-v0", action_mode="response", render_mode="ansi")
    assert env.action_space == gym.spaces.MultiDiscrete([14] * 6)
    vocab = env.unwrapped.task.vocab
    env.reset(options={"prompt": "3 1 4 1 5 ="})
    obs, reward, terminated, truncated, _ = env.step(np.array(vocab.encode("5 1 4 1 3 <eos>")))
    assert (reward, terminated, truncated, int(obs["length"])) == (1.0, True, False, 13)
    assert env.observation_space.contains(obs)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array(vocab.encode("5 1 4 1 3 <eos>")))
    env.reset(options={"prompt": "3 1 4 1 5 ="})
    obs, reward, terminated, truncated, _ = env.step(np.array(vocab.encode("5 1 <eos> 1 3 3")))
    assert (reward, terminated, truncated, int(obs["length"])) == (0.0, True, False, 10)
    assert env.render() == "<bos> 3 1 4 1 5 = | 5 1 <eos>"  # the tail is dropped
    env.reset(options={"prompt": "3 1 4 1 5 ="})
    _, reward, terminated, truncated, _ = env.step(np.array(vocab.encode("5 1 4 1 3 3")))
    assert (reward, terminated, truncated) == (0.0, False, True)
    env.reset(seed=0)
    env.action_space.seed(0)
    assert env.observation_space.contains(env.step(env.action_space.sample())[0])
    env.reset(seed=0)
    for action, error, message in [
        (np.zeros(6), TypeError, "integer numpy array"),
        ([3] * 6, TypeError, "integer numpy array"),
        (np.zeros(5, dtype=np.int64), ValueError, r"shape \(6,\)"),
        (np.full(6, 14), ValueError, "outside the action space"),
    ]:
        with pytest.raises(error, match=message):
            env.step(action)


def test_single_env_draws_from_its_split_and_accepts_a_task_instance():
    task = make_task("addition", num_digits=1)
    env = gym.make("ToyEntropy/Addition-v0", task=task, split="eval")
    prompts = [env.reset(seed=s)[1]["prompt"] for s in range(20)]
    assert task.is_eval(task.prompts_from_text(prompts)).all()
    assert env.observation_space["tokens"].shape == (5 + 3,)
    with pytest.raises(ValueError, match="split must be one of"):
        gym.make("ToyEntropy/Addition-v0", split="test")
    with pytest.raises(ValueError, match="render_mode"):
        make_vec("ToyEntropy/Addition-v0", 2, render_mode="human")
    with pytest.raises(ValueError, match="action_mode"):
        gym.make("ToyEntropy/Addition-v0", action_mode="tokens")


def test_single_env_is_seeded_through_np_random():
    env = gym.make("ToyEntropy/Countdown-v0")
    first = [env.reset(seed=5)[1]["prompt"] for _ in range(2)]
    following = env.reset()[1]["prompt"]
    assert first[0] == first[1]
    other = [env.reset(seed=s)[1]["prompt"] for s in range(6, 12)]
    assert len({first[0], following, *other}) > 3


# ---- vector env ---------------------------------------------------------------------------


def make_vec(env_id: str, num_envs: int, device: str = "cpu", **kwargs) -> SequenceVectorEnv:
    env = gym.make_vec(
        env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", device=device, **kwargs
    )
    assert isinstance(env, SequenceVectorEnv)
    return env


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("env_id", SEQUENCE_IDS)
def test_vector_env_shapes_dtypes_and_device(env_id, device):
    env = make_vec(env_id, 6, device=device)
    task = env.task
    width = task.prompt_length + task.max_response_length
    obs, info = env.reset(seed=0)
    assert obs["tokens"].shape == (6, width) and obs["tokens"].dtype == torch.long
    assert obs["tokens"].device.type == device
    assert obs["length"].tolist() == [task.prompt_length] * 6
    assert info["prompt_index"].tolist() == list(range(6))
    assert env.action_space.shape == (6,)
    obs, rewards, terminated, truncated, _ = env.step(torch.full((6,), 3, device=device))
    assert rewards.shape == (6,) and rewards.dtype == torch.float32
    assert terminated.dtype == truncated.dtype == torch.bool and terminated.shape == (6,)
    assert rewards.device.type == terminated.device.type == device
    assert obs["length"].tolist() == [task.prompt_length + 1] * 6
    assert obs["tokens"][:, task.prompt_length].tolist() == [3] * 6


def test_group_reset_repeats_each_prompt_contiguously():
    env = make_vec("ToyEntropy/Reverse-v0", 12)
    obs, info = env.reset(seed=1, options={"group_size": 4})
    assert info["prompt_index"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    groups = obs["tokens"].view(3, 4, -1)
    assert torch.equal(groups, groups[:, :1].expand_as(groups))
    assert len({tuple(group[0].tolist()) for group in groups}) == 3
    assert torch.equal(groups[:, 0, : env.task.prompt_length], env.prompts.tokens)
    with pytest.raises(ValueError, match="group_size"):
        env.reset(options={"group_size": 5})


def test_vector_env_is_seeded():
    first, second = make_vec("ToyEntropy/Sort-v0", 8), make_vec("ToyEntropy/Sort-v0", 8)
    tokens = first.reset(seed=3)[0]["tokens"]
    assert torch.equal(tokens, second.reset(seed=3)[0]["tokens"])
    assert not torch.equal(tokens, first.reset(seed=4)[0]["tokens"])
    assert not torch.equal(tokens, second.reset()[0]["tokens"])  # the generator moved on


@pytest.mark.parametrize("device", DEVICES)
def test_vector_rollout_scores_each_row_once(device):
    env = make_vec("ToyEntropy/Countdown-v0", 4, device=device)
    env.reset(seed=0, options={"group_size": 4})
    demo, _ = env.task.demonstrations(env.prompts, generator=0)  # (1, 6)
    actions = demo.repeat(4, 1).to(device)  # (4, 6): every row writes a correct answer ...
    actions[1, 0] = env.task.vocab.id("0")  # ... except row 1, which uses a number not given
    actions[2, 0] = env.task.vocab.eos_id  # and row 2, which stops at once
    totals = torch.zeros(4, device=device)
    ended_at = torch.full((4,), -1)
    for t in range(6):
        _, rewards, terminated, truncated, _ = env.step(actions[:, t])
        assert not truncated.any()
        totals += rewards
        ended_at[terminated.cpu()] = t
    assert totals.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert ended_at.tolist() == [5, 5, 0, 5]
    assert env.done.all()
    frozen = env.step(torch.full((4,), 5, device=device))
    assert frozen[1].sum() == 0 and not frozen[2].any() and not frozen[3].any()
    assert frozen[0]["length"].tolist() == [8 + 6, 8 + 6, 8 + 1, 8 + 6]


def test_vector_env_truncates_at_max_episode_steps():
    env = make_vec("ToyEntropy/Sort-v0", 3, max_episode_steps=2)
    assert env.single_observation_space["tokens"].shape == (7 + 2,)
    env.reset(seed=0)
    flags = [env.step(torch.tensor([3, 4, 5]))[2:4] for _ in range(2)]
    assert [t.tolist() for t, _ in flags] == [[False] * 3, [False] * 3]
    assert [t.tolist() for _, t in flags] == [[False] * 3, [True] * 3]


def test_vector_env_rejects_bad_actions():
    env = make_vec("ToyEntropy/Addition-v0", 4)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(torch.zeros(4, dtype=torch.long))
    env.reset(seed=0)
    bad = [
        (torch.zeros(4), TypeError, "integer tensor"),
        (torch.zeros(4, dtype=torch.bool), TypeError, "integer tensor"),
        ([1, 2, 3, 4], TypeError, "integer tensor"),
        (torch.zeros(5, dtype=torch.long), ValueError, r"shape \(4,\)"),
        (torch.tensor([0, 1, 2, 15]), ValueError, r"\[0, 15\)"),
        (torch.tensor([-1, 1, 2, 3]), ValueError, r"\[0, 15\)"),
    ]
    for actions, error, message in bad:
        with pytest.raises(error, match=message):
            env.step(actions)
    obs, _, _, _, _ = env.step(np.array([3, 4, 5, 6]))  # numpy ids are accepted
    assert obs["tokens"][:, 7].tolist() == [3, 4, 5, 6]
    with pytest.warns(UserWarning, match="render_mode"):
        assert env.render() is None


def test_vector_env_renders_text():
    env = make_vec("ToyEntropy/Reverse-v0", 2, render_mode="ansi", list_length=2)
    env.reset(seed=0, options={"group_size": 2})
    env.step(torch.tensor([3, 2]))
    prompt = env.task.decode_prompts(env.prompts)[0]
    assert env.render() == (f"{prompt} | 0", f"{prompt} | <eos>")


def test_sync_and_vector_envs_agree_on_spaces():
    sync = gym.make_vec("ToyEntropy/HardPrompt-v0", num_envs=2, vectorization_mode="sync")
    vector = make_vec("ToyEntropy/HardPrompt-v0", 2)
    assert sync.single_observation_space == vector.single_observation_space
    assert sync.single_action_space == vector.single_action_space
    task = make_task("hard_prompt")
    assert vector.single_action_space.n == task.vocab.size


# ---- vector env, whole responses ------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_response_step_scores_every_row_once_with_known_rewards(device):
    env = make_vec("ToyEntropy/Reverse-v0", 6, device=device, action_mode="response")
    assert env.action_space.shape == (6, 6)
    _, info = env.reset(seed=0, options={"group_size": 3})
    demo, _ = env.task.demonstrations(env.prompts)  # (2, 6) correct answers, <eos> last
    vocab = env.task.vocab
    actions = demo[info["prompt_index"]].clone().to(device)  # (6, 6)
    actions[1, 0] = (actions[1, 0] + 1 - 3) % 10 + 3  # a wrong first digit
    actions[2] = vocab.id("4")  # no <eos>: truncated
    actions[4, 2:] = vocab.eos_id  # stops after two digits
    actions[5] = torch.tensor(vocab.encode("<eos> 3 3 3 3 3"))  # empty answer, ignored tail
    obs, rewards, terminated, truncated, _ = env.step(actions)
    assert rewards.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert terminated.tolist() == [True, True, False, True, True, True]
    assert truncated.tolist() == [False, False, True, False, False, False]
    assert rewards.device.type == terminated.device.type == device
    length = env.task.prompt_length
    assert (obs["length"] - length).tolist() == [6, 6, 6, 6, 3, 1]
    assert obs["tokens"][5, length:].tolist() == [vocab.eos_id] + [vocab.pad_id] * 5
    assert env.done.all()
    after = env.step(actions)  # every row ended: ignored
    assert after[1].tolist() == [0.0] * 6 and not after[2].any() and not after[3].any()
    assert torch.equal(after[0]["tokens"], obs["tokens"])


def test_response_step_rejects_bad_actions_with_the_action_space():
    env = make_vec("ToyEntropy/Addition-v0", 4, action_mode="response")  # V = 15, T = 4
    with pytest.raises(RuntimeError, match="reset"):
        env.step(torch.zeros(4, 4, dtype=torch.long))
    env.reset(seed=0)
    bad = [
        (torch.zeros(4, 4), TypeError, "integer tensor"),
        (torch.zeros(4, dtype=torch.long), ValueError, r"shape \(4, 4\)"),
        (torch.zeros(4, 5, dtype=torch.long), ValueError, r"shape \(4, 4\)"),
        (torch.full((4, 4), 15), ValueError, r"\[0, 15\).*max 15"),
    ]
    for actions, error, message in bad:
        with pytest.raises(error, match=message):
            env.step(actions)
    _, rewards, _, truncated, _ = env.step(np.full((4, 4), 3, dtype=np.int32))  # numpy ids
    assert rewards.tolist() == [0.0] * 4 and truncated.all()


def test_ranks_hold_disjoint_blocks_of_one_global_prompt_draw():
    whole = make_vec("ToyEntropy/Sort-v0", 8, action_mode="response")
    ranks = [
        make_vec("ToyEntropy/Sort-v0", 4, action_mode="response", world_size=2, rank=r)
        for r in range(2)
    ]
    tokens = whole.reset(seed=7, options={"group_size": 2})[0]["tokens"]  # 4 prompts x 2
    shards = [env.reset(seed=7, options={"group_size": 2}) for env in ranks]
    assert torch.equal(torch.cat([obs["tokens"] for obs, _ in shards]), tokens)
    assert [info["prompt_index"].tolist() for _, info in shards] == [[0, 0, 1, 1]] * 2
    assert torch.equal(ranks[1].prompts.tokens, whole.prompts.tokens[2:])
    with pytest.raises(ValueError, match="rank"):
        make_vec("ToyEntropy/Sort-v0", 4, world_size=2, rank=2)
