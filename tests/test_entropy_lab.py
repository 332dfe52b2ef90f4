"""The entropy lab's exact experiments: known answers of their pieces and tiny end-to-end runs."""

import json

import pytest
import torch

from toy_entropy.algorithms.exact_ppo import (
    clip_config,
    ppo_updates,
    rollout_batch,
    sampled_responses,
)
from toy_entropy.experiments.cli import main
from toy_entropy.experiments.predictors import PredictorsConfig, token_predictions
from toy_entropy.experiments.sample_polarity import method_weights, polarity_task
from toy_entropy.models.prefix_policy import PrefixPolicy


def _run(name: str, overrides: list[str], out) -> dict:
    argv = ["run", name, "--quiet", "--out", str(out)]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 0
    return json.loads((out / "summary.json").read_text())


def test_first_ppo_update_is_the_exact_policy_gradient():
    generator = torch.Generator().manual_seed(0)
    policy = PrefixPolicy(2, 3, 2, init_std=1.0, generator=generator)
    advantages = torch.randn(2, policy.num_responses, generator=generator, dtype=torch.float64)
    batch = rollout_batch(policy, advantages)
    new = ppo_updates(policy, batch, clip_config(0.2, 0.2), 0.5, 1)[0]
    expected = policy.expected_update(advantages, 0.5, "pg")
    assert torch.allclose(new - policy.logits, expected, atol=1e-14)
    # PSR (weights 1 / 0) and NSR (0 / 1) of +1 / -1 rewards: the same exact step.
    rewards = 2.0 * (advantages > 0).to(torch.float64) - 1.0
    steps = [
        ppo_updates(policy, rollout_batch(policy, rewards), clip_config(None, None, **w), 1.0, 1)
        for w in (dict(negative_sample_weight=0.0), dict(positive_sample_weight=0.0))
    ]
    assert torch.allclose(steps[0][0], steps[1][0], atol=1e-14)


def test_sampled_batch_weights_are_counts_over_g_p():
    policy = PrefixPolicy(3, 3, 2, init_std=1.0, generator=torch.Generator().manual_seed(1))
    index, weights = sampled_responses(policy, 4, torch.Generator().manual_seed(2))
    assert index.shape == (3, 4)
    assert weights.sum().item() == pytest.approx(1.0)
    assert torch.allclose(weights.sum(1), torch.full((3,), 1 / 3, dtype=torch.float64))
    assert torch.allclose(weights * 12, (weights * 12).round())


def test_method_weights():
    assert method_weights("psr") == (1.0, 0.0) and method_weights("nsr") == (0.0, 1.0)
    assert method_weights("w-reinforce-0.1") == (0.1, 1.0)
    with pytest.raises(ValueError, match="unknown method"):
        method_weights("ppo")


def test_s_star_is_exact_to_first_order_without_distribution_shift():
    """One-token responses (only the root state): S* with the real step has no neglected
    state-distribution shift, so its error vanishes with the step; on-policy the clip-aware
    variants equal the unaware ones."""
    config = PredictorsConfig(num_prompts=3, vocab_size=4, length=1, num_correct=1)
    policy, rewards = polarity_task(config.task(), 0)
    logits = policy.logits.detach()
    predicted, exact, mass, _ = token_predictions(policy, rewards, logits, 0.2, 1e-5)
    relative = ((predicted["s_star_clip"] - exact).abs().sum() / exact.abs().sum()).item()
    assert relative < 1e-3
    assert torch.equal(predicted["s_star"], predicted["s_star_clip"])
    assert torch.equal(predicted["cov"], predicted["cov_clip"])
    assert mass.sum().item() == pytest.approx(1.0)


def test_clip_asymmetry_tiny_run(tmp_path):
    out = tmp_path / "ca"
    tiny = ["vocab_size=3", "length=1", "eps_lows=0.2", "eps_highs=0.2", "updates=1,3",
            "num_seeds=2"]  # fmt: skip
    summary = _run("clip-asymmetry", tiny, out)
    claims = {c["id"]: c for c in summary["claims"]}
    assert claims["clip_asymmetry.one_update.clip_inactive"]["holds"]
    assert claims["clip_asymmetry.one_update.first_order_zero"]["holds"]
    cells = summary["headline"]["cells"]
    assert len(cells) == 2 * 2 * 2  # updates x (0.2, off) x (0.2, off)
    for cell in cells:
        assert cell["kl"] == pytest.approx(1e-3, rel=2e-3)  # the matched per-update KL
    effect = claims["clip_asymmetry.clip_low_raises"]
    assert effect["holds"] == (effect["measured"] > 0)
    assert (out / "metrics.jsonl").read_text().count("\n") == 2


def test_sample_polarity_tiny_run(tmp_path):
    tiny = ["num_prompts=2", "vocab_size=3", "length=2", "steps=3", "num_seeds=2",
            "lambdas=0.1", "max_k=8", "group_size=4", "ablation_updates=2"]  # fmt: skip
    summary = _run("sample-polarity", tiny, tmp_path / "sp")
    headline = summary["headline"]
    assert len(headline["start"]["pass_curve_mean"]) == 8
    assert set(headline["methods"]) == {"psr", "nsr", "grpo", "w-reinforce-0.1"}
    claims = {c["id"]: c for c in summary["claims"]}
    assert claims["sample_polarity.exact.psr_equals_nsr"]["holds"]
    nsr = headline["methods"]["nsr"]
    assert len(nsr["crossover_k"]) == 2 and len(nsr["final_entropy"]["seeds"]) == 2
    assert len(headline["ablation_entropy_ratio"]) == 3 * 4
    rows = (tmp_path / "sp" / "nsr" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 4 and "exact/pass_at_256" in json.loads(rows[0])


def test_predictors_tiny_run(tmp_path):
    tiny = ["num_prompts=2", "vocab_size=3", "length=2", "num_seeds=2", "off_policy_update=3"]
    summary = _run("predictors", tiny, tmp_path / "pr")
    on = summary["headline"]["on_policy"]["predictors"]
    assert on["cov"]["correlation"] == on["cov_clip"]["correlation"]  # no clip on-policy
    for board in (on, summary["headline"]["off_policy"]["predictors"]):
        for entry in board.values():
            assert 0 <= entry["sign_agreement"]["mean"] <= 1
            assert 0 <= entry["captured_top_2%"]["mean"] <= 1
    assert len(summary["claims"]) == 4
