"""The cure experiment end to end on tiny settings, and its pieces with known answers."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from toy_entropy.experiments.cli import main
from toy_entropy.experiments.cure import (
    CureConfig,
    ForkRegime,
    cure_train_config,
    exploding_alpha,
    for_device,
    roughness,
)
from toy_entropy.experiments.cure_map import main as main_map
from toy_entropy.experiments.cure_map import map_rows
from toy_entropy.runs.report import load_run_directory
from toy_entropy.training.config import ConfigError, replace_paths

TINY_CURE = [
    "methods=grpo,kl-cov-2e-3", "num_seeds=2", "train.total_steps=2", "train.num_prompts=4",
    "train.num_mini_batches=2", "fork.num_forks=1", "fork.segment_length=2", "fork.vocab_size=64",
    "train.warmstart.steps=60", "train.eval_every=2", "train.eval_prompts=8", "workers=1",
    "fork.fork_noise=0.5",
]  # fmt: skip


@pytest.fixture
def one_thread():
    """One torch thread: on a loaded 2-core machine, tiny matmuls on 2 threads are ~7x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_cure_tiny_run_writes_table1_methods_and_claims(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("TOY_ENTROPY_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    argv = ["run", "cure", "--quiet", "--out", str(out)]
    for item in TINY_CURE:
        argv += ["--set", item]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    headline = summary["headline"]
    measured = headline["table1"]["measured"]
    assert measured["tail_ratio"] == pytest.approx(measured["top_0.02%_mean"] / measured["mean"])
    assert 0 < measured["top_2%_share"] <= 1 and measured["valid_tokens"] > 0
    assert set(headline["methods"]) == {"grpo", "kl-cov-2e-3"}
    grpo = headline["methods"]["grpo"]
    assert len(grpo["final_entropy"]["seeds"]) == 2 and grpo["final_entropy"]["ci95"] >= 0
    ids = {claim["id"]: claim for claim in summary["claims"]}
    for name in (
        "cure.table1.tail_ratio_within_10x_of_paper",
        "cure.kl_cov.entropy_5x_grpo",
        "cure.kl_cov.pass_at_8_above_grpo",
        "cure.batch.valid_tokens_per_update",
    ):
        assert name in ids
    ratio = ids["cure.kl_cov.entropy_5x_grpo"]
    kl_h = headline["methods"]["kl-cov-2e-3"]["final_entropy"]["mean"]
    assert ratio["measured"] == pytest.approx(kl_h / grpo["final_entropy"]["mean"])
    assert ratio["holds"] == (ratio["measured"] > 5)
    assert ids["cure.batch.valid_tokens_per_update"]["holds"] is False  # tiny batches
    assert (out / "cure_curves.png").stat().st_size > 0
    anatomy = headline["anatomy_step1"]
    assert 0 <= anatomy["anatomy/top_0.2%_distractor_share"] <= 1
    assert anatomy["anatomy/top_0.2%_log_prob"] < 0
    rows = [json.loads(line) for line in (out / "grpo" / "seed0" / "metrics.jsonl").open()]
    assert {"cov/tail_ratio", "cov/top_0.02%_share", "cov/valid_tokens"} <= set(rows[1])
    # The map reads the run directory back: one row, the summary's numbers.
    (row,) = map_rows(load_run_directory(out))
    assert row[0] == "run" and row[3] == "4 x 8" and row[4] == 2 and row[6] == 2
    assert float(row[7]) == pytest.approx(measured["tail_ratio"], abs=0.5)
    assert row[8] == "-" and float(row[9]) == pytest.approx(ratio["measured"], abs=0.005)
    assert main_map([str(out), str(tmp_path)]) == 2  # tmp_path is not a run directory


def test_cure_config_uses_the_paper_recipe_and_checks_fields():
    config = CureConfig()
    clip = cure_train_config(config, "clip-cov-2e-4", 64)
    loss = clip.loss
    assert (loss.loss_mode, loss.clip_cov_ratio, loss.clip_ratio_low, loss.clip_ratio_high) == (
        "clip_cov", 2e-4, 1.0, 1.0,
    )  # fmt: skip
    kl = cure_train_config(config, "kl-cov-2e-3", 64)
    assert (kl.loss.kl_cov_ratio, kl.loss.ppo_kl_coef, kl.num_mini_batches, kl.filter_groups) == (
        2e-3, 1.0, 8, True,
    )  # fmt: skip
    from toy_entropy.envs.sequence import make_task

    task = make_task("fork", extra_tokens=kl.extra_tokens, **kl.task_args())
    assert task.vocab.size == 1024 and task.max_response_length == 65
    with pytest.raises(ConfigError, match="methods"):
        CureConfig(methods=("grpo", "dapo"))
    with pytest.raises(ConfigError, match="vocab_size"):
        CureConfig(fork=ForkRegime(vocab_size=10))


def test_exploding_alpha_is_the_smallest_bonus_whose_entropy_ends_above_its_start():
    def stat(start, end):
        return {"initial_entropy": {"mean": start}, "final_entropy": {"mean": end}}

    stats = {"grpo": stat(1.0, 0.1), "entropy-1e-3": stat(1.0, 0.2),
             "entropy-3e-2": stat(1.0, 1.5), "entropy-1e-1": stat(1.0, 3.0)}  # fmt: skip
    assert exploding_alpha(stats) == pytest.approx(3e-2)
    assert exploding_alpha({"grpo": stat(1.0, 2.0), "entropy-1e-3": stat(1.0, 0.5)}) is None


def test_cuda_runs_the_same_regime_at_a_larger_batch_and_vocabulary():
    config = CureConfig()
    assert for_device(config, "cpu") is config
    cuda = for_device(config, "cuda")
    assert (cuda.train.num_prompts, cuda.fork.vocab_size) == (512, 8192)
    assert cuda.fork.num_forks == config.fork.num_forks and cuda.methods == config.methods
    spec = cure_train_config(cuda, "kl-cov-2e-3", cuda.train.num_prompts)
    assert spec.num_prompts == 512 and spec.extra_tokens == 8192 - 29
    kept = for_device(replace(config, cuda_num_prompts=0, cuda_vocab_size=0), "cuda")
    assert (kept.train.num_prompts, kept.fork.vocab_size) == (256, 1024)


def test_roughness_of_known_curves():
    assert roughness(np.full(20, 0.5)) == 0.0
    zigzag = np.array([1.0, 2.0] * 10)  # second half: steps of +-1 around a mean of 1.5
    assert roughness(zigzag) == pytest.approx(np.std([1, -1] * 4 + [1], ddof=1) / 1.5)


def test_runs_sharing_a_warm_start_seed_start_from_one_model(tmp_path, monkeypatch, one_thread):
    from toy_entropy.training.trainer import Trainer

    monkeypatch.setenv("TOY_ENTROPY_CACHE", str(tmp_path / "cache"))
    tiny = replace_paths(
        CureConfig(fork=ForkRegime(num_forks=1, segment_length=2, vocab_size=40)),
        {"train.warmstart.steps": 3},
    )
    shared = [
        Trainer(cure_train_config(tiny, "grpo", 4, warmstart_seed=7), seed, torch.device("cpu"))
        for seed in (1, 2)
    ]
    own = Trainer(cure_train_config(tiny, "grpo", 4), 2, torch.device("cpu"))
    first, second = (t.model.state_dict() for t in shared)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], own.model.state_dict()[k]) for k in first)
    assert shared[0].rng.random() != shared[1].rng.random()  # the RL randomness differs


