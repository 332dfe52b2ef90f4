"""questions-training end to end on tiny settings, and its surge statistic with known answers."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from toy_entropy.experiments.cli import main
from toy_entropy.experiments.questions_training import (
    CLIP_HIGHER_METHODS,
    QuestionsTrainingConfig,
    largest_surge,
    run_specs,
)
from toy_entropy.training.config import ConfigError

TINY = [
    "num_seeds=2", "train.total_steps=2", "train.num_prompts=4", "fork.num_forks=1",
    "fork.segment_length=2", "fork.vocab_size=64", "train.warmstart.steps=60",
    "train.eval_every=2", "train.eval_prompts=8", "workers=1", "fork.fork_noise=0.5",
    "updates_per_rollout=1,2",
]  # fmt: skip


def test_largest_surge_of_known_curves():
    assert largest_surge(np.array([1.0, 0.8, 0.5, 0.2])) == 0.0  # falls all the way
    # min so far 0.2 at step 2, then 0.6: a rise of 0.4 on a start of 2.0
    assert largest_surge(np.array([2.0, 1.0, 0.2, 0.6, 0.4])) == pytest.approx(0.2)
    assert np.isnan(largest_surge(np.array([0.5])))


def test_config_checks_its_fields():
    with pytest.raises(ConfigError, match="parts"):
        QuestionsTrainingConfig(parts=("band",))
    with pytest.raises(ConfigError, match="update_methods"):
        QuestionsTrainingConfig(update_methods=("dapo",))
    with pytest.raises(ValueError, match="updates_per_rollout"):
        QuestionsTrainingConfig(updates_per_rollout=(8,))


def test_tiny_run_answers_both_questions(tmp_path, monkeypatch):
    monkeypatch.setenv("TOY_ENTROPY_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path / "run"
    argv = ["run", "questions-training", "--quiet", "--out", str(out)]
    for item in TINY:
        argv += ["--set", item]
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((out / "summary.json").read_text())
    headline = summary["headline"]
    variants = set(headline["variants"])
    assert set(CLIP_HIGHER_METHODS) <= variants
    assert {"grpo@1", "clip-cov-2e-4@2", "kl-cov-2e-3@1", "kl-cov-2e-3@2"} <= variants
    assert set(headline["updates"]["kl-cov-2e-3"]) == {"1", "2"}  # JSON keys
    ids = {claim["id"] for claim in summary["claims"]}
    assert {
        "questions.clip_higher.combined_entropy_above_either",
        "questions.updates.clip_cov_entropy_falls_with_updates",
        "questions.updates.kl_cov_surges_with_many_updates",
    } <= ids
    assert (out / "kl-cov-2e-3@2" / "seed1" / "metrics.jsonl").exists()
    scope = headline["scope"]
    assert scope["touched_ratio"] == pytest.approx(
        scope["touched_micro_batch"] / scope["touched_mini_batch"]
    )
    assert scope["touched_ratio"] > 1  # one token per micro-batch against one per batch


def test_update_variants_differ_in_num_mini_batches_only():
    config = QuestionsTrainingConfig(parts=("updates",), updates_per_rollout=(1, 16))
    specs = {(s.variant, s.seed): s.config for s in run_specs(config, seed=5)}
    one, many = specs[("kl-cov-2e-3@1", 5)], specs[("kl-cov-2e-3@16", 6)]
    assert (one.num_mini_batches, many.num_mini_batches) == (1, 16)
    assert replace(many, num_mini_batches=1) == one
    assert one.warmstart.seed == 5 and one.loss.loss_mode == "kl_cov"  # one shared warm start
