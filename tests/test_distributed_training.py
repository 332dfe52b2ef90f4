"""Data-parallel training: 2 gloo ranks train as one process on the whole batch does; a
checkpoint remembers its world size; the chunked log-prob path gives the unchunked update."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed
import torch.multiprocessing
from grad_capture import first_step_gradients

from toy_entropy.training.checkpoint import latest_checkpoint, load_checkpoint
from toy_entropy.training.config import replace_paths
from toy_entropy.training.parallel import DataParallel
from toy_entropy.training.trainer import TrainConfig, Trainer

WORLD = 2
# 8 prompts x 8 responses; per rank 4 prompts; 2 mini-batches of 16 rows per rank, in 2
# micro-batches each (so DDP's no_sync accumulation runs); 2 passes, so the selection acts.
BASE = {
    "warmstart.steps": 150,
    "total_steps": 3,
    "eval_every": 3,
    "eval_prompts": 16,
    "probe_states": 8,
    "num_prompts": 8,
    "num_iterations": 2,
    "num_mini_batches": 2,
    "micro_batch_size": 8,
    "rollout_micro_batch_size": 16,
}
MODES = {
    "clip_cov": {
        "loss.loss_mode": "clip_cov",
        "loss.clip_cov_ratio": 0.05,
        "loss.clip_cov_lb": -1.0,
    },
    "kl_cov": {"loss.loss_mode": "kl_cov", "loss.kl_cov_ratio": 0.05},
}


def train_config(changes: dict) -> TrainConfig:
    return replace_paths(TrainConfig(), changes)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TOY_ENTROPY_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _train(mode: str, parallel: DataParallel | None, checkpoint_dir=None) -> Trainer:
    torch.manual_seed(0)
    trainer = Trainer(
        train_config({**BASE, **MODES[mode]}),
        seed=3,
        device="cpu",
        checkpoint_dir=checkpoint_dir,
        parallel=parallel,
    )
    for _ in range(BASE["total_steps"]):
        trainer.train_step()
    trainer.save_checkpoint()
    return trainer


def _comparable(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The parameters, without the key biases: their gradient is 0 in exact arithmetic (the
    softmax over keys is shift-invariant), so AdamW turns float noise into full-size steps."""
    params = {}
    for name, param in trainer.model.named_parameters():
        value = param.detach().clone()
        if name.endswith("attn.c_attn.bias"):
            width = value.numel() // 3  # (query, key, value) biases
            value = torch.cat([value[:width], value[2 * width :]])
        params[name] = value
    return params


