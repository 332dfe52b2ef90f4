"""Peak memory of the RL loss path (log-probs + entropy -> loss -> backward) at a large vocabulary.

Variants, all starting from hidden states (N, C) and the output embedding W (V, C):

- ``reference``: ``logits = hidden @ W.T`` and
  :func:`toy_entropy.models.token_stats.token_log_probs_and_entropy_reference` (log_softmax +
  gather, entropy_from_logits);
- ``chunked-logits``: the same logits fed to the chunked function (``weight=None``);
- ``chunked``: :func:`toy_entropy.models.token_stats.token_log_probs_and_entropy` on the hidden
  states, never forming more than ``chunk_size`` rows of logits.

Each variant runs in its own subprocess so that peaks do not mix. On CPU the peak is the rise
of the resident set size (``ru_maxrss`` after the step minus the RSS before it); on CUDA it is
``torch.cuda.max_memory_allocated`` minus the allocation before the step. The loss is
``-(A * log_probs).mean() - 0.01 * entropy.mean()`` with random advantages A.

    python bench/bench_memory.py                      # V=32768, N=2048 tokens: 256 MiB logits
    python bench/bench_memory.py --device cuda --tokens 16384
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from toy_entropy.models.token_stats import (
    DEFAULT_CHUNK_ELEMENTS,
    token_log_probs_and_entropy,
    token_log_probs_and_entropy_reference,
)

VARIANTS = ("reference", "chunked-logits", "chunked")
MIB = 2**20


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _loss_step(variant: str, hidden: torch.Tensor, weight: torch.Tensor, targets, adv, chunk):
    """One forward + backward of the loss; gradients land in hidden.grad and weight.grad."""
    if variant == "chunked":
        log_probs, entropy = token_log_probs_and_entropy(hidden, weight, targets, chunk)
    else:
        logits = hidden @ weight.T  # (1, N, V)
        if variant == "reference":
            log_probs, entropy = token_log_probs_and_entropy_reference(logits, targets)
        else:
            log_probs, entropy = token_log_probs_and_entropy(logits, None, targets, chunk)
    loss = -(adv * log_probs).mean() - 0.01 * entropy.mean()
    loss.backward()


def run_child(args: argparse.Namespace) -> dict:
    """Measure one variant in this process; returns a JSON-able dict."""
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    N, V, C = args.tokens, args.vocab, args.hidden
    hidden = torch.randn(1, N, C, generator=gen).to(device).requires_grad_()
    weight = (0.05 * torch.randn(V, C, generator=gen)).to(device).requires_grad_()
    targets = torch.randint(0, V, (1, N), generator=gen).to(device)
    adv = torch.randn(1, N, generator=gen).to(device)
    # Warm up allocator pools and thread pools on a few tokens before the baseline.
    _loss_step(args.variant, hidden[:, :8], weight, targets[:, :8], adv[:, :8], args.chunk_size)
    hidden.grad = None
    weight.grad = torch.zeros_like(weight)  # allocate it now: it is not part of the peak

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _current_rss_bytes()
    start = time.perf_counter()
    _loss_step(args.variant, hidden, weight, targets, adv, args.chunk_size)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    seconds = time.perf_counter() - start
    return {"variant": args.variant, "peak_rise_bytes": peak - before, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32768, help="vocabulary size V")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens N = B*T")
    parser.add_argument("--hidden", type=int, default=512, help="hidden width C")
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="tokens per chunk (default: the library's)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.variant is not None:
        print(json.dumps(run_child(args)))
        return

    logits_bytes = args.tokens * args.vocab * 4
    chunk = args.chunk_size or max(1, DEFAULT_CHUNK_ELEMENTS // args.vocab)
    print(
        f"V={args.vocab} N={args.tokens} C={args.hidden} chunk={chunk} "
        f"device={args.device} torch={torch.__version__}"
    )
    print(f"one fp32 (N, V) logits tensor: {logits_bytes / MIB:.1f} MiB")
    print(f"{'variant':<16}{'peak rise MiB':>15}{'x logits':>10}{'seconds':>10}")
    for variant in VARIANTS:
        out = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--variant", variant],
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rise = result["peak_rise_bytes"]
        print(
            f"{variant:<16}{rise / MIB:>15.1f}{rise / logits_bytes:>10.2f}"
            f"{result['seconds']:>10.2f}"
        )


if __name__ == "__main__":
    main()
