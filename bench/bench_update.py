"""Update at length: one trainer optimisation step against a bare forward + backward + AdamW.

For each response length L, a :class:`~toy_entropy.training.trainer.Trainer` on ``reverse`` with
lists of L - 1 values (answers of L tokens, prompts of about L tokens; random initial weights, no
warm start) samples one rollout of about ``--tokens`` response tokens (rows = tokens / L).
On that batch, interleaved in one run, it times:

- ``step <mode>``: what the trainer does per optimiser step for ``loss_mode`` vanilla,
  clip_cov and kl_cov: the identity probe's forward before and after, and
  ``Trainer._optimise`` (no-grad scoring pass, batch-global selection with the covariance
  diagnostics, loss forward, backward, gradient clipping, AdamW), then the step's one host
  transfer of its metrics (an off-policy update, where KL-Cov's penalty acts);
- ``bare``: a forward pass of the same model over the same (B, Lp + L) tokens, masked
  cross-entropy of the response tokens, backward and AdamW (a separate AdamW over the same
  parameters).

It prints median seconds and each step's ratio to ``bare``. On CUDA the probe and the
update run under ``torch.cuda.set_sync_debug_mode("error")`` (the metrics transfer outside).

    python bench/bench_update.py                  # cpu-small, ~16k tokens, L = 64, 256, 512
    python bench/bench_update.py --device cuda --model-size gpu-10m --tokens 65536

Target (issue #12): a step with Clip-Cov or KL-Cov <= 1.5x the bare forward + backward + AdamW.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_rollout import no_host_sync, timed  # noqa: E402
from common import add_device_options, append_results, resolve_device  # noqa: E402

from toy_entropy.algorithms.losses import PolicyLossConfig  # noqa: E402
from toy_entropy.training.trainer import TrainConfig, Trainer  # noqa: E402
from toy_entropy.training.warmstart import WarmStartConfig  # noqa: E402

MODES = ("vanilla", "clip_cov", "kl_cov")
GENERATIONS = 8


def make_trainer(length: int, tokens: int, model_size: str, device: torch.device) -> Trainer:
    """A trainer whose rollout holds about ``tokens`` response tokens of length ``length``."""
    prompts = max(1, tokens // (length * GENERATIONS))
    config = TrainConfig(
        task="reverse",
        task_kwargs=f"list_length={length - 1},num_values=64",
        model_size=model_size,
        num_prompts=prompts,
        num_generations=GENERATIONS,
        eval_prompts=8,
        probe_states=8,
        warmstart=WarmStartConfig(steps=0),
        loss=PolicyLossConfig(clip_ratio_high=0.28),
    )
    return Trainer(config, seed=0, device=device)


def update_calls(trainer: Trainer, batch: dict) -> dict[str, Callable[[], object]]:
    """One optimiser step per loss mode, and the bare forward + backward + AdamW."""
    device = trainer.device
    rows = torch.arange(batch.tokens.shape[0], device=device)
    calls: dict[str, Callable[[], object]] = {}
    for mode in MODES:

        def step(mode: str = mode) -> None:
            trainer.loss_config = replace(trainer.loss_config, loss_mode=mode)
            with no_host_sync(device):
                before = trainer._probe_logits()
                metrics = trainer._optimise(batch, rows)
                after = trainer._probe_logits()
                identity = trainer._identity(before, after)
            values = [v.to(torch.float64) for v in (*metrics.values(), *identity)]
            torch.stack(values).tolist()  # the step's one host transfer

        calls[f"step {mode}"] = step

    model, start, length = trainer.model, trainer.prompt_length - 1, trainer.response_length
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mask = batch.mask.reshape(-1).float()  # (B * L,)

    def bare() -> None:
        with no_host_sync(device):
            optimizer.zero_grad(set_to_none=True)
            logits = model(batch.tokens, batch.attention)[:, start : start + length]
            nll = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                batch.responses.reshape(-1),
                reduction="none",
            )  # (B * L,)
            ((nll * mask).sum() / mask.sum()).backward()
            optimizer.step()

    calls["bare"] = bare
    return calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-size", default="cpu-small", help="toy_entropy.models.model.MODEL_SIZES name"
    )
    parser.add_argument("--tokens", type=int, default=16384, help="response tokens per batch")
    parser.add_argument("--lengths", default="64,256,512", help="response lengths L")
    parser.add_argument("--repeats", type=int, default=5)
    add_device_options(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args, args.threads)
    if device is None:
        return 2

    columns = ["L", "rows", "valid tokens", "bare s"] + [f"{m} x bare" for m in MODES]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    print(*lines, sep="\n", flush=True)
    for length in (int(x) for x in args.lengths.split(",")):
        trainer = make_trainer(length, args.tokens, args.model_size, device)
        batch = trainer.rollout()
        calls = update_calls(trainer, batch)
        times: dict[str, list[float]] = {name: [] for name in calls}
        for call in calls.values():  # warm-up
            call()
        for _ in range(args.repeats):
            for name, call in calls.items():
                times[name].append(timed(call, device))
        s = {name: statistics.median(values) for name, values in times.items()}
        cells = [str(length), str(batch.tokens.shape[0]), str(int(batch.mask.sum()))]
        cells += [f"{s['bare']:.3f}"] + [f"{s[f'step {m}'] / s['bare']:.2f}x" for m in MODES]
        lines.append("| " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)

    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {threads} threads"
    syncs = ", sync_debug_mode=error" if device.type == "cuda" else ""
    note = (
        f"{datetime.date.today()}, torch {torch.__version__}, {where}{syncs}; model size "
        f"{args.model_size}, task reverse (prompts of ~L tokens), {GENERATIONS} responses per "
        f"prompt, one mini-batch, no micro-batching; median of {args.repeats} interleaved "
        "repeats. A step = probe forward x2 + scoring forward + selection (cov_stats) + loss "
        "forward + backward + clip + AdamW + one metrics transfer."
    )
    print(note)
    if args.out:
        append_results(args.out, "bench_update.py", argv, note, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
