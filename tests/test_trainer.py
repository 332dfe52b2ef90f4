"""The GRPO trainer end to end: learning, logged tags, checkpoints, micro-batch invariance."""

import copy
import json

import pytest
import torch
from grad_capture import first_step_gradients
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from toy_entropy.envs.sequence import SequenceVectorEnv
from toy_entropy.experiments import RunContext
from toy_entropy.experiments.training_runs import train_one_run
from toy_entropy.training.checkpoint import latest_checkpoint, load_checkpoint
from toy_entropy.training.config import replace_paths
from toy_entropy.training.trainer import TrainConfig, Trainer

FAST = {"warmstart.steps": 150, "total_steps": 12, "eval_every": 6, "eval_prompts": 32,
        "probe_states": 16}  # fmt: skip


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TOY_ENTROPY_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_short_run_learns_and_collapses_entropy(tmp_path):
    config = replace_paths(TrainConfig(), FAST)
    context = RunContext(tmp_path, seed=0, device=torch.device("cpu"), show_progress=False)
    trainer = train_one_run(config, context, seed=0, sub_run=None)
    context.close()
    records = [r.metrics for r in trainer.history]
    assert len(records) == 12
    assert records[-1]["entropy"] < 0.7 * records[0]["entropy"]
    key = "eval/mean_at_8"
    assert records[-1][key] > trainer.initial_eval[key]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(13))  # step 0 = initial evaluation
    documented = {
        "entropy",
        "reward",
        "entropy/token_mean",
        "entropy/sampled_neg_log_prob",
        "rollout/response_length",
        "identity/actual_dH",
        "identity/predicted_dH",
        "optim/grad_norm",
        "guard/nonfinite",
    }
    assert documented <= set(rows[1])
    assert not any(name.startswith("perf/") for name in rows[1])  # wall clock: TensorBoard only
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    scalars = set(tags["scalars"])
    assert {"charts/entropy", "charts/reward", "identity/predicted_dH"} <= scalars
    assert "perf/rollout_tokens_per_s" in scalars
    assert "covariance/token_covariance" in tags["histograms"]
    assert "identity/scatter_actual_vs_predicted" in tags["images"]
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    checkpoint = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))
    assert checkpoint["step"] == 12 and "optimizer" in checkpoint and "model" in checkpoint


def test_identity_prediction_tracks_actual_change():
    trainer = Trainer(replace_paths(TrainConfig(), FAST), seed=1, device="cpu")
    for _ in range(6):
        trainer.train_step()
    predicted, actual = zip(*trainer.identity_points)
    predicted, actual = torch.tensor(predicted), torch.tensor(actual)
    assert torch.corrcoef(torch.stack([predicted, actual]))[0, 1] > 0.8


def test_micro_batches_give_the_same_update():
    config = {**FAST, "loss.loss_mode": "clip_cov", "loss.clip_cov_ratio": 0.05,
              "loss.clip_cov_lb": -1.0, "total_steps": 1}  # fmt: skip
    whole = Trainer(replace_paths(TrainConfig(), config), seed=2, device="cpu")
    split = Trainer(replace_paths(TrainConfig(), {**config, "micro_batch_size": 32}), 2, "cpu")
    grads = [first_step_gradients(whole), first_step_gradients(split)]
    one, two = whole.train_step(), split.train_step()
    assert one["loss/total"] == pytest.approx(two["loss/total"], rel=1e-5, abs=1e-8)
    # Micro-batches change only the summation order (see tests/grad_capture.py).
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5 * float(b.abs().max()), rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_generations": 1}, "num_generations"),
        ({"num_mini_batches": 3}, "num_mini_batches"),
        ({"micro_batch_size": 48}, "micro_batch_size"),
        ({"task": "chess"}, "task"),
        ({"loss.loss_mode": "ppo2"}, "loss_mode"),
        ({"loss.clip_cov_lb": 5.0, "loss.clip_cov_ub": 1.0}, "clip_cov_lb"),
        ({"warmstart.noise": 1.5}, "warmstart.noise"),
    ],
)
def test_bad_train_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        replace_paths(TrainConfig(), kwargs)


def test_every_logged_key_is_in_the_metric_table():
    from pathlib import Path

    from toy_entropy.runs.metrics_table import find_metric, glossary_markdown

    keys = set()
    modes = [
        {"loss.loss_mode": "clip_cov", "loss.clip_cov_ratio": 0.05, "loss.clip_cov_lb": -1.0},
        {"loss.loss_mode": "kl_cov", "loss.kl_loss_coef": 0.01, "loss.clip_ratio_high": 0.28},
        {"loss.top_entropy_quantile": 0.2, "loss.use_adaptive_entropy": True},
    ]
    for mode in modes:
        config = {**FAST, **mode, "total_steps": 1, "eval_every": 1}
        trainer = Trainer(replace_paths(TrainConfig(), config), 0, "cpu")
        keys |= set(trainer.train_step()) | set(trainer.initial_eval or trainer.evaluate())
    assert not [key for key in sorted(keys) if find_metric(key) is None]
    assert find_metric("no/such_metric") is None
    glossary = Path(__file__).parents[1] / "docs" / "metrics.md"
    assert glossary.read_text() == glossary_markdown()  # regenerate it when the table changes