def _worker(rank: int, port: int, out: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        results = {}
        for mode in MODES:
            parallel = DataParallel(torch.distributed.group.WORLD)
            trainer = _train(mode, parallel, checkpoint_dir=os.path.join(out, mode))
            results[mode] = {
                "history": [r.metrics for r in trainer.history],
                "params": _comparable(trainer),
            }
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_two_ranks_train_like_one_process(tmp_path):
    # One process first: it also fills the warm-start cache the ranks then read.
    single = {mode: _train(mode, None) for mode in MODES}
    torch.multiprocessing.spawn(
        _worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for mode, trainer in single.items():
        history = [r.metrics for r in trainer.history]
        ranked = ranks[0][mode]["history"]
        assert len(ranked) == len(history) == BASE["total_steps"]
        for one, two in zip(history, ranked):
            assert one["select/frac"] > 0  # the selection acts on every step
            assert two["select/frac"] == one["select/frac"]  # the same number of tokens
            assert two["reward"] == one["reward"]  # the same samples
            assert two.keys() == one.keys()
            for name in one:
                if not name.startswith("perf/"):
                    assert two[name] == pytest.approx(one[name], rel=1e-4, abs=1e-6), name
        # Every rank evaluates alike (rank 0 alone logs) and ends where one process ends.
        for one, two in zip(ranks[1][mode]["history"], ranked):
            assert {k: v for k, v in one.items() if not k.startswith("perf/")} == {
                k: v for k, v in two.items() if not k.startswith("perf/")
            }
        for rank in ranks:
            torch.testing.assert_close(rank[mode]["params"], _comparable(trainer))
        # Rank 0 alone wrote the checkpoint; it records the world size, and a run on another
        # world size refuses it.
        checkpoint = load_checkpoint(latest_checkpoint(tmp_path / mode))
        assert len(list((tmp_path / mode).glob("step_*.pt"))) == 1
        assert checkpoint["world_size"] == WORLD
        DataParallel(_FakeGroup(WORLD, 1)).check_checkpoint(checkpoint)
        with pytest.raises(ValueError, match="world_size=2 does not match .* world_size=1"):
            trainer.load_state(checkpoint)


class _FakeGroup:
    """A Collectives stand-in: only the world size and rank are read by the check."""

    def __init__(self, world_size: int, rank: int) -> None:
        self.world_size, self.rank = world_size, rank

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        raise AssertionError("no collective expected")


def test_chunked_log_probs_give_the_unchunked_update():
    config = {**BASE, "total_steps": 1, "num_iterations": 1, **MODES["kl_cov"],
              "loss.entropy_coeff": 0.01}  # fmt: skip
    chunked = Trainer(train_config({**config, "log_prob_chunk_tokens": 37}), seed=4, device="cpu")
    full = Trainer(train_config({**config, "chunked_log_probs": False}), seed=4, device="cpu")
    before = [p.detach().clone() for p in full.model.parameters()]
    grads = [first_step_gradients(chunked), first_step_gradients(full)]
    one, two = chunked.train_step(), full.train_step()
    for name in ("entropy", "loss/total", "loss/entropy", "optim/grad_norm"):
        assert one[name] == pytest.approx(two[name], rel=1e-5), name
    # The gradients, not the parameters after AdamW: Adam divides each element by its own
    # magnitude, so an element whose gradient is at the fp32 rounding level (~1e-6 of the
    # largest) moves by a full +-lr either way, whatever the path that computed it.
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5 * float(b.abs().max()), rtol=1e-4)
    moved = [(a - b).abs().max() for a, b in zip(full.model.parameters(), before)]
    assert max(moved) > 1e-4  # the step did update the model


def test_num_prompts_must_split_over_ranks():
    parallel = DataParallel(_FakeGroup(world_size=4, rank=0))
    with pytest.raises(ValueError, match="num_prompts=6 is invalid: must be a multiple of"):
        Trainer(train_config({**BASE, "num_prompts": 6}), 0, "cpu", parallel=parallel)


def _run(tmp_path, out: str, nproc: int, *extra: str) -> subprocess.CompletedProcess:
    """``python -m toy_entropy.train`` (1 process) or under torchrun (``nproc`` ranks)."""
    sets = [
        "total_steps=2",
        "checkpoint_every=1",
        "loss.loss_mode=kl_cov",
        "loss.kl_cov_ratio=0.05",
    ]
    sets += [f"{k}={v}" for k, v in BASE.items() if k not in ("total_steps", "eval_every")]
    args = ["-m", "toy_entropy.train", "--out", str(tmp_path / out), "--seed", "5", "--quiet"]
    args += [item for kv in sets for item in ("--set", kv)] + list(extra)
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
        args = launcher + ["--master_port", str(_free_port())] + args
    else:
        args = [sys.executable] + args
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)


def _rows(tmp_path, out: str) -> list[dict]:
    lines = (tmp_path / out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_torchrun_entry_point_matches_one_process_and_resumes(tmp_path):
    one = _run(tmp_path, "one", 1)
    assert one.returncode == 0, one.stderr
    two = _run(tmp_path, "two", WORLD)
    assert two.returncode == 0, two.stderr
    rows_one, rows_two = _rows(tmp_path, "one"), _rows(tmp_path, "two")
    assert [r["step"] for r in rows_two] == [0, 1, 2]
    for a, b in zip(rows_one, rows_two):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["headline"]["world_size"] == WORLD
    # Resume the 1-process run from step 1: step 2 is redone exactly, logged once.
    (tmp_path / "one" / "checkpoints" / "step_000002.pt").unlink()
    (tmp_path / "one" / "summary.json").unlink()  # as if killed before the end
    again = _run(tmp_path, "one", 1, "--resume")
    assert again.returncode == 0, again.stderr
    assert _rows(tmp_path, "one") == rows_one
    # A 2-rank run does not resume a 1-rank checkpoint.
    (tmp_path / "one" / "summary.json").unlink()
    refused = _run(tmp_path, "one", WORLD, "--resume")
    assert refused.returncode != 0
    assert "checkpoint world_size=1 does not match this run's world_size=2" in refused.stderr
    assert _rows(tmp_path, "one") == rows_one
