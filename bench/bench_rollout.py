"""Rollout at length: the KV-cached sampler against a teacher-forced forward and the naive loop.

For each response length L it samples a batch of B responses of exactly L tokens (no EOS) to
random prompts with ``GPT.generate`` (KV cache), and times in the same run, interleaved:

- ``forward``: one teacher-forced forward pass of the same model over the same (B, Lp + L)
  tokens, no grad: the floor for sampling, which needs the same logits one column at a time;
- ``naive``: ``GPT.generate_naive``, a full forward pass over the whole sequence per token
  (no cache), only up to ``--naive-max`` tokens and ``--naive-repeats`` times (its cost
  grows as L^2: minutes at L = 256 on a CPU).

It prints median seconds and the ratios ``cached / forward`` and ``naive / cached``. The model
has random weights (the time does not depend on them). On CUDA every call runs under
``torch.cuda.set_sync_debug_mode("error")``: the sampler makes no host read without EOS.

    python bench/bench_rollout.py              # cpu-small, B = 64, L = 64, 256, 512
    python bench/bench_rollout.py --model-size cpu-micro --batch 128 --threads 1
    python bench/bench_rollout.py --device cuda --model-size gpu-10m --batch 256

Targets (issue #12): cached <= 3x the teacher-forced forward, and >= 10x faster than the naive
loop at 256-token responses.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import statistics
import sys
import time
from collections.abc import Callable

import torch
from common import add_device_options, append_results, resolve_device

from toy_entropy.models.model import GPT, GPTConfig


@contextlib.contextmanager
def no_host_sync(device: torch.device):
    """CUDA: any host synchronisation inside raises (sync-debug "error"); CPU: nothing."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call (CUDA: between events, synchronised after the sync-free region)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with no_host_sync(device):
            start.record()
            fn()
            end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def rollout_calls(
    model: GPT, batch: int, prompt_length: int, length: int, device: torch.device
) -> dict[str, Callable[[], object]]:
    """The three ways of producing the logits of ``batch`` responses of ``length`` tokens."""
    gen = torch.Generator(device=device).manual_seed(0)
    vocab = model.config.vocab_size
    prompts = torch.randint(1, vocab, (batch, prompt_length), generator=gen, device=device)
    full = torch.randint(1, vocab, (batch, prompt_length + length), generator=gen, device=device)
    uniforms = torch.rand(batch, length, generator=gen, device=device)  # (B, L)

    def sample(method: Callable) -> Callable[[], object]:
        return lambda: method(prompts, length, eos_id=None, pad_id=0, uniforms=uniforms)

    return {
        "forward": lambda: model(full),
        "cached": sample(model.generate),
        "naive": sample(model.generate_naive),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-size", default="cpu-small", help="toy_entropy.models.model.MODEL_SIZES name"
    )
    parser.add_argument("--batch", type=int, default=64, help="responses per rollout (B)")
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--lengths", default="64,256,512", help="response lengths L")
    parser.add_argument("--naive-max", type=int, default=256, help="longest L for the naive loop")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--naive-repeats", type=int, default=1, help="timed naive calls (no warm-up; minutes)"
    )
    add_device_options(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args, args.threads)
    if device is None:
        return 2
    lengths = [int(x) for x in args.lengths.split(",")]
    torch.manual_seed(0)
    config = GPTConfig.from_size(args.model_size, block_size=args.prompt_length + max(lengths))
    model = GPT(config).to(device).eval()

    header = "| L | tokens | forward s | cached s | naive s | cached x forward | naive / cached |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    print(*lines, sep="\n", flush=True)
    for length in lengths:
        calls = rollout_calls(model, args.batch, args.prompt_length, length, device)
        if length > args.naive_max:
            del calls["naive"]
        times: dict[str, list[float]] = {name: [] for name in calls}
        with torch.no_grad():
            for name, call in calls.items():  # warm-up; the naive loop warms up on its own
                if name != "naive":
                    call()
            for repeat in range(args.repeats):
                for name, call in calls.items():
                    if name != "naive" or repeat < args.naive_repeats:
                        times[name].append(timed(call, device))
        s = {name: statistics.median(values) for name, values in times.items()}
        naive = f"{s['naive']:.3f}" if "naive" in s else "-"
        speedup = f"{s['naive'] / s['cached']:.1f}x" if "naive" in s else "-"
        line = (
            f"| {length} | {args.batch * length} | {s['forward']:.4f} | {s['cached']:.3f} | "
            f"{naive} | {s['cached'] / s['forward']:.2f}x | {speedup} |"
        )
        lines.append(line)
        print(line, flush=True)

    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {threads} threads"
    syncs = ", sync_debug_mode=error" if device.type == "cuda" else ""
    note = (
        f"{datetime.date.today()}, torch {torch.__version__}, {where}{syncs}; model size "
        f"{args.model_size} ({model.num_parameters():,} parameters), B = {args.batch}, prompt "
        f"{args.prompt_length} tokens; median of {args.repeats} interleaved repeats "
        f"(naive: {args.naive_repeats})."
    )
    print(note)
    if args.out:
        append_results(args.out, "bench_rollout.py", argv, note, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
