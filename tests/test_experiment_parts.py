"""Pieces of the sequence experiments on hand-made inputs: probes, controller, law summary,
prefix-policy identity run, method configs."""

import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from toy_entropy.algorithms.losses import PolicyLossConfig
from toy_entropy.experiments.entropy_targets import EntropyController, tracking_error
from toy_entropy.experiments.identity import IdentityConfig, prefix_run, target_rewards
from toy_entropy.experiments.law import LawConfig, run_law, spread_z
from toy_entropy.experiments.methods import METHODS, MethodsConfig, family, method_config
from toy_entropy.experiments.probes import (
    ClipHigherAdmitted,
    covariance_by_accuracy,
    sequence_covariance,
    token_covariance_mean,
)
from toy_entropy.experiments.sweeps import RunResult
from toy_entropy.models.prefix_policy import PrefixPolicy
from toy_entropy.training.config import ConfigError


def _batch():
    """Two prompt groups of two responses, two positions; the last position of row 3 is pad.

    Valid log-probs -1, -1, -3, -1, -1, -1, -1 (mean -9/7); advantages 1, 1, -1, -1, 0, 0, 0.
    """
    mask = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0]], dtype=torch.bool)
    return SimpleNamespace(
        mask=mask,
        old_log_probs=torch.tensor([[-1.0, -1.0], [-3.0, -1.0], [-1.0, -1.0], [-1.0, 0.0]]),
        advantages=torch.tensor([1.0, -1.0, 0.0, 0.0])[:, None].expand(4, 2),
        rewards=torch.tensor([1.0, 0.0, 1.0, 1.0]),
    )


def test_covariance_by_accuracy_buckets_groups():
    trainer = SimpleNamespace(config=SimpleNamespace(num_prompts=2, num_generations=2))
    metrics = covariance_by_accuracy(trainer, _batch())
    # group 0 (accuracy 1/2, medium): token covariances 2/7, 2/7, 12/7, -2/7 -> mean 1/2;
    # group 1 is all correct and belongs to no bucket.
    assert metrics["cov_by_accuracy/medium"] == pytest.approx(0.5)
    assert metrics["cov_by_accuracy/medium_groups"] == 1
    assert math.isnan(metrics["cov_by_accuracy/hard"])
    assert math.isnan(metrics["cov_by_accuracy/easy"])
    assert metrics["cov_by_accuracy/easy_groups"] == 0


def test_sequence_and_token_covariance():
    batch = _batch()
    # per-response mean log-probs -1, -2 | -1, -1; group 0: Cov((.5, -.5), (1, -1)) = 0.5,
    # group 1: advantages are equal -> 0; mean over prompts 0.25
    sequence = sequence_covariance(batch.old_log_probs, batch.advantages, batch.mask, 2)
    assert float(sequence) == pytest.approx(0.25)
    assert float(token_covariance_mean(batch)) == pytest.approx(2 / 7)


def test_clip_higher_probe_finds_the_admitted_tokens():
    # current probabilities of the sampled token 0 and the rollout's
    current = torch.tensor([[0.2, 0.8], [0.8, 0.2]])
    old = torch.tensor([[0.2 / 1.25, 0.8 / 1.1], [0.8 / 1.25, 0.2]])
    logits = torch.stack([current.log(), (1 - current).log()], dim=-1)  # (2, 2, V=2)
    trainer = SimpleNamespace(
        loss_config=PolicyLossConfig(clip_ratio_low=0.2, clip_ratio_high=0.28),
        model=None,
        response_logits=lambda model, tokens, attention: logits[: tokens.shape[0]],
    )
    batch = SimpleNamespace(
        mask=torch.ones(2, 2, dtype=torch.bool),
        tokens=torch.zeros(2, 3, dtype=torch.long),
        attention=torch.ones(2, 3, dtype=torch.bool),
        responses=torch.zeros(2, 2, dtype=torch.long),
        old_log_probs=old.log(),
        advantages=torch.tensor([[1.0, 1.0], [-1.0, -1.0]]),
    )
    probe = ClipHigherAdmitted()
    rows = torch.arange(2)
    totals: dict = {}
    for _ in range(2):  # two updates of one step add up
        for name, value in probe.before_update(trainer, batch, rows).items():
            totals[name] = totals.get(name, 0) + value
    metrics = probe.finish(totals)
    # only (row 0, token 0) has A > 0 and ratio 1.25 in (1.2, 1.28]; its covariance is
    # (log .2 - (log .2 + log .8) / 2) * 1 = -ln(4) / 2
    assert metrics["clip_higher/admitted_count"] == 2
    assert metrics["clip_higher/admitted_cov_mean"] == pytest.approx(-math.log(4) / 2)
    assert metrics["clip_higher/admitted_frac"] == pytest.approx(0.25)
    assert metrics["clip_higher/cov_mean"] == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(
        probe.finish({k: 0 * v for k, v in totals.items()})["clip_higher/admitted_cov_mean"]
    )


