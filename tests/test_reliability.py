"""Reliability: a catalogue of bad inputs, the non-finite guard, kill-and-resume, determinism."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import toy_entropy.envs  # noqa: F401
from toy_entropy.algorithms.advantages import compute_advantages
from toy_entropy.algorithms.losses import PolicyLossConfig, policy_loss
from toy_entropy.envs.bandit_problem import make_bandit_problem
from toy_entropy.envs.sequence import make_task
from toy_entropy.experiments.cli import main
from toy_entropy.theory.entropy import entropy_from_logits
from toy_entropy.theory.lawfit import fit_entropy_reward_law
from toy_entropy.training.checkpoint import load_checkpoint
from toy_entropy.training.config import ConfigError, replace_paths
from toy_entropy.training.trainer import NonFiniteError, TrainConfig, Trainer

FAST = {"warmstart.steps": 100, "total_steps": 6, "eval_every": 3, "eval_prompts": 16,
        "probe_states": 8}  # fmt: skip
QUICK_RUN = ["run", "sanity", "--quick", "--quiet", "--set", "train.total_steps=12"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TOY_ENTROPY_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


# ---- the CLI: exit code 2, one line naming the problem, nothing written -------------------

CLI_CASES = [
    (["run", "no-such-experiment"], "unknown experiment"),
    (["run", "sanity", "--set", "learnign_rate=1"], "did you mean train.learning_rate"),
    (["run", "methods", "--set", "temperature=0.8"], "did you mean train.temperature?"),
    (["run", "methods", "--set", "train.loss.clip_cov_ratio=2"], "clip_cov_ratio"),
    (["run", "sanity", "--set", "train.total_steps=ten"], "total_steps"),
    (["run", "sanity", "--set", "train.total_steps=2.5"], "total_steps"),
    (["run", "sanity", "--set", "train.learning_rate=-1"], "learning_rate"),
    (["run", "sanity", "--set", "train.num_generations=1"], "num_generations"),
    (["run", "sanity", "--set", "train.num_mini_batches=3"], "num_mini_batches"),
    (["run", "sanity", "--set", "train.micro_batch_size=48"], "micro_batch_size"),
    (["run", "sanity", "--set", "train.loss.loss_mode=ppo2"], "loss_mode"),
    (["run", "sanity", "--set", "train.loss.clip_cov_lb=6"], "clip_cov_lb"),
    (["run", "sanity", "--set", "train.loss.clip_ratio_low=1.5"], "clip_ratio_low"),
    (["run", "sanity", "--set", "train.task=chess"], "task"),
    (["run", "sanity", "--set", "train.filter_groups=maybe"], "filter_groups"),
    (["run", "sanity", "--set", "train.nonfinite_policy=ignore"], "nonfinite_policy"),
    (["run", "sanity", "--set", "total_steps"], "key=value"),
    (["run", "bandit-identity", "--set", "priors=flat"], "priors"),
    (["run", "sanity", "--device", "tpu"], "--device"),
]


@pytest.mark.parametrize("argv, message", CLI_CASES)
def test_cli_bad_input(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_cuda_without_cuda(tmp_path, capsys):
    assert main(["run", "sanity", "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cli_out_is_a_file_or_under_a_file(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    assert main(["run", "bandit-identity", "--out", str(afile)]) == 2
    assert main(["run", "bandit-identity", "--out", str(afile / "run")]) == 2
    err = capsys.readouterr().err
    assert "not a directory" in err and "not writable" in err
    assert afile.read_text() == "keep"


def test_cli_resume_errors(tmp_path, capsys):
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    assert main(["run", "sanity", "--resume", str(not_a_run)]) == 2
    assert "no config.json" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    record = {"experiment": "bandit-collapse", "seed": 0, "config": {}}
    (other / "config.json").write_text(json.dumps({**record, "toy_entropy_version": "0.1.0"}))
    assert main(["run", "sanity", "--resume", str(other)]) == 2
    assert "not 'sanity'" in capsys.readouterr().err


def test_cli_resume_with_corrupt_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*QUICK_RUN, "--set", "train.checkpoint_every=3", "--out", str(out)]) == 0
    (out / "summary.json").unlink()  # pretend it was killed
    for checkpoint in (out / "checkpoints").glob("step_*.pt"):
        checkpoint.write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert main(["run", "sanity", "--resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and "step_" in err


# ---- the library and the environments ---------------------------------------------------


def _loss(mask=None, old_shape=(2, 3)):
    zeros = torch.zeros(2, 3)
    mask = torch.ones(2, 3) if mask is None else mask
    return policy_loss(PolicyLossConfig(), zeros, torch.zeros(old_shape), zeros, mask)


LIBRARY_CASES = [
    (lambda: TrainConfig(micro_batch_size=48), ConfigError, "micro_batch_size"),
    (lambda: TrainConfig(model_size="gpt-5"), ConfigError, "model_size"),
    (lambda: PolicyLossConfig(clip_cov_ratio=2.0), ValueError, "clip_cov_ratio"),
    (lambda: PolicyLossConfig(kl_cov_ratio=-0.1), ValueError, "kl_cov_ratio"),
    (lambda: PolicyLossConfig(loss_agg_mode="sum"), ValueError, "loss_agg_mode"),
    (lambda: PolicyLossConfig(kl_loss_type="k9"), ValueError, "kl_loss_type"),
    (lambda: _loss(mask=torch.zeros(2, 3)), ValueError, "no valid token"),
    (lambda: _loss(old_shape=(2, 4)), ValueError, "old_log_probs shape"),
    (lambda: compute_advantages("ppo", torch.zeros(2, 4)), ValueError, "estimator"),
    (lambda: entropy_from_logits(torch.tensor(0.5)), ValueError, "scalar"),
    (lambda: fit_entropy_reward_law([1.0, np.nan], [0.0, 1.0]), ValueError, "finite"),
    (lambda: make_task("chess"), ValueError, "chess"),
    (lambda: make_bandit_problem(num_arms=1), ValueError, "num_arms"),
    (lambda: gym.make("ToyEntropy/Nope-v0"), gym.error.Error, "Nope"),
]


@pytest.mark.parametrize("call, error, message", LIBRARY_CASES)
def test_library_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("env_id", ["ToyEntropy/Bandit-v0", "ToyEntropy/Reverse-v0"])
def test_env_action_out_of_range(env_id):
    env = gym.make(env_id).unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"Discrete\("):
        env.step(10_000)


def test_corrupt_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "step_000001.pt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="step_000001.pt"):
        load_checkpoint(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_catalogue_has_at_least_25_bad_inputs():
    assert len(CLI_CASES) + len(LIBRARY_CASES) + 6 >= 25


# ---- the non-finite guard ---------------------------------------------------------------


def _poison_rewards_at(trainer: Trainer, step: int) -> None:
    score = trainer.task.score

    def poisoned(*args, **kwargs):
        rewards = score(*args, **kwargs)
        if trainer.step + 1 == step and rewards.shape[0] == trainer.config.num_prompts * 8:
            rewards = rewards.clone()
            rewards[0] = float("nan")
        return rewards

    trainer.task.score = poisoned


def test_nan_guard_skip_drops_the_update_and_counts_it():
    trainer = Trainer(replace_paths(TrainConfig(), FAST), seed=0, device="cpu")
    trainer.train_step()
    before = [p.detach().clone() for p in trainer.model.parameters()]
    _poison_rewards_at(trainer, step=2)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        metrics = trainer.train_step()
    assert metrics["guard/nonfinite"] == 1.0 and metrics["guard/skipped_updates"] == 1.0
    for old, new in zip(before, trainer.model.parameters()):
        assert torch.equal(old, new)  # the poisoned update was dropped
    metrics = trainer.train_step()
    assert metrics["guard/nonfinite"] == 0.0 and np.isfinite(metrics["loss/total"])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_nan_guard_stop_checkpoints_the_last_good_state(tmp_path):
    config = replace_paths(TrainConfig(), {**FAST, "nonfinite_policy": "stop"})
    trainer = Trainer(config, seed=0, device="cpu", checkpoint_dir=tmp_path)
    trainer.train_step()
    good = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    _poison_rewards_at(trainer, step=2)
    with pytest.raises(NonFiniteError, match="step 2"):
        trainer.train_step()
    state = load_checkpoint(tmp_path / "step_000001.pt")
    assert state["step"] == 1
    for name, value in good.items():
        assert torch.equal(state["model"][name], value)


# ---- resume and determinism across processes --------------------------------------------


def _cli(args, cache: Path, **kwargs):
    # One thread per process: the runs stay fast on a 2-core machine and stay bit-identical.
    env = {**os.environ, "TOY_ENTROPY_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "toy_entropy.experiments.cli", *args], env=env, **kwargs
    )


def _rows(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


def test_same_seed_gives_identical_metrics_in_two_processes(tmp_path):
    cache = tmp_path / "cache"
    for name in ("a", "b"):
        assert _cli([*QUICK_RUN, "--out", str(tmp_path / name)], cache).wait(timeout=300) == 0
    assert (tmp_path / "a/metrics.jsonl").read_text() == (tmp_path / "b/metrics.jsonl").read_text()
    config = json.loads((tmp_path / "a/config.json").read_text())
    assert {"toy_entropy_version", "torch_version", "device", "config", "seed"} <= set(config)


def test_killed_run_resumes_to_the_same_result(tmp_path):
    cache = tmp_path / "cache"
    args = [*QUICK_RUN, "--set", "train.checkpoint_every=4"]
    assert _cli([*args, "--out", str(tmp_path / "whole")], cache).wait(timeout=300) == 0
    killed = tmp_path / "killed"
    run = _cli([*args, "--out", str(killed)], cache, stdout=subprocess.DEVNULL)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 7:
            break
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not (killed / "summary.json").exists()
    resumed = _cli(["run", "sanity", "--resume", str(killed), "--quiet"], cache)
    assert resumed.wait(timeout=300) == 0
    whole, again = _rows(tmp_path / "whole"), _rows(killed)
    assert [row["step"] for row in again] == list(range(13))  # each step exactly once
    assert again == whole
    summary = json.loads((killed / "summary.json").read_text())
    expected = json.loads((tmp_path / "whole/summary.json").read_text())
    assert summary["headline"]["final_entropy"] == expected["headline"]["final_entropy"]
