"""Throughput and peak memory of a GPU-preset training step: chunked vs full-logits loss path.

Each variant runs in its own subprocess with the trainer of a scale preset (random initial
weights, no warm start):

- ``chunked``: the preset as it is (log-probs and entropy from hidden states in token chunks);
- ``full-logits`` (baseline): the same with ``chunked_log_probs=false``, (B, T, V) logits per
  micro-batch.

Per variant: rollout tokens/s (``Trainer.rollout``: KV-cached sampling and the no-grad scoring
pass), update tokens/s (the optimiser steps of one pass over the rollout: selection pass, loss,
backward, AdamW) and the peak memory of the update phase. On CUDA the peak is
``torch.cuda.max_memory_allocated`` above the allocation at the start of the phase; on CPU it is
the largest resident-set rise seen by a 1 ms sampler (large allocations are forced to mmap, so
freed memory leaves the RSS). The logits column divides by one fp32 (micro-batch rows x T x V)
logits tensor. With ``--sync-debug`` (CUDA) the update phase runs under
``torch.cuda.set_sync_debug_mode("error")``: any host sync in the loss path raises.

    python bench/bench_scale.py --cpu-size                     # ~1 min on a 2-core CPU
    python bench/bench_scale.py --device cuda --scale gpu-small --sync-debug
    python bench/bench_scale.py --device cuda --scale gpu-large --set num_prompts=64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import torch

from toy_entropy.training.config import apply_overrides
from toy_entropy.training.parallel import mini_batch_rows
from toy_entropy.training.trainer import TrainConfig, Trainer

VARIANTS = {"chunked": [], "full-logits": ["chunked_log_probs=false"]}
MIB = 2**20
CPU_SIZE = [
    "num_prompts=4",
    "num_mini_batches=1",
    "micro_batch_size=16",
    "rollout_micro_batch_size=0",
    "probe_states=4",
    "eval_prompts=4",
]
"""--cpu-size: 4 prompts x 8 responses and answers of 64 tokens; the preset's vocabulary,
model and chunking stay."""


class _PeakRss:
    """Largest resident-set size seen while the context is open, sampled every millisecond."""

    def __init__(self) -> None:
        self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(1e-3)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _update(trainer: Trainer, batch: dict) -> None:
    cfg = trainer.config
    for rows in mini_batch_rows(
        cfg.num_prompts, cfg.num_generations, cfg.num_mini_batches, trainer.generator
    ):
        trainer._optimise(batch, rows)


def run_child(args: argparse.Namespace, overrides: list[str]) -> dict:
    """Measure one variant in this process; returns a JSON-able dict."""
    device = torch.device(args.device)
    config = apply_overrides(TrainConfig(), overrides)
    torch.manual_seed(0)
    trainer = Trainer(config, seed=0, device=device)
    trainer.train_step()  # warm-up: allocator pools, kernels, compilation
    rollout_s, update_s, tokens, peaks = [], [], [], []
    for _ in range(args.repeats):
        _sync(device)
        started = time.perf_counter()
        batch = trainer.rollout()
        _sync(device)
        rollout_s.append(time.perf_counter() - started)
        tokens.append(float(batch.mask.sum()))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            started = time.perf_counter()
            if args.sync_debug:
                torch.cuda.set_sync_debug_mode("error")
            try:
                _update(trainer, batch)
                _sync(device)
            finally:
                torch.cuda.set_sync_debug_mode(0)
            update_s.append(time.perf_counter() - started)
            peaks.append(torch.cuda.max_memory_allocated() - before)
        else:
            with _PeakRss() as peak:
                before = peak.peak
                started = time.perf_counter()
                _update(trainer, batch)
                update_s.append(time.perf_counter() - started)
            peaks.append(peak.peak - before)
    task = trainer.task
    micro = config.micro_batch_size or config.num_prompts * config.num_generations
    return {
        "rollout_tokens_per_s": sum(tokens) / sum(rollout_s),
        "update_tokens_per_s": sum(tokens) / sum(update_s),
        "update_peak_bytes": max(peaks),
        "logits_bytes": micro * task.max_response_length * task.vocab.size * 4,
        "vocab": task.vocab.size,
        "response_length": task.max_response_length,
        "params": trainer.model.num_parameters(),
        "rows": config.num_prompts * config.num_generations,
        "micro_batch_size": micro,
        "sync_debug": bool(args.sync_debug and device.type == "cuda"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="gpu-small", help="TrainConfig.scale")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--cpu-size", action="store_true", help="4 x 8 rows, 64-token answers (CPU check)"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    parser.add_argument("--repeats", type=int, default=2, help="measured steps per variant")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: torch's default; 1 avoids stalls on a busy shared CPU)",
    )
    parser.add_argument("--sync-debug", action="store_true", help="CUDA: no host sync allowed")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [f"scale={args.scale}", "warmstart.steps=0"]
    if args.cpu_size:
        num_values = TrainConfig(scale=args.scale).task_args().get("num_values", 10)
        overrides += [*CPU_SIZE, f"task_kwargs=list_length=63,num_values={num_values}"]
    overrides += args.overrides

    if args.variant is not None:
        print(json.dumps(run_child(args, overrides + VARIANTS[args.variant])))
        return

    # Large blocks go to mmap, so that freed memory leaves the resident set (CPU peaks).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    results = {}
    for variant in VARIANTS:
        out = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--variant", variant],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    info = results["chunked"]
    print(
        f"scale={args.scale}{' (cpu-size)' if args.cpu_size else ''} device={args.device} "
        f"torch={torch.__version__} V={info['vocab']} T={info['response_length']} "
        f"params={info['params'] / 1e6:.1f}M rows={info['rows']} micro={info['micro_batch_size']}"
    )
    print(f"one fp32 (micro x T x V) logits tensor: {info['logits_bytes'] / MIB:.1f} MiB")
    header = (
        f"{'variant':<24}{'rollout tok/s':>14}{'update tok/s':>14}{'peak MiB':>10}{'x logits':>10}"
    )
    print(header)
    for variant, r in results.items():
        name = variant + (" (baseline)" if variant == "full-logits" else "")
        peak = r["update_peak_bytes"]
        print(
            f"{name:<24}{r['rollout_tokens_per_s']:>14,.0f}{r['update_tokens_per_s']:>14,.0f}"
            f"{peak / MIB:>10.1f}{peak / r['logits_bytes']:>10.2f}"
        )
    base, new = results["full-logits"], results["chunked"]
    speed = new["update_tokens_per_s"] / base["update_tokens_per_s"]
    memory = new["update_peak_bytes"] / base["update_peak_bytes"]
    print(f"chunked / baseline: update speed x{speed:.2f}, update peak memory x{memory:.2f}")
    if info["sync_debug"]:
        print('sync debug: the update phase ran under set_sync_debug_mode("error") without raising')


if __name__ == "__main__":
    main()
