"""Benchmark of the policy losses: forward + backward time per optimisation batch, against verl.

For each batch size and thread count it times what a trainer runs per step on a batch of N
tokens: :func:`select_tokens` (Clip-Cov / KL-Cov selection, normalisers) plus
:func:`compute_policy_loss` and ``loss.backward()``, and prints the median time and ratios
measured in the same run (all variants are interleaved round-robin, so machine noise hits
them alike):

- ``clip_cov`` and ``kl_cov`` against this project's PPO loss without dual clip (``vanilla``);
- when verl is importable, each project loss against verl's own policy-loss function on the
  same tensors (``verl/trainer/ppo/core_algos.py``: ``compute_policy_loss_vanilla``, which
  always dual-clips with ``clip_ratio_c = 3`` and is therefore compared with this project's
  vanilla with ``clip_ratio_c = 3``, ``compute_policy_loss_clip_cov``,
  ``compute_policy_loss_kl_cov``), forward + backward. Without verl the verl columns are
  skipped with a message.

On CUDA the project's losses run under ``torch.cuda.set_sync_debug_mode("error")`` (a host
synchronisation raises, so a completed run means zero syncs); verl's, which call ``.item()``
and ``nonzero``, run with the mode relaxed.

    python bench/bench_losses.py                                 # CPU, 1e4 .. 1e7 tokens
    python bench/bench_losses.py --sizes 1e5,1e6 --threads 1,2 --repeats 21
    python bench/bench_losses.py --device cuda --out bench/RESULTS_losses.md

verl is not a dependency of this project. To compare against it, install verl 0.9.1 and the
modules its ``core_algos`` import chain needs into a separate directory, without touching the
environment's packages, and put that directory on the path (tested with these versions)::

    pip install --no-deps --target /tmp/verl_site verl==0.9.1 omegaconf==2.4.0 \\
        tensordict==0.15.3 pyvers==0.2.3 transformers==5.24.0 huggingface_hub==2.4.0 \\
        httpx2==2.16.2 httpcore2==2.16.2 h11==0.16.0 truststore==0.10.5 safetensors==0.8.0 \\
        tokenizers==0.23.3 regex==2026.11.19 codetiming==1.4.0 ray==2.60.0 msgpack==1.2.4 \\
        pyyaml==6.0.4
    PYTHONPATH=/tmp/verl_site python bench/bench_losses.py --sizes 1e5,1e6 --threads 1,2

Targets (issue #12, CPU): clip_cov <= 1.15x vanilla and <= 1.0x verl's clip_cov at 1e5 and
1e6 tokens with 1 and 2 threads; kl_cov <= 1.0x verl's kl_cov.
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

from toy_entropy.algorithms.losses import PolicyLossConfig, compute_policy_loss, select_tokens

MODES = ("vanilla", "pg", "clip_cov", "kl_cov")
RESPONSE_LENGTH = 1000
CLIP_RATIO_HIGH = 0.28
DUAL_CLIP = 3.0
VERL_PAIRS = {"vanilla_dual": "verl_vanilla", "clip_cov": "verl_clip_cov", "kl_cov": "verl_kl_cov"}
"""This project's variant -> verl's function on the same inputs."""


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
    mode: str, batch: dict[str, torch.Tensor], device: torch.device, dual_clip: bool = False
) -> Callable[[], None]:
    """One training step's loss work for ``mode``: selection, loss, backward."""
    config = PolicyLossConfig(
        loss_mode=mode,
        clip_ratio_high=CLIP_RATIO_HIGH,
        clip_ratio_c=DUAL_CLIP if dual_clip else None,
    )
    generator = torch.Generator(device=device).manual_seed(0)
    leaf = batch["log_probs"].clone().requires_grad_()
    tensors = (batch["old_log_probs"], batch["advantages"], batch["response_mask"])

    def step() -> None:
        selection = select_tokens(config, leaf.detach(), *tensors, generator=generator)
        loss, _ = compute_policy_loss(config, leaf, *tensors, selection)
        loss.backward()
        leaf.grad = None

    return step


