"""Noise-free Clip-Cov / KL-Cov on the exact prefix policy: known answers and the mechanism."""

from __future__ import annotations

import pytest
import torch

from toy_entropy.algorithms.exact_selection import (
    TokenTable,
    expected_logit_update,
    expected_run,
    keep_fraction,
    ppo_clip_keep,
    refreshed,
    tail_statistics,
    token_table,
)
from toy_entropy.experiments.cure_exact import ExactConfig, fork_profile, map_cell


def _table(weight, cov) -> TokenTable:
    weight, cov = torch.tensor(weight, dtype=torch.float64), torch.tensor(cov, dtype=torch.float64)
    zeros = torch.zeros_like(weight)
    return TokenTable(torch.arange(len(weight)), weight, zeros, zeros, cov)


def test_weighted_tail_statistics_of_a_hand_made_table():
    stats = tail_statistics(_table([0.5, 0.3, 0.2], [1.0, 2.0, -1.0]), fractions=(2e-4, 0.2, 0.5))
    assert stats["mean"] == pytest.approx(0.9)
    assert stats["top_0.02%_mean"] == pytest.approx(2.0)  # inside the heaviest atom
    assert stats["top_50%_mean"] == pytest.approx((0.3 * 2 + 0.2 * 1) / 0.5)
    assert stats["top_0.02%_share"] == pytest.approx(2e-4 * 2 / 1.1)
    assert stats["top_50%_share"] == pytest.approx(0.8 / 1.1)
    assert stats["tail_ratio"] == pytest.approx(2.0 / 0.9)


def test_keep_fractions_remove_the_stated_weight():
    table = _table([0.1, 0.2, 0.3, 0.4], [6.0, 3.0, 2.0, 0.5])
    kl = keep_fraction(table, "kl_cov", 0.25)  # all of atom 0, 0.15 of atom 1's 0.2
    assert kl.tolist() == pytest.approx([0.0, 0.25, 1.0, 1.0])
    assert (table.weight * (1 - kl)).sum().item() == pytest.approx(0.25)
    clip = keep_fraction(table, "clip_cov", 0.1)  # candidates: 1 < cov < 5, weight 0.5
    assert clip.tolist() == pytest.approx([1.0, 0.8, 0.8, 1.0])
    assert keep_fraction(table, "clip_cov", 0.9).tolist() == pytest.approx([1, 0, 0, 1])
    with pytest.raises(ValueError, match="selection"):
        keep_fraction(table, "top_k", 0.1)


def test_natural_gradient_without_selection_is_the_normalised_action_value():
    policy, rewards = fork_profile(3, 4, 3, 1, 0.05, 0.6, seed=1)
    table = token_table(policy, rewards)
    dz = expected_logit_update(policy, table, keep_fraction(table, "none"), 1.0)  # (P, S, V)
    q_values, _ = policy.action_values(rewards)
    probs = policy.response_probs()
    mean = (probs * rewards).sum(1)
    std = (probs * (rewards - mean[:, None]) ** 2).sum(1).sqrt()
    expected = (q_values - mean[:, None, None]) / (std[:, None, None] + 1e-6)
    assert torch.allclose(dz, expected, atol=1e-9)
    # The token covariance is the weighted covariance of log-prob and advantage.
    w, lp, a = table.weight, table.log_prob, table.advantage
    cov = (w * lp * a).sum() - (w * lp).sum() * (w * a).sum()
    assert (w * table.cov).sum().item() == pytest.approx(cov.item())


def test_heavier_tail_lets_kl_cov_keep_more_entropy():
    config = ExactConfig(max_steps=40)  # GRPO falls below 10% by step 13-15
    light = map_cell(config, 4, 1, 1e-1)
    heavy = map_cell(config, 4, 1, 1e-3)
    assert heavy["tail"]["tail_ratio"] > 10 * light["tail"]["tail_ratio"]
    assert light["grpo_collapsed"] and heavy["grpo_collapsed"]
    assert heavy["kl-cov_entropy_ratio"] > light["kl-cov_entropy_ratio"] > 1.0
    assert heavy["kl-cov_removed"] == pytest.approx(2e-3)


def test_ppo_clip_keep_drops_the_tokens_the_clip_holds():
    ratio = torch.tensor([1.1, 1.3, 0.7, 0.9, 1.3, 0.7], dtype=torch.float64)
    advantage = torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    assert ppo_clip_keep(ratio, advantage, 0.2).tolist() == [1, 0, 0, 1, 1, 1]


def test_refreshed_table_follows_the_current_policy():
    policy, rewards = fork_profile(2, 4, 3, 1, 0.05, 0.6, seed=3)
    table = token_table(policy, rewards)
    same = refreshed(table, policy.logits)
    assert torch.allclose(same.log_prob, table.log_prob) and torch.allclose(same.cov, table.cov)
    moved = policy.logits + torch.randn(policy.logits.shape, dtype=policy.logits.dtype)
    now = refreshed(table, moved)
    # By hand: the moved policy's log-prob of each atom's action, the rollout's weights.
    lp = torch.log_softmax(moved, dim=-1).reshape(-1)[table.atom]
    w, a = table.weight, table.advantage
    cov = (lp - (w * lp).sum()) * (a - (w * a).sum())
    assert torch.allclose(now.log_prob, lp) and torch.allclose(now.cov, cov)
    assert torch.equal(now.weight, table.weight)
    assert torch.allclose(token_table(policy, rewards, current_logits=moved).cov, cov)


def test_unclipped_natural_updates_on_one_rollout_add_up_to_one_larger_step():
    # Without selection or clip the importance ratio cancels in the natural gradient, so U
    # updates on one rollout's batch equal one update of U times the step size.
    policy, rewards = fork_profile(2, 4, 3, 1, 0.05, 0.6, seed=2)
    four = expected_run(policy, rewards, "none", 0.0, 3, 0.05, updates_per_rollout=4)
    one = expected_run(policy, rewards, "none", 0.0, 3, 0.2)
    assert four["entropy"] == pytest.approx(one["entropy"], rel=1e-9)
    # The clip holds tokens whose ratio has moved past 1 + eps: the entropy falls more slowly.
    clipped = expected_run(
        policy, rewards, "none", 0.0, 3, 0.05, updates_per_rollout=4, clip_ratio=0.02
    )
    assert clipped["entropy"][-1] > one["entropy"][-1]
    with pytest.raises(ValueError, match="updates_per_rollout"):
        expected_run(policy, rewards, "none", 0.0, 1, 0.1, updates_per_rollout=0)


def test_stop_below_ends_the_run_at_the_first_rollout_under_the_fraction():
    policy, rewards = fork_profile(2, 4, 3, 1, 0.05, 0.6, seed=2)
    full = expected_run(policy, rewards, "none", 0.0, 60, 0.2)
    stopped = expected_run(policy, rewards, "none", 0.0, 60, 0.2, stop_below=0.5)
    first = next(i for i, h in enumerate(full["entropy"]) if h < 0.5 * full["entropy"][0])
    assert len(stopped["entropy"]) == first + 1 and stopped["removed"][-1] == 0.0
    assert stopped["entropy"] == pytest.approx(full["entropy"][: first + 1])