def test_entropy_controller_is_integral_control_in_log_space():
    controller = EntropyController(target=0.2, gain=0.5)
    assert controller.next_value(0.02, entropy=0.1) == pytest.approx(0.02 * math.exp(0.25))
    assert controller.next_value(0.02, entropy=0.4) == pytest.approx(0.02 * math.exp(-0.5))
    assert controller.next_value(0.49, entropy=0.0) == 0.5  # clamped at high
    trainer = SimpleNamespace(loss_config=PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.02))
    batch = SimpleNamespace(
        token_entropy=torch.full((2, 3), 0.1), mask=torch.ones(2, 3, dtype=torch.bool)
    )
    metrics = controller(trainer, batch)
    assert trainer.loss_config.kl_cov_ratio == pytest.approx(0.02 * math.exp(0.25))
    assert metrics["control/error"] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="knob"):
        EntropyController(target=0.2, knob="entropy_coeff")


def test_tracking_error_skips_the_settling_half():
    assert tracking_error(np.array([1.0, 1.0, 0.2, 0.3]), 0.25) == pytest.approx(0.2)


def _result(rows):
    return RunResult("v", 0, rows, {}, [], 1, 0.0)


def test_law_summary_recovers_an_exact_law():
    steps = np.arange(1, 101)
    entropy = 1.5 * np.exp(-steps / 20)
    reward = -0.3 * np.exp(entropy) + 1.2
    rows = [{"step": int(s), "entropy": h, "reward": r} for s, h, r in zip(steps, entropy, reward)]
    law = run_law(_result(rows), LawConfig(smoothing=1))
    assert law["a"] == pytest.approx(0.3) and law["b"] == pytest.approx(1.2)
    assert law["r2"] == pytest.approx(1.0)
    assert law["early_a"] == pytest.approx(0.3) and law["ceiling"] == pytest.approx(0.9)
    assert law["rmse"] < 1e-9 and law["rmse_smoothed"] < 1e-9 and abs(law["final_error"]) < 1e-9


def test_spread_z_is_a_difference_in_standard_errors():
    # means 1 and 2, pooled std 0.5, n = 2 seeds: 1 / (0.5 * sqrt(2 / 2)) = 2
    assert spread_z([1.0, 2.0, 1.5], [0.5, 0.5, 0.5], 2) == pytest.approx(2.0)
    assert spread_z([1.0, 1.0], [0.0, 0.0], 3) == 0.0


def test_prefix_identity_run_splits_the_exact_change():
    config = IdentityConfig(
        prefix_prompts=3, prefix_vocab=3, prefix_length=3, prefix_steps=6, prefix_step_size=1.0
    )
    rows = prefix_run(config, seed=0, device=torch.device("cpu"))
    assert len(rows) == 6
    for row in rows:
        parts = row["identity/per_state_dH"] + row["identity/distribution_shift_dH"]
        assert row["identity/actual_dH"] == pytest.approx(parts, abs=1e-12)
        assert 0.0 <= row["reward"] <= 1.0
    # a small step: the first-order term predicts the per-state part closely
    per_state = np.array([r["identity/per_state_dH"] for r in rows])
    first_order = np.array([r["identity/predicted_dH"] for r in rows])
    assert np.allclose(first_order, per_state, rtol=0.1, atol=1e-6)


def test_target_rewards_mark_one_response_per_prompt():
    policy = PrefixPolicy(2, 3, 2, init_std=1.0, generator=torch.Generator().manual_seed(0))
    rewards = target_rewards(policy, rank=2)
    assert rewards.sum(dim=1).tolist() == [1.0, 1.0]
    probs = policy.response_probs().detach()
    second = probs.sort(dim=1, descending=True).values[:, 1]
    assert torch.allclose((probs * rewards).sum(dim=1), second)


def test_method_configs_share_the_budget():
    config = MethodsConfig(num_seeds=2)
    configs = {name: method_config(config, name) for name in METHODS}
    assert {c.total_steps for c in configs.values()} == {config.train.total_steps}
    assert all(replace(c, loss=config.train.loss) == config.train for c in configs.values())
    loss = {name: c.loss for name, c in configs.items()}
    assert loss["clip-cov-1e-2"].loss_mode == "clip_cov"
    assert loss["clip-cov-1e-2"].clip_ratio_low == 1.0  # the paper's eps = 1 for Clip-Cov
    assert loss["kl-cov-1e-2-b5"].ppo_kl_coef == 5.0
    assert loss["grpo"].clip_ratio_high == 0.2 and loss["clip-higher"].clip_ratio_high == 0.28
    assert [family(m) for m in ("grpo", "entropy-1e-3", "kl-cov-1e-2-b5")] == [
        "grpo",
        "entropy",
        "kl-cov",
    ]
    with pytest.raises(ConfigError, match="methods"):
        MethodsConfig(methods=("grpo", "ppo-max"))
