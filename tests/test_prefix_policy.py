"""Tests of the exact tabular prefix policy: enumeration, entropy, updates and the split."""

from __future__ import annotations

import math

import pytest
import torch

from toy_entropy.models.prefix_policy import PrefixPolicy
from toy_entropy.theory.entropy import dataset_entropy

EOS = 1


def make_policy(seed: int = 0, prompts: int = 3, vocab: int = 4, length: int = 3) -> PrefixPolicy:
    gen = torch.Generator().manual_seed(seed)
    return PrefixPolicy(prompts, vocab, length, eos_id=EOS, init_std=1.0, generator=gen)


def reward(prompt: int, response: tuple[int, ...]) -> float:
    """1 for the two-token answer (prompt + 2, EOS), 0.3 for any answer starting right."""
    if response == (prompt + 2, EOS):
        return 1.0
    return 0.3 if response[0] == prompt + 2 else 0.0


def test_enumeration_of_a_hand_sized_case():
    policy = PrefixPolicy(1, 2, 2, eos_id=0, pad_id=9)  # tokens {0 = EOS, 1}, L = 2
    assert policy.num_states == 2 and policy.num_responses == 3
    assert policy.responses.tolist() == [[0, 9], [1, 0], [1, 1]]
    assert policy.response_lengths.tolist() == [1, 2, 2]
    # Uniform policy: P([EOS]) = 1/2, P([1, EOS]) = P([1, 1]) = 1/4 (the last is truncated).
    torch.testing.assert_close(
        policy.response_probs(), torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)
    )
    # Response-mean weights: root gets 1/2 + 1/8 + 1/8, the state "1" gets 1/8 + 1/8.
    torch.testing.assert_close(
        policy.state_weights(), torch.tensor([[0.75, 0.25]], dtype=torch.float64)
    )
    torch.testing.assert_close(
        policy.state_weights("token-mean"), torch.tensor([[2 / 3, 1 / 3]], dtype=torch.float64)
    )


@pytest.mark.parametrize("vocab, length", [(2, 4), (3, 3), (4, 3), (5, 2)])
def test_counts_and_probabilities_sum_to_one(vocab, length):
    policy = make_policy(vocab=vocab, length=length)
    assert policy.num_states == sum((vocab - 1) ** t for t in range(length))
    assert policy.num_responses == policy.num_states + (vocab - 1) ** length
    probs = policy.response_probs()  # (P, R)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3, dtype=torch.float64))
    assert len({tuple(y) for y in policy.responses.tolist()}) == policy.num_responses
    for mode in ("response-mean", "token-mean"):
        torch.testing.assert_close(
            policy.state_weights(mode).sum(), torch.tensor(1.0, dtype=torch.float64)
        )


def test_response_probability_is_product_of_token_probabilities():
    policy = make_policy()
    prompts = torch.arange(3).repeat_interleave(policy.num_responses)
    responses = policy.responses.repeat(3, 1)
    mask = policy.response_mask.repeat(3, 1)
    logits = policy.logits_for(prompts, responses, mask)  # (P*R, L, V)
    token_lp = torch.log_softmax(logits, -1).gather(-1, responses.clamp(max=3)[..., None])
    sequence_lp = (token_lp.squeeze(-1) * mask).sum(dim=1).view(3, -1)
    torch.testing.assert_close(sequence_lp.exp(), policy.response_probs())


def test_uniform_policy_entropy_is_log_vocab():
    policy = PrefixPolicy(2, 5, 3)
    for mode in ("response-mean", "token-mean"):
        assert policy.entropy(mode).item() == pytest.approx(math.log(5), abs=1e-12)


@pytest.mark.parametrize("mode", ["response-mean", "token-mean"])
def test_exact_entropy_matches_monte_carlo(mode):
    policy = make_policy(seed=1)
    prompts = torch.arange(3).repeat(20000)
    responses, mask = policy.sample(prompts, torch.Generator().manual_seed(0))
    logits = policy.logits_for(prompts, responses, mask)  # (N, L, V)
    estimate = dataset_entropy(logits, mask, mode).item()
    # The estimate's standard error is about 5e-4 nats: the tolerance is 6 of them.
    assert estimate == pytest.approx(policy.entropy(mode).item(), abs=3e-3)
    # The derived mask (up to the first EOS) equals the sampled one.
    assert torch.equal(policy.logits_for(prompts, responses), logits)


def test_vanilla_expected_update_is_the_gradient_of_exact_reward():
    policy = make_policy(seed=2)
    rewards = policy.reward_table(reward)
    objective = policy.expected_reward(rewards)
    (grad,) = torch.autograd.grad(objective, policy.logits)
    update = policy.expected_update(rewards, step_size=0.5, rule="pg")
    torch.testing.assert_close(update, 0.5 * grad, atol=1e-14, rtol=1e-12)
    assert grad.abs().max() > 1e-3  # the reward is not flat


def test_values_and_natural_update():
    policy = make_policy(seed=3)
    rewards = policy.reward_table(reward)
    q_values, values = policy.action_values(rewards)
    per_prompt = (policy.response_probs() * rewards).sum(dim=1)
    torch.testing.assert_close(values[:, 0], per_prompt)  # V(root) = E[r | prompt]
    torch.testing.assert_close(per_prompt.mean(), policy.expected_reward(reward).detach())
    npg = policy.expected_update(rewards, 1.0, rule="npg")
    probs = torch.softmax(policy.logits.detach(), dim=-1)
    torch.testing.assert_close(npg, q_values - values[..., None])
    torch.testing.assert_close((probs * npg).sum(-1), torch.zeros_like(values))
    vanilla = policy.expected_update(rewards, 1.0, rule="pg")
    reach = policy.reach_probs().detach()[..., None]
    torch.testing.assert_close(vanilla, reach / 3 * probs * npg)


