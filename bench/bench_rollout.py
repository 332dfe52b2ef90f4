"""Rollout and update throughput (tokens/s) of the CPU preset, against a naive sampling loop.

The naive loop runs a full forward pass over the whole sequence for every generated token (no
KV cache); the cached sampler is ``GPT.generate``. Both are measured in this run, on the same
prompts, and printed with their ratio. The update is one trainer optimiser step (scoring pass,
selection, loss, backward, AdamW) over the same batch.

    python bench/bench_rollout.py [--task reverse] [--preset cpu-nano] [--batch 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from envs.sequence import make_task
from toy_entropy.model import GPT, GPTConfig
from toy_entropy.trainer import TrainConfig, Trainer


def _best_of(repeats: int, fn) -> float:
    """Smallest wall time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="reverse")
    parser.add_argument("--preset", default="cpu-nano")
    parser.add_argument("--batch", type=int, default=128, help="responses per rollout")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    task = make_task(args.task)
    length = task.max_response_length
    config = GPTConfig.from_preset(
        args.preset, vocab_size=task.vocab.size, block_size=task.prompt_length + length
    )
    model = GPT(config).to(device).eval()
    prompts = task.sample_prompts(args.batch, "train", 0, device=device).tokens
    vocab = task.vocab

    def sample(method):
        def run():
            generator = torch.Generator(device=device).manual_seed(0)
            with torch.no_grad():
                method(prompts, length, eos_id=None, pad_id=vocab.pad_id, generator=generator)

        return run

    tokens = args.batch * length  # eos_id=None: every row generates the full length
    cached = _best_of(args.repeats, sample(model.generate))
    naive = _best_of(args.repeats, sample(model.generate_naive))

    train = TrainConfig(
        task=args.task,
        model_preset=args.preset,
        warmstart_steps=0,
        num_prompts=args.batch // 8,
        num_generations=8,
        eval_prompts=8,
        probe_states=8,
    )
    trainer = Trainer(train, seed=0, device=device)
    batch = trainer.rollout()
    rows = torch.arange(args.batch, device=device)
    update_tokens = float(batch.mask.sum())
    update = _best_of(args.repeats, lambda: trainer._optimise(batch, rows))

    print(
        f"task={args.task} preset={args.preset} params={model.num_parameters():,} "
        f"batch={args.batch} response_length={length} device={device}"
    )
    print(f"{'what':<28}{'tokens/s':>12}{'ratio':>10}")
    print(f"{'rollout, naive (baseline)':<28}{tokens / naive:>12,.0f}{1.0:>10.2f}")
    print(f"{'rollout, KV cache':<28}{tokens / cached:>12,.0f}{naive / cached:>10.2f}")
    print(f"{'update (1 optimiser step)':<28}{update_tokens / update:>12,.0f}{'':>10}")


if __name__ == "__main__":
    main()