def verl_steps(batch: dict[str, torch.Tensor]) -> dict[str, Callable[[], None]] | None:
    """verl 0.9.1's vanilla / clip_cov / kl_cov loss + backward on ``batch``; None without verl.

    Same hyper-parameters as :func:`make_step` (PolicyLossConfig defaults, clip-higher 0.28).
    """
    try:
        from omegaconf import OmegaConf
        from verl.trainer.ppo import core_algos
    except ImportError as error:
        print(f"verl not importable ({error}); skipping the verl columns (see the docstring)")
        return None
    ours = PolicyLossConfig()
    config = OmegaConf.create(
        {
            "clip_ratio": ours.clip_ratio_low,
            "clip_ratio_low": ours.clip_ratio_low,
            "clip_ratio_high": CLIP_RATIO_HIGH,
            "clip_ratio_c": DUAL_CLIP,
            "global_batch_info": {},
            "policy_loss": {
                "clip_cov_ratio": ours.clip_cov_ratio,
                "clip_cov_lb": ours.clip_cov_lb,
                "clip_cov_ub": ours.clip_cov_ub,
                "kl_cov_ratio": ours.kl_cov_ratio,
                "ppo_kl_coef": ours.ppo_kl_coef,
            },
        }
    )
    functions = {
        "verl_vanilla": core_algos.compute_policy_loss_vanilla,
        "verl_clip_cov": core_algos.compute_policy_loss_clip_cov,
        "verl_kl_cov": core_algos.compute_policy_loss_kl_cov,
    }
    leaf = batch["log_probs"].clone().requires_grad_()

    def make(function: Callable) -> Callable[[], None]:
        def step() -> None:
            loss, _ = function(
                old_log_prob=batch["old_log_probs"],
                log_prob=leaf,
                advantages=batch["advantages"],
                response_mask=batch["response_mask"],
                loss_agg_mode="token-mean",
                config=config,
            )
            loss.backward()
            leaf.grad = None

        return step

    return {name: make(function) for name, function in functions.items()}


def _sync_debug(cuda: bool, mode: str):
    """Set the CUDA sync-debug mode inside the context (no-op on CPU)."""
    if not cuda:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def context():
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(mode)
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)

    return context()


def time_steps(
    steps: dict[str, Callable[[], None]], device: torch.device, repeats: int
) -> dict[str, float]:
    """Median milliseconds per call of every step, interleaved round-robin.

    Steps whose name starts with ``verl_`` run with CUDA sync-debug relaxed; the others under
    ``"error"`` on CUDA. A warm-up call of each (allocator, kernels, compilation) comes first.
    """
    cuda = device.type == "cuda"
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        step()
    for _ in range(repeats):
        for name, step in steps.items():
            mode = "default" if name.startswith("verl_") else "error"
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(True)
                with _sync_debug(cuda, mode):
                    start.record()
                    step()
                    end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                step()
                times[name].append(1e3 * (time.perf_counter() - t0))
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e4,1e5,1e6,1e7", help="token counts, comma-separated")
    add_device_options(parser, threads=False)
    parser.add_argument("--repeats", type=int, default=0, help="timed repeats (0: by size)")
    parser.add_argument(
        "--threads", default="0", help="CPU thread counts, comma-separated (0: torch default)"
    )
    parser.add_argument("--no-verl", action="store_true", help="skip verl even if importable")
    args = parser.parse_args(argv)
    device = resolve_device(args)
    if device is None:
        return 2
    sizes = [int(float(size)) for size in args.sizes.split(",")]
    thread_counts = [int(t) or torch.get_num_threads() for t in args.threads.split(",")]

    with_verl = not args.no_verl and verl_steps(make_batch(1000, device)) is not None
    columns = ["tokens", "threads", "vanilla ms"] + [f"{m} x vanilla" for m in MODES[1:]]
    if with_verl:
        columns += [f"{ours} x {theirs}" for ours, theirs in VERL_PAIRS.items()]
        columns += ["verl_clip_cov x verl_vanilla"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    print(*lines, sep="\n", flush=True)
    for n_tokens in sizes:
        batch = make_batch(n_tokens, device)
        steps = {mode: make_step(mode, batch, device) for mode in MODES}
        if with_verl:
            steps["vanilla_dual"] = make_step("vanilla", batch, device, dual_clip=True)
            steps |= verl_steps(batch)
        repeats = args.repeats or (7 if n_tokens >= 10**7 else 21 if n_tokens >= 10**6 else 41)
        for threads in thread_counts:
            torch.set_num_threads(threads)
            ms = time_steps(steps, device, repeats)
            cells = [f"{n_tokens:.0e}", str(threads), f"{ms['vanilla']:.2f}"]
            cells += [f"{ms[m] / ms['vanilla']:.2f}x" for m in MODES[1:]]
            if with_verl:
                cells += [f"{ms[ours] / ms[theirs]:.2f}x" for ours, theirs in VERL_PAIRS.items()]
                cells += [f"{ms['verl_clip_cov'] / ms['verl_vanilla']:.2f}x"]
            lines.append("| " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)

    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    syncs = ", project losses under sync_debug_mode=error" if device.type == "cuda" else ""
    note = (
        f"{datetime.date.today()}, torch {torch.__version__}, {where}{syncs}; median of "
        "interleaved repeats; one step = select_tokens + compute_policy_loss + backward "
        "(verl: its loss function + backward)."
    )
    print(note)
    if args.out:
        append_results(args.out, "bench_losses.py", argv, note, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