def test_split_parts_sum_to_total_and_first_order_is_second_order_accurate():
    policy = make_policy(seed=4)
    rewards = policy.reward_table(reward)
    for mode in ("response-mean", "token-mean"):
        errors = []
        for eta in (1e-1, 1e-2, 1e-3):
            dz = policy.expected_update(rewards, eta, rule="npg")
            split = policy.entropy_change_split(dz, mode)
            assert split.total == pytest.approx(
                split.per_state + split.distribution_shift, abs=1e-14
            )
            new_entropy = policy.entropy(mode, policy.logits.detach() + dz)
            assert split.total == pytest.approx((new_entropy - policy.entropy(mode)).item())
            assert split.distribution_shift != 0  # the state distribution does move
            errors.append(abs(split.first_order - split.per_state) / abs(split.per_state))
        assert errors[2] < 1e-3
        # The relative error falls about linearly with eta (the error term is O(eta^2)).
        assert 5 < errors[1] / errors[2] < 20 and 5 < errors[0] / errors[1] < 20


def test_apply_update_moves_entropy_by_the_split_total():
    policy = make_policy(seed=5)
    dz = policy.expected_update(reward, 0.3, rule="pg")
    split = policy.entropy_change_split(dz)
    before = policy.entropy().item()
    policy.apply_update(dz)
    assert policy.entropy().item() - before == pytest.approx(split.total, abs=1e-14)


@pytest.mark.parametrize("estimator", ["reinforce", "rloo"])
def test_sampled_update_is_unbiased(estimator):
    policy = make_policy(seed=6)
    rewards = policy.reward_table(reward)
    exact = policy.expected_update(rewards, 1.0)
    sampled = policy.sampled_update(
        rewards, 1.0, group_size=100000, generator=torch.Generator().manual_seed(0),
        estimator=estimator,
    )  # fmt: skip
    assert sampled.shape == exact.shape
    # About 2% Monte-Carlo error at this group size; a wrong scale or sign is off by >= 50%.
    assert (sampled - exact).norm() < 0.05 * exact.norm()


def test_sampling_is_reproducible_and_log_probs_match_logits():
    policy = make_policy(seed=7)
    prompts = torch.tensor([0, 2, 1, 1, 0])
    first = policy.sample(prompts, torch.Generator().manual_seed(3), return_log_probs=True)
    second = policy.sample(prompts, torch.Generator().manual_seed(3), return_log_probs=True)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    responses, mask, log_probs = first
    logits = policy.logits_for(prompts, responses, mask)
    expected = torch.log_softmax(logits, -1).gather(-1, responses.clamp(max=3)[..., None])
    torch.testing.assert_close(log_probs, expected.squeeze(-1) * mask)
    logits.sum().backward()  # the scoring path reaches the table
    assert policy.logits.grad.abs().sum() > 0


def test_reward_callable_and_table_agree():
    policy = make_policy()
    table = policy.reward_table(reward)
    assert table.shape == (3, policy.num_responses)
    index = policy.responses.tolist().index([3, EOS, 0])  # answer of prompt 1
    assert table[1, index] == 1.0 and table[0, index] == 0.0
    assert policy.expected_reward(table).item() == pytest.approx(
        policy.expected_reward(reward).item()
    )


def test_bad_arguments_raise():
    policy = make_policy()
    with pytest.raises(ValueError, match="vocab_size must be an int >= 2"):
        PrefixPolicy(1, 1, 3)
    with pytest.raises(ValueError, match="eos_id must be in"):
        PrefixPolicy(1, 3, 3, eos_id=3)
    with pytest.raises(ValueError, match="table entries"):
        PrefixPolicy(10, 30, 6)
    with pytest.raises(ValueError, match="mode must be one of"):
        policy.entropy("sequence-mean")
    with pytest.raises(ValueError, match="rewards must be a"):
        policy.expected_reward(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="rule must be one of"):
        policy.expected_update(reward, 1.0, rule="ppo")
    with pytest.raises(ValueError, match="group_size must be an int >= 2"):
        policy.sampled_update(reward, 1.0, group_size=1)
    with pytest.raises(ValueError, match=r"prompt_indices must lie in \[0, 3\)"):
        policy.sample(torch.tensor([3]))
    responses = torch.tensor([[EOS, 2, 2]])
    with pytest.raises(ValueError, match="after the end of a response"):
        policy.logits_for(torch.tensor([0]), responses, torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="prefix"):
        policy.logits_for(torch.tensor([0]), responses, torch.tensor([[True, False, True]]))


def test_exact_pass_at_k_on_a_policy_with_known_probabilities():
    policy = PrefixPolicy(num_prompts=2, vocab_size=3, max_length=1)  # responses: EOS, a, b
    with torch.no_grad():
        policy.logits.zero_()  # every response has probability 1/3
    rewards = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 1.0]])  # p_correct = 1/3 and 2/3
    values = policy.pass_at_k(rewards, [1, 2, 256])
    expected = [
        (1 / 3 + 2 / 3) / 2,
        ((1 - (2 / 3) ** 2) + (1 - (1 / 3) ** 2)) / 2,
        ((1 - (2 / 3) ** 256) + (1 - (1 / 3) ** 256)) / 2,
    ]
    torch.testing.assert_close(values, torch.tensor(expected, dtype=torch.float64))
    assert float(policy.pass_at_k(rewards, [1])) == pytest.approx(
        float(policy.expected_reward(rewards).detach())
    )  # pass@1 of 0/1 rewards is the expected reward
    with pytest.raises(ValueError, match="ks must be integers >= 1"):
        policy.pass_at_k(rewards, [0])
