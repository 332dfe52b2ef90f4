"""The entropy lab's training experiments (controllers, forking-tokens) on tiny settings, and
their statistics with known answers."""

import json

import numpy as np
import pytest
import torch

from toy_entropy.experiments.cli import main
from toy_entropy.experiments.controllers import ControllersConfig, overshoot, settling_step
from toy_entropy.experiments.forking_tokens import SUBSETS, ForkingTokensConfig
from toy_entropy.training.config import ConfigError

TINY = [
    "num_seeds=2", "train.total_steps=3", "train.num_prompts=4", "train.num_mini_batches=2",
    "train.eval_every=3", "train.eval_prompts=8", "train.warmstart.steps=60", "workers=1",
    "train.task=reverse",
]  # fmt: skip


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TOY_ENTROPY_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def run(name: str, *extra: str) -> dict:
        out = tmp_path / name
        argv = ["run", name, "--quiet", "--out", str(out)]
        for item in (*TINY, *extra):
            argv += ["--set", item]
        assert main(argv) == 0
        return json.loads((out / "summary.json").read_text())

    yield run
    torch.set_num_threads(threads)


def test_overshoot_and_settling_of_known_curves():
    curve = np.array([1.0, 0.7, 0.5, 0.4, 0.55, 0.5, 0.5])
    # reaches 0.5 at step 2, dips to 0.4: 20% below the target
    assert overshoot(curve, 0.5) == pytest.approx(0.2)
    assert overshoot(np.array([1.0, 0.9]), 0.5) == 0.0  # never reaches it
    # |H - 0.5| / 0.5 <= 0.25 from step 2 on (0.4 is 0.2 away, 0.55 is 0.1)
    assert settling_step(curve, 0.5, 0.25) == 2.0
    assert np.isnan(settling_step(np.array([0.5, 1.0]), 0.5, 0.25))


def test_configs_check_their_fields():
    with pytest.raises(ConfigError, match="targets"):
        ControllersConfig(targets=(-0.1,))
    with pytest.raises(ConfigError, match="model_sizes"):
        ForkingTokensConfig(model_sizes=("gpt-5",))


def test_controllers_tiny_run(tiny_run):
    summary = tiny_run("controllers", "targets=0.5")
    variants = summary["headline"]["variants"]
    assert set(variants) == {"grpo", "k-controller@0.5", "adaptive-bonus@0.5"}
    assert 0 <= variants["adaptive-bonus@0.5"]["overshoot"]["mean"]
    ids = {c["id"] for c in summary["claims"]}
    assert "controllers.target_0.5.k_controller_tracks_closer" in ids


def test_forking_tokens_tiny_run(tiny_run):
    summary = tiny_run("forking-tokens", "model_sizes=cpu-nano")
    variants = summary["headline"]["variants"]
    assert set(variants) == {f"cpu-nano/{m}" for m in SUBSETS}
    # the top 20% keep a policy gradient on about a fifth of the tokens, the bottom 80% on 4/5
    assert variants["cpu-nano/top-20%"]["kept"]["mean"] == pytest.approx(0.2, abs=0.03)
    assert variants["cpu-nano/bottom-80%"]["kept"]["mean"] == pytest.approx(0.8, abs=0.03)
    assert len(summary["claims"]) == 4