def test_filtered_groups_are_scored_with_their_own_tokens(tmp_path, monkeypatch, one_thread):
    """With the all-equal group filter, the loss mask drops filtered rows but attention must
    not: their log-probs and entropy are those the policy sampled with."""
    from toy_entropy.training.trainer import Trainer

    monkeypatch.setenv("TOY_ENTROPY_CACHE", str(tmp_path / "cache"))
    tiny = replace_paths(
        CureConfig(fork=ForkRegime(num_forks=2, segment_length=3, vocab_size=48)),
        {"train.warmstart.steps": 20},
    )
    trainer = Trainer(cure_train_config(tiny, "grpo", 8), 0, torch.device("cpu"))
    batch = trainer.rollout()
    generated = batch.response_mask  # (B, T)
    filtered = generated.any(1) & ~batch.mask.any(1)  # (B,)
    assert filtered.any()
    assert torch.equal(batch.attention[:, trainer.prompt_length :], generated)
    # ... and the scored entropy of the filtered rows is that of states the policy visits.
    entropy = batch.token_entropy[filtered][generated[filtered]]
    nll = -batch.old_log_probs[filtered][generated[filtered]]
    assert torch.isfinite(entropy).all() and torch.isfinite(nll).all()


def test_covariance_anatomy_on_a_hand_made_rollout():
    from types import SimpleNamespace

    from toy_entropy.envs.sequence import make_task
    from toy_entropy.experiments.cure import covariance_anatomy

    task = make_task("fork", num_forks=1, segment_length=3, extra_tokens=10)
    trainer = SimpleNamespace(task=task)
    d = task.vocab.distractor_ids.start
    f0, s0 = task.vocab.id("f0"), task.vocab.id("s0")
    # Row 0 (A = -1) holds a distractor at position 1 with log-prob -10; row 1 (A = +1) is clean.
    batch = SimpleNamespace(
        mask=torch.ones(2, 5, dtype=torch.bool),
        responses=torch.tensor([[f0, d, s0, s0, 2], [f0, s0, s0, s0, 2]]),
        old_log_probs=torch.tensor([[-1.0, -10.0, 0.0, 0.0, 0.0], [-0.5, 0.0, 0.0, 0.0, 0.0]]),
        advantages=torch.tensor([[-1.0] * 5, [1.0] * 5]),
    )
    values = covariance_anatomy(trainer, batch)
    assert values["anatomy/top_0.2%_distractor_share"] == 1.0  # the single top token
    assert values["anatomy/top_0.2%_log_prob"] == -10.0
    mean_lp = -11.5 / 10  # cov_i = (lp_i + 1.15) * A_i
    cov = [(lp + 1.15) * a for lp, a in ((-1, -1), (-10, -1), (-0.5, 1))] + [1.15 * -1] * 3
    cov += [1.15] * 4
    total = sum(cov)
    assert values["anatomy/distractor_cov_share"] == pytest.approx(cov[1] / total)
    assert values["anatomy/fork_cov_share"] == pytest.approx((cov[0] + cov[2]) / total)
    assert mean_lp == pytest.approx(-1.15)
