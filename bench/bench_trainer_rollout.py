"""Trainer.rollout() end to end: through the registered vector env against the direct task calls.

``Trainer.rollout`` gets its prompts from ``env.reset`` and its rewards from ``env.step`` of a
``SequenceVectorEnv`` in whole-response mode (``action_mode="response"``). The baseline, timed
in the same run and interleaved, is the same ``rollout`` with the env swapped for
:class:`DirectTask`, which does what the trainer did before it used the env: draw the prompts
with ``task.sample_prompts`` and score with ``task.score``, no token buffer, no action check.
Before every call the trainer's prompt and sampling generators are rewound, so both paths
sample the same prompts and responses and do the same model work; the difference is the env.

It prints median seconds of each path and the ratio ``env / direct`` (target <= 1.05). The
model is the untrained initial one (``warmstart.steps=0``; the time does not depend on the
weights, only on the response lengths, which both paths share).

    python bench/bench_trainer_rollout.py --threads 1                  # reverse, cpu-nano, 16 x 8
    python bench/bench_trainer_rollout.py --task sort --task-kwargs list_length=63 \\
        --model-size cpu-small --threads 1                             # 64-token responses
    python bench/bench_trainer_rollout.py --device cuda --model-size gpu-10m --num-prompts 64
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from typing import Any

import torch
from common import add_device_options, append_results, resolve_device

from toy_entropy.envs.sequence import PromptBatch, SequenceTask
from toy_entropy.envs.sequence.task import through_first
from toy_entropy.training.config import replace_paths
from toy_entropy.training.parallel import DataParallel
from toy_entropy.training.trainer import TrainConfig, Trainer


class DirectTask:
    """The baseline: the env calls of ``Trainer.rollout`` done by the task itself, as the
    trainer did before (prompts drawn with ``task.sample_prompts``, one ``task.score``)."""

    def __init__(self, trainer: Trainer) -> None:
        self.task: SequenceTask = trainer.task
        self.trainer = trainer
        self.prompts: PromptBatch | None = None
        self.prompt_index = torch.zeros(0, dtype=torch.long)

    def reset(self, options: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The rollout's prompts: ``{"tokens": (B, Lp)}`` and ``{"prompt_index": (B,)}``."""
        cfg, parallel, group = self.trainer.config, self.trainer.parallel, options["group_size"]
        prompts = self.task.sample_prompts(
            cfg.num_prompts, "train", self.trainer.rng, device=self.trainer.device
        )
        self.prompts = prompts[parallel.shard(cfg.num_prompts)]
        self.prompt_index = torch.arange(
            len(self.prompts), device=self.trainer.device
        ).repeat_interleave(group)  # (B,)
        return {"tokens": self.prompts.tokens[self.prompt_index]}, {
            "prompt_index": self.prompt_index
        }

    def step(self, responses: torch.Tensor) -> tuple[None, torch.Tensor, None, None, dict]:
        """The (B,) rewards of the (B, T) responses (pad after ``<eos>``)."""
        mask = through_first(responses == self.task.vocab.eos_id)  # (B, T), generate's mask
        return (
            None,
            self.task.score(self.prompts, self.prompt_index, responses, mask),
            None,
            None,
            {},
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="reverse")
    parser.add_argument("--task-kwargs", default="", help="e.g. list_length=63")
    parser.add_argument("--model-size", default="cpu-nano")
    parser.add_argument("--num-prompts", type=int, default=16, help="P")
    parser.add_argument("--num-generations", type=int, default=8, help="G")
    parser.add_argument("--repeats", type=int, default=21)
    add_device_options(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args, args.threads)
    if device is None:
        return 2
    config = replace_paths(
        TrainConfig(),
        {
            "task": args.task,
            "task_kwargs": args.task_kwargs,
            "model_size": args.model_size,
            "num_prompts": args.num_prompts,
            "num_generations": args.num_generations,
            "warmstart.steps": 0,
            "probe_states": 1,
            "eval_prompts": 1,
            "eval_samples": 1,
        },
    )
    trainer = Trainer(config, seed=0, device=device, parallel=DataParallel())
    paths = {"direct": DirectTask(trainer), "env": trainer.env}
    rng_state, generator_state = trainer.rng.bit_generator.state, trainer.generator.get_state()

    def call(path: str) -> float:
        """Seconds of one ``trainer.rollout()`` through ``path``, from the same generators."""
        trainer.rng.bit_generator.state = rng_state
        trainer.generator.set_state(generator_state)
        trainer.env = paths[path]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        trainer.rollout()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    times: dict[str, list[float]] = {path: [] for path in paths}
    for path in paths:  # warm-up
        call(path)
    for repeat in range(args.repeats):
        for path in list(paths)[:: 1 if repeat % 2 else -1]:  # alternate which path goes first
            times[path].append(call(path))
    s = {path: statistics.median(values) for path, values in times.items()}
    rows = args.num_prompts * args.num_generations
    lines = [
        "| task | rows | T | direct s | env s | env / direct |",
        "|---|---|---|---|---|---|",
        f"| {args.task} {args.task_kwargs} | {rows} | {trainer.response_length} | "
        f"{s['direct']:.4f} | {s['env']:.4f} | {s['env'] / s['direct']:.3f}x |",
    ]
    print(*lines, sep="\n")
    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {threads} threads"
    note = (
        f"{datetime.date.today()}, torch {torch.__version__}, {where}; model size "
        f"{args.model_size} ({trainer.model.num_parameters():,} parameters); median of "
        f"{args.repeats} interleaved repeats."
    )
    print(note)
    if args.out:
        append_results(args.out, "bench_trainer_rollout.py", argv, note, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
