"""Benchmark of the policy losses: forward + backward time per optimisation batch.

For each loss mode and batch size it times what a trainer runs per step on a batch of N
tokens: :func:`select_tokens` (Clip-Cov / KL-Cov selection, normalisers) plus
:func:`compute_policy_loss` and ``loss.backward()``, and prints the median time and its ratio
to vanilla PPO measured in the same run (the modes are interleaved, so machine noise hits all
of them alike). On CUDA everything runs under ``torch.cuda.set_sync_debug_mode("error")``: a
host synchronisation inside the losses raises, so a completed run means zero syncs.

    python bench/bench_losses.py                       # CPU, 1e4 .. 1e7 tokens
    python bench/bench_losses.py --sizes 1e6 --repeats 21
    python bench/bench_losses.py --device cuda --out bench/RESULTS_losses.md

Targets (issue): clip_cov and kl_cov within 1.3x of vanilla at 1e6 tokens on CPU, within
1.2x with zero host syncs on CUDA.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from collections.abc import Callable

import torch

from toy_entropy.losses import PolicyLossConfig, compute_policy_loss, select_tokens

MODES = ("vanilla", "pg", "clip_cov", "kl_cov")
RESPONSE_LENGTH = 1000


def make_batch(n_tokens: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """A synthetic optimisation batch of about ``n_tokens`` positions, ``(B, 1000)`` tensors.

    Log-probs of sampled tokens (heavy mass near 0), a slightly stale rollout policy, GRPO-like
    per-response advantages and responses filling 50-100% of the padded length.
    """
    gen = torch.Generator().manual_seed(seed)
    rows = max(1, n_tokens // RESPONSE_LENGTH)
    shape = (rows, RESPONSE_LENGTH)
    log_probs = -torch.empty(shape).exponential_(2.0, generator=gen)  # (B, T)
    old_log_probs = log_probs + 0.1 * torch.randn(shape, generator=gen)
    advantages = torch.randn(rows, 1, generator=gen).expand(shape).contiguous()
    lengths = torch.randint(RESPONSE_LENGTH // 2, RESPONSE_LENGTH + 1, (rows, 1), generator=gen)
    mask = torch.arange(RESPONSE_LENGTH) < lengths  # (B, T)
    batch = {"log_probs": log_probs, "old_log_probs": old_log_probs}
    batch |= {"advantages": advantages, "response_mask": mask}
    return {name: t.to(device) for name, t in batch.items()}


def make_step(
    mode: str, batch: dict[str, torch.Tensor], device: torch.device
) -> Callable[[], None]:
    """One training step's loss work for ``mode``: selection, loss, backward."""
    config = PolicyLossConfig(loss_mode=mode, clip_ratio_high=0.28)
    generator = torch.Generator(device=device).manual_seed(0)
    leaf = batch["log_probs"].clone().requires_grad_()
    tensors = (batch["old_log_probs"], batch["advantages"], batch["response_mask"])

    def step() -> None:
        selection = select_tokens(config, leaf.detach(), *tensors, generator=generator)
        loss, _ = compute_policy_loss(config, leaf, *tensors, selection)
        loss.backward()
        leaf.grad = None

    return step


def time_modes(n_tokens: int, device: torch.device, repeats: int) -> dict[str, float]:
    """Median milliseconds per step of every mode, the modes interleaved round-robin."""
    batch = make_batch(n_tokens, device)
    steps = {mode: make_step(mode, batch, device) for mode in MODES}
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_sync_debug_mode("error")
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    try:
        for step in steps.values():  # warm-up (allocator, kernels)
            step()
        for _ in range(repeats):
            for mode, step in steps.items():
                if cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(True)
                    start.record()
                    step()
                    end.record()
                    torch.cuda.set_sync_debug_mode("default")
                    end.synchronize()
                    torch.cuda.set_sync_debug_mode("error")
                    times[mode].append(start.elapsed_time(end))
                else:
                    t0 = time.perf_counter()
                    step()
                    times[mode].append(1e3 * (time.perf_counter() - t0))
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
    return {mode: statistics.median(values) for mode, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e4,1e5,1e6,1e7", help="token counts, comma-separated")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=0, help="timed repeats (0: by size)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--out", default=None, help="also append the table (Markdown) here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(float(size)) for size in args.sizes.split(",")]

    header = "| tokens | " + " | ".join(f"{m} ms (x vanilla)" for m in MODES) + " |"
    lines = [header, "|" + "---|" * (len(MODES) + 1)]
    print(header, lines[1], sep="\n", flush=True)
    for n_tokens in sizes:
        repeats = args.repeats or (7 if n_tokens >= 10**7 else 21 if n_tokens >= 10**6 else 41)
        ms = time_modes(n_tokens, device, repeats)
        cells = [f"{ms[m]:.2f} ({ms[m] / ms['vanilla']:.2f}x)" for m in MODES]
        line = f"| {n_tokens:.0e} | " + " | ".join(cells) + " |"
        lines.append(line)
        print(line, flush=True)

    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {threads} threads"
    syncs = ", host syncs: 0 (sync_debug_mode=error)" if device.type == "cuda" else ""
    note = (
        f"{datetime.date.today()}, torch {torch.__version__}, {where}{syncs}; median of "
        "interleaved repeats; one step = select_tokens + compute_policy_loss + backward."
    )
    print(note)
    if args.out:
        command = "python bench/bench_losses.py " + " ".join(argv or sys.argv[1:])
        with open(args.out, "a") as f:
            f.write(f"\n`{command.strip()}`  \n{note}\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