def test_entropy_lab_knobs_act_in_the_trainer(tmp_path):
    """top_entropy_quantile keeps the policy gradient of the top 20% of tokens by entropy; the
    adaptive coefficient moves by entropy_coef_delta per update and is checkpointed."""
    config = {**FAST, "total_steps": 2, "num_mini_batches": 2, "loss.top_entropy_quantile": 0.2,
              "loss.use_adaptive_entropy": True, "loss.entropy_target": 10.0,
              "loss.entropy_coef_delta": 0.01}  # fmt: skip
    trainer = Trainer(replace_paths(TrainConfig(), config), 0, "cpu", checkpoint_dir=tmp_path)
    first = trainer.train_step()
    assert 0.15 < first["select/entropy_kept_frac"] <= 0.25
    # entropy is far below the 10-nat target: +0.01 per update, 2 updates per step; the
    # logged coefficient is the mean over the step's updates (0 and 0.01)
    assert first["loss/entropy_coef"] == pytest.approx(0.005)
    assert float(trainer.entropy_coef.value) == pytest.approx(0.02)
    trainer.save_checkpoint()
    resumed = Trainer(replace_paths(TrainConfig(), config), 0, "cpu", checkpoint_dir=tmp_path)
    resumed.load_state(load_checkpoint(latest_checkpoint(tmp_path)))
    assert float(resumed.entropy_coef.value) == pytest.approx(0.02)
    again, ours = resumed.train_step(), trainer.train_step()
    assert {k: v for k, v in again.items() if not k.startswith("perf/")} == {
        k: v for k, v in ours.items() if not k.startswith("perf/")
    }


def test_a_rollout_hooks_loss_config_survives_a_resume(tmp_path):
    from dataclasses import replace

    trainer = Trainer(replace_paths(TrainConfig(), FAST), 0, "cpu", checkpoint_dir=tmp_path)
    trainer.loss_config = replace(trainer.loss_config, clip_ratio_high=0.28)  # as a controller
    trainer.train_step()
    trainer.save_checkpoint()
    resumed = Trainer(replace_paths(TrainConfig(), FAST), 0, "cpu", checkpoint_dir=tmp_path)
    resumed.load_state(load_checkpoint(latest_checkpoint(tmp_path)))
    assert resumed.loss_config.clip_ratio_high == 0.28


def test_micro_batch_selection_scope_selects_per_micro_batch():
    """KL-Cov k = 2e-3 over ~700 tokens selects max(1, floor(k N)) = 1 token per batch: once
    over the mini-batch, once in each of the 8 micro-batches (verl's per-micro-batch KL-Cov)."""
    config = {**FAST, "total_steps": 1, "micro_batch_size": 16, "loss.loss_mode": "kl_cov",
              "loss.kl_cov_ratio": 2e-3}  # fmt: skip
    fractions = {}
    for scope in ("mini_batch", "micro_batch"):
        changes = {**config, "selection_scope": scope}
        trainer = Trainer(replace_paths(TrainConfig(), changes), 0, "cpu")
        fractions[scope] = trainer.train_step()["select/frac"]
    assert fractions["micro_batch"] == pytest.approx(8 * fractions["mini_batch"])
    with pytest.raises(ValueError, match="selection_scope"):
        TrainConfig(selection_scope="rank")


def test_rollout_goes_through_the_env_and_keeps_the_prompt_stream():
    trainer = Trainer(replace_paths(TrainConfig(), FAST), seed=3, device="cpu")
    assert isinstance(trainer.env, SequenceVectorEnv) and trainer.env.action_mode == "response"
    assert trainer.env.np_random is trainer.rng  # checkpointed with the trainer's state
    stream = copy.deepcopy(trainer.rng)
    expected = trainer.task.sample_prompts(16, "train", stream)  # the trainer's former draw
    rollout = trainer.rollout()
    assert trainer.rng.bit_generator.state == stream.bit_generator.state
    assert torch.equal(rollout.prompts.tokens, expected.tokens)
    assert rollout.prompt_index.tolist() == [p for p in range(16) for _ in range(8)]
    rewards = trainer.task.score(
        expected, rollout.prompt_index, rollout.responses, rollout.response_mask
    )
    assert torch.equal(rollout.rewards, rewards) and 0 < rewards.mean() < 1


def test_evaluation_logs_a_sampled_pass_at_k_curve():
    trainer = Trainer(replace_paths(TrainConfig(), FAST), 0, "cpu")
    metrics = trainer.evaluate()
    curve = [metrics[f"eval/pass_at_{j}"] for j in (1, 2, 4, 8)]
    assert curve == sorted(curve)  # pass@k never falls with k
    # pass@1 from 8 samples per prompt is the mean accuracy of the samples
    assert metrics["eval/pass_at_1"] == pytest.approx(metrics["eval/mean_at_8"])
