"""GPU verification: one command that measures the CUDA paths and writes one results file.

    python bench/gpu_check.py                                # on a GPU machine, < 8 minutes
    python bench/gpu_check.py --out $OUT/RESULTS_gpu.md      # + $OUT/RESULTS_gpu.json
    python bench/gpu_check.py --parts train-compile,nccl     # rerun some parts only
    python bench/gpu_check.py --device cpu --tiny --jobs 2 --out /tmp/gc.md   # CPU smoke (tests)

Every part runs its work in subprocesses within a wall-time budget (seconds) and ends ``ok``,
``failed`` (with the last error line of the subprocess) or ``skipped`` (with the reason); a
failure never stops the parts after it. The Markdown file (``--out``) and the JSON next to it
(same name, ``.json``) are rewritten after every part, so a killed run keeps what it measured.

Parts, in the order they run (on ``--device cuda``; ``--tiny`` shrinks every size):

- ``losses``: ``bench/bench_losses.py``'s ``make_step`` and ``time_steps`` (imported) at 1e6 and
  1e7 tokens:
  select_tokens + compute_policy_loss + backward, median ms per step of each loss mode and the
  ratios of clip_cov / kl_cov / pg to vanilla PPO; on CUDA under
  ``torch.cuda.set_sync_debug_mode("error")`` (any host sync raises).
- ``memory``: ``bench/bench_memory.py`` at N = 16384 tokens, V = 32768: peak memory rise of
  the loss path (MiB and in units of one fp32 (N, V) logits tensor) of each variant.
- ``train-bf16``, ``train-fp32``: 5 steps of ``toy_entropy.train`` at gpu-small (KL-Cov),
  bf16 autocast on / off; every optimiser step (``Trainer._optimise``: selection pass, loss,
  backward, clipping, AdamW) runs under sync-debug ``"error"``. Checks: the run exits 0, every
  number in metrics.jsonl is finite, no update was skipped; records rollout and update
  tokens/s (mean over steps 2..5, so step 1's warm-up is left out).
- ``scale-gpu-small``: ``bench/bench_scale.py`` at gpu-small, chunked vs full logits, update
  phase under sync-debug ``"error"``: rollout and update tokens/s, update peak memory (MiB and
  in units of one fp32 micro-batch logits tensor).
- ``nccl``: under ``torchrun --nproc_per_node 1`` with the nccl backend: an all_gather round
  trip of the project's ``TorchDistributed`` collectives, then select_tokens + loss + backward
  of clip_cov and kl_cov with ``dist=`` the nccl group under sync-debug ``"error"``, compared
  with ``dist=None``. (``toy_entropy.train`` creates no process group at world size 1, so this
  is what exercises nccl on a one-GPU machine.)
- ``torchrun-1``: ``torchrun --nproc_per_node 1 -m toy_entropy.train`` (Clip-Cov, 3 steps at
  gpu-small): the launcher path, finite metrics.
- ``torchrun-2``: ``torchrun --nproc_per_node 2 -m toy_entropy.train`` over nccl with DDP;
  only when ``torch.cuda.device_count() >= 2`` (nccl refuses two ranks on one GPU).
- ``train-compile``: as ``train-bf16`` with ``compile=true``; the sync check starts at step 2
  (step 1 compiles, and compilation may synchronise).
- ``scale-gpu-large``: ``bench/bench_scale.py`` at gpu-large shortened to 32 prompts x 8.
- ``cure``: ``toy-entropy run cure --quick`` when ``toy-entropy list`` shows an experiment
  named ``cure``; skipped with the reason otherwise.

On CPU (``--device cpu``) there is no sync-debug mode and bf16 is ignored by the trainer;
``nccl`` uses gloo instead and ``torchrun-2`` is skipped (two gloo ranks are tested by
tests/test_distributed_training.py). ``--tiny`` uses tiny sizes everywhere and, on CPU, the
``aot_eager`` compile backend (Dynamo + AOTAutograd; Inductor's C++ build takes over a minute
on 2 cores); ``--compile-backend`` overrides it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import functools
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
MIB = 2**20
OK, FAILED, SKIPPED = "ok", "failed", "skipped"

TINY_TRAIN = [
    "model_size=cpu-nano",
    "extra_tokens=16",
    "task_kwargs=list_length=3,num_values=5",
    "num_prompts=4",
    "num_mini_batches=2",
    "micro_batch_size=8",
    "rollout_micro_batch_size=16",
    "eval_prompts=4",
    "eval_samples=2",
    "probe_states=4",
    "warmstart.learning_rate=1e-2",
]
"""--tiny: a preset's knobs (chunking, micro-batches, bf16, mini-batches) at toy sizes: 4 x 8
rows, 4-token answers, a 2-layer 32-wide model, V = 32."""


class PartSkipped(Exception):
    """The part does not apply here; the message says why."""


class PartFailed(Exception):
    """The part ran and failed; the message is one line saying what failed."""


@dataclass
class Part:
    """One measured part: its name, wall-time budgets (s; full sizes, --tiny) and the function
    that runs it. The --tiny budgets leave room for a loaded 2-core CPU."""

    name: str
    budget_s: float
    tiny_budget_s: float
    run: Callable[[Context], dict]
    summary: str


@dataclass
class Context:
    """What a part needs: options, the per-part deadline and a log of the commands it ran."""

    args: argparse.Namespace
    workdir: Path
    deadline: float = 0.0
    commands: list[str] = field(default_factory=list)
    last_output: str = ""

    @property
    def cuda(self) -> bool:
        return self.args.device == "cuda"

    @property
    def tiny(self) -> bool:
        return self.args.tiny

    def remaining(self) -> float:
        """Seconds left of the part's budget; raises PartFailed when none is left."""
        left = self.deadline - time.monotonic()
        if left <= 1:
            raise PartFailed("budget exhausted before the next command could start")
        return left

    def env(self) -> dict[str, str]:
        """Environment of every subprocess: this checkout first on PYTHONPATH, a private
        warm-start cache (shared by the parts), one thread per process on CPU."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["TOY_ENTROPY_CACHE"] = str(self.workdir / "warmstart-cache")
        env["PYTHONUNBUFFERED"] = "1"
        if not self.cuda:
            env.setdefault("OMP_NUM_THREADS", "1")
        return env


@dataclass
class Completed:
    """A finished subprocess: exit status, output, wall seconds, whether it was killed."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool


def last_error_line(text: str) -> str:
    """The most telling line of a failed run's output: the last ``SomethingError: ...`` line of
    a traceback when there is one, else the last non-empty line."""
    # torchrun's own ChildFailedError summary says nothing about the cause: skip it. A rank's
    # stderr may run into the launcher's on one line: cut a glued "Traceback (...)".
    lines = [
        line.strip().split("Traceback (most recent call last)")[0]
        for line in text.splitlines()
        if line.strip() and "ChildFailedError" not in line
    ]
    pattern = re.compile(r"^([\w.]+(Error|Exception|Interrupt)|error)\b.*")
    for line in reversed(lines):
        if pattern.match(line) or "error:" in line:
            return line[:400]
    return lines[-1][:400] if lines else "(no output)"


def run_command(ctx: Context, command: list[str], env: dict | None = None) -> Completed:
    """Run ``command`` from the repository root within the part's remaining budget.

    The command gets its own process group; on timeout the whole group (the command and the
    processes it started, e.g. torchrun's ranks) is killed.

    Raises:
        PartFailed: non-zero exit status or timeout, with the last error line.
    """
    timeout = ctx.remaining()
    ctx.commands.append(shlex.join(command))
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env or ctx.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        timed_out = True
    except KeyboardInterrupt:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    done = Completed(process.returncode, stdout, stderr, time.monotonic() - started, timed_out)
    ctx.last_output = (stdout + "\n" + stderr)[-4000:]
    if timed_out:
        raise PartFailed(
            f"timed out after {done.seconds:.0f} s (part budget); last line: "
            + last_error_line(stderr or stdout)
        )
    if done.returncode != 0:
        raise PartFailed(f"exit {done.returncode}: " + last_error_line(stderr or stdout))
    return done


def last_json_line(text: str, what: str) -> dict:
    """The JSON object printed as the last line of ``text`` (a child's result)."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise PartFailed(f"{what} printed no JSON result line")


def nccl_version() -> str:
    """The nccl version torch was built with, as text."""
    version = torch.cuda.nccl.version()
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def import_bench(name: str):
    """Import ``bench/<name>.py`` as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ---- metrics.jsonl ------------------------------------------------------------------------


def check_run_dir(run_dir: Path, total_steps: int) -> dict:
    """Read a training run's metrics.jsonl: every step present, every number finite.

    Returns:
        ``{"steps", "finite", "last": {reward, entropy, loss/total, ...}}``.

    Raises:
        PartFailed: a missing file or step, a non-finite value (named with its step and
            key) or a skipped (non-finite) update.
    """
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise PartFailed(f"{path} was not written")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    steps = sorted({row["step"] for row in rows if row.get("step", 0) >= 1})
    if steps != list(range(1, total_steps + 1)):
        raise PartFailed(f"metrics.jsonl holds steps {steps}, expected 1..{total_steps}")
    values = 0
    for row in rows:
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values += 1
                if not math.isfinite(value):
                    raise PartFailed(f"metrics.jsonl: {key} = {value} at step {row.get('step')}")
    last = [row for row in rows if row.get("step") == total_steps and "reward" in row][-1]
    if last.get("guard/skipped_updates", 0):
        raise PartFailed(f"{last['guard/skipped_updates']:.0f} update(s) skipped as non-finite")
    keys = ("reward", "entropy", "loss/total", "optim/grad_norm", "select/frac")
    return {
        "steps": len(steps),
        "finite_values": values,
        "all_finite": True,
        "last": {k: last[k] for k in keys if k in last},
    }


# ---- parts --------------------------------------------------------------------------------


def part_losses(ctx: Context) -> dict:
    sizes = "1e4" if ctx.tiny else "1e6,1e7"
    command = [sys.executable, __file__, "--child", "losses", "--device", ctx.args.device]
    done = run_command(ctx, [*command, "--sizes", sizes])
    result = last_json_line(done.stdout, "the losses child")
    ratios = {
        size: {f"{m}/vanilla": ms[m] / ms["vanilla"] for m in ms if m != "vanilla"}
        for size, ms in result["ms"].items()
    }
    return {**result, "ratios": ratios}


def part_memory(ctx: Context) -> dict:
    if ctx.tiny:
        sizes = ["--tokens", "256", "--vocab", "2048", "--hidden", "64"]
    else:
        sizes = ["--tokens", "16384", "--vocab", "32768"]
    bench = import_bench("bench_memory")
    variants = {}
    for variant in bench.VARIANTS:
        command = [sys.executable, str(BENCH / "bench_memory.py"), "--device", ctx.args.device]
        done = run_command(ctx, [*command, *sizes, "--variant", variant])
        variants[variant] = last_json_line(done.stdout, f"bench_memory --variant {variant}")
    tokens, vocab = int(sizes[1]), int(sizes[3])
    logits = tokens * vocab * 4
    for r in variants.values():
        r["peak_rise_mib"] = r["peak_rise_bytes"] / MIB
        r["x_logits"] = r["peak_rise_bytes"] / logits
    return {"tokens": tokens, "vocab": vocab, "logits_mib": logits / MIB, "variants": variants}


def _train_overrides(ctx: Context, steps: int, extra: list[str]) -> list[str]:
    sets = ["scale=gpu-small", *(TINY_TRAIN if ctx.tiny else [])]
    sets += [f"total_steps={steps}", f"warmstart.steps={40 if ctx.tiny else 50}", *extra]
    return [arg for item in sets for arg in ("--set", item)]


def _train(ctx: Context, name: str, extra: list[str], sync_from: int, compile_: bool) -> dict:
    steps = 2 if ctx.tiny else 5
    run_dir = ctx.workdir / name
    report = ctx.workdir / f"{name}.report.json"
    command = [sys.executable, __file__, "--child", "train", "--device", ctx.args.device]
    command += ["--report", str(report), "--sync-from-step", str(sync_from)]
    if compile_ and ctx.args.compile_backend:
        command += ["--compile-backend", ctx.args.compile_backend]
    train_args = ["--out", str(run_dir), "--device", ctx.args.device, "--quiet"]
    train_args += _train_overrides(ctx, steps, ["loss.loss_mode=kl_cov", *extra])
    try:
        run_command(ctx, [*command, "--", *train_args])
    except PartFailed:
        child = json.loads(report.read_text()) if report.exists() else {}
        error = child.get("sync_error")
        if error:
            raise PartFailed(
                f"host sync in the loss path at step {error['step']} ({error['where']}): "
                f"{error['error']}"
            ) from None
        raise
    child = json.loads(report.read_text())
    measured = check_run_dir(run_dir, steps)
    later = child.get("steps", [])[1:]  # step 1 warms up (allocator, kernels, compilation)
    for key in ("perf/rollout_tokens_per_s", "perf/update_tokens_per_s"):
        values = [s[key] for s in later if key in s]
        measured[key.split("/")[1] + "_mean_steps_2_on"] = sum(values) / max(1, len(values))
    measured["sync_check"] = (
        f"{child.get('optimise_checked', 0)} of {child.get('optimise_calls', 0)} optimiser "
        f'steps under set_sync_debug_mode("error"), from step {sync_from}'
        if ctx.cuda
        else "n/a on CPU"
    )
    measured["bf16"] = ("bf16=false" not in extra) and ctx.cuda
    measured["compile_backend"] = child.get("compile_backend")
    measured["settings"] = " ".join(train_args[5:])
    return measured


def part_train_bf16(ctx: Context) -> dict:
    return _train(ctx, "train-bf16", [], sync_from=1, compile_=False)


def part_train_fp32(ctx: Context) -> dict:
    return _train(ctx, "train-fp32", ["bf16=false"], sync_from=1, compile_=False)


def part_train_compile(ctx: Context) -> dict:
    return _train(ctx, "train-compile", ["compile=true"], sync_from=2, compile_=True)


def _scale(ctx: Context, preset: str, extra: list[str]) -> dict:
    bench = import_bench("bench_scale")
    common = [sys.executable, str(BENCH / "bench_scale.py"), "--scale", preset]
    common += ["--device", ctx.args.device, "--repeats", "1" if ctx.tiny else "2"]
    common += ["--threads", "1"] if not ctx.cuda else ["--threads", "0", "--sync-debug"]
    for item in [*(TINY_TRAIN if ctx.tiny else []), *extra]:
        common += ["--set", item]
    # As bench_scale's own driver: large blocks go to mmap, so CPU peaks see freed memory.
    env = dict(ctx.env(), MALLOC_MMAP_THRESHOLD_="65536")
    variants = {}
    for variant in bench.VARIANTS:
        done = run_command(ctx, [*common, "--variant", variant], env=env)
        r = last_json_line(done.stdout, f"bench_scale --variant {variant}")
        r["update_peak_mib"] = r["update_peak_bytes"] / MIB
        r["x_logits"] = r["update_peak_bytes"] / r["logits_bytes"]
        variants[variant] = r
    new, base = variants["chunked"], variants["full-logits"]
    return {
        "preset": preset,
        "overrides": extra,
        "variants": variants,
        "chunked_over_full_update_speed": new["update_tokens_per_s"] / base["update_tokens_per_s"],
        "chunked_over_full_update_peak": new["update_peak_bytes"] / base["update_peak_bytes"],
    }


def part_scale_small(ctx: Context) -> dict:
    return _scale(ctx, "gpu-small", [])


def part_scale_large(ctx: Context) -> dict:
    return _scale(ctx, "gpu-large", [] if ctx.tiny else ["num_prompts=32"])


def part_nccl(ctx: Context) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "1", __file__, "--child", "collectives"]
    command += ["--device", ctx.args.device, "--tokens", "10000" if ctx.tiny else "1000000"]
    done = run_command(ctx, command)
    result = last_json_line(done.stdout, "the collectives child")
    unequal = [m for m, r in result["modes"].items() if not r["equal"]]
    if unequal:
        raise PartFailed(f"dist=nccl group differs from dist=None for {', '.join(unequal)}")
    return result


def _torchrun_train(ctx: Context, name: str, ranks: int) -> dict:
    steps = 2 if ctx.tiny else 3
    run_dir = ctx.workdir / name
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(ranks), "-m", "toy_entropy.train"]
    command += ["--out", str(run_dir), "--device", ctx.args.device, "--quiet"]
    sets = ["loss.loss_mode=clip_cov", "loss.clip_cov_ratio=0.02", "loss.clip_cov_lb=0"]
    command += _train_overrides(ctx, steps, sets)
    run_command(ctx, command)
    measured = check_run_dir(run_dir, steps)
    measured["settings"] = " ".join(_train_overrides(ctx, steps, sets))
    config = json.loads((run_dir / "config.json").read_text())
    measured["world_size"] = config.get("world_size")
    if measured["world_size"] != ranks:
        raise PartFailed(f"config.json says world_size={measured['world_size']}, not {ranks}")
    measured["backend"] = (
        "none (init_from_env creates no process group at world size 1)"
        if ranks == 1
        else ("nccl" if ctx.cuda else "gloo")
    )
    return measured


def part_torchrun_1(ctx: Context) -> dict:
    return _torchrun_train(ctx, "torchrun-1", 1)


def part_torchrun_2(ctx: Context) -> dict:
    if not ctx.cuda:
        raise PartSkipped(
            "needs 2 CUDA devices; two gloo ranks on CPU are tested by "
            "tests/test_distributed_training.py"
        )
    count = torch.cuda.device_count()
    if count < 2:
        raise PartSkipped(f"torch.cuda.device_count() = {count}; nccl needs one GPU per rank")
    return _torchrun_train(ctx, "torchrun-2", 2)


def part_cure(ctx: Context) -> dict:
    # What `toy-entropy list` prints, from this checkout (not an installed copy).
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from toy_entropy.experiments import list_experiments

    ctx.commands.append("toy-entropy list (experiments.list_experiments, in-process)")
    names = [spec.name for spec in list_experiments()]
    if "cure" not in names:
        raise PartSkipped("`toy-entropy list` shows no experiment named cure")
    if ctx.tiny:
        raise PartSkipped("cure is listed, but --tiny does not run it (--quick takes minutes)")
    out = ctx.workdir / "cure"
    command = [
        sys.executable,
        "-m",
        "toy_entropy.experiments.cli",
        "run",
        "cure",
        "--quick",
        "--quiet",
    ]
    run_command(ctx, [*command, "--device", ctx.args.device, "--out", str(out)])
    summaries = sorted(out.rglob("summary.json"))
    nonfinite = 0
    for path in out.rglob("metrics.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            nonfinite += sum(
                1 for v in row.values() if isinstance(v, float) and not math.isfinite(v)
            )
    claims = {}
    top = out / "summary.json"
    if top.exists():
        for claim in json.loads(top.read_text()).get("claims", []):
            if isinstance(claim, dict) and "name" in claim:
                claims[claim["name"]] = claim.get("holds")
    return {"summaries": len(summaries), "nonfinite_metric_values": nonfinite, "claims": claims}


PARTS = [
    Part(
        "losses", 60, 60, part_losses, "bench_losses: ms per step of each loss mode, ratios to PPO"
    ),
    Part("memory", 45, 60, part_memory, "bench_memory: loss-path peak vs one fp32 logits tensor"),
    Part("train-bf16", 75, 60, part_train_bf16, "toy_entropy.train gpu-small, KL-Cov, bf16"),
    Part("train-fp32", 75, 60, part_train_fp32, "toy_entropy.train gpu-small, KL-Cov, bf16=false"),
    Part("scale-gpu-small", 90, 90, part_scale_small, "bench_scale gpu-small: chunked vs full"),
    Part("nccl", 45, 60, part_nccl, "torchrun 1 rank: all_gather, loss with dist= vs None"),
    Part("torchrun-1", 60, 60, part_torchrun_1, "torchrun 1 rank -m toy_entropy.train, Clip-Cov"),
    Part("torchrun-2", 90, 10, part_torchrun_2, "torchrun 2 ranks -m toy_entropy.train, nccl"),
    Part(
        "train-compile", 150, 120, part_train_compile, "toy_entropy.train gpu-small, compile=true"
    ),
    Part("scale-gpu-large", 150, 90, part_scale_large, "bench_scale gpu-large, shortened"),
    Part("cure", 90, 30, part_cure, "toy-entropy run cure --quick, when listed"),
]


# ---- children (run in their own processes) ------------------------------------------------


def child_losses(args: argparse.Namespace) -> None:
    """Time the loss modes with bench_losses (make_batch, make_step, time_steps, which runs
    the project's steps under CUDA sync-debug "error"); print one JSON line."""
    bench = import_bench("bench_losses")
    device = torch.device(args.device)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    ms = {}
    for n in sizes:
        repeats = 3 if n < 10**5 else 7 if n >= 10**7 else 21
        batch = bench.make_batch(n, device)
        steps = {mode: bench.make_step(mode, batch, device) for mode in bench.MODES}
        ms[f"{n:.0e}"] = bench.time_steps(steps, device, repeats)
    sync = "n/a on CPU"
    if args.device == "cuda":
        sync = 'set_sync_debug_mode("error") (bench_losses.time_steps)'
    print(json.dumps({"ms": ms, "modes": list(bench.MODES), "sync_debug": sync}))


def child_collectives(args: argparse.Namespace) -> None:
    """Under torchrun: the project's collectives and distributed loss path over a process group
    (nccl on CUDA, gloo on CPU); prints one JSON line."""
    import torch.distributed as dist

    from toy_entropy.algorithms.losses import PolicyLossConfig, compute_policy_loss, select_tokens
    from toy_entropy.algorithms.losses.distributed import TorchDistributed

    cuda = args.device == "cuda"
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        comm = TorchDistributed()
        probe = torch.arange(6.0, device=device).view(2, 3) + comm.rank
        gathered = comm.all_gather(probe)  # also creates the communicator, outside sync checks
        if tuple(gathered.shape) != (comm.world_size, 2, 3) or not torch.equal(
            gathered[comm.rank], probe
        ):
            raise RuntimeError(f"all_gather returned {tuple(gathered.shape)} / wrong values")
        batch = import_bench("bench_losses").make_batch(args.tokens, device)
        tensors = (batch["old_log_probs"], batch["advantages"], batch["response_mask"])
        modes = {}
        for mode in ("clip_cov", "kl_cov"):
            config = PolicyLossConfig(loss_mode=mode, clip_ratio_high=0.28)
            outcome = {}
            for label, group in (("single", None), ("dist", comm)):
                generator = torch.Generator(device=device).manual_seed(0)
                leaf = batch["log_probs"].clone().requires_grad_()
                if cuda:
                    torch.cuda.set_sync_debug_mode("error")
                try:
                    selection = select_tokens(
                        config, leaf.detach(), *tensors, generator=generator, dist=group
                    )
                    loss, _ = compute_policy_loss(config, leaf, *tensors, selection)
                    loss.backward()
                finally:
                    if cuda:
                        torch.cuda.set_sync_debug_mode("default")
                outcome[label] = (loss.detach(), leaf.grad)
            (loss_a, grad_a), (loss_b, grad_b) = outcome["single"], outcome["dist"]
            modes[mode] = {
                "loss_single": loss_a.item(),
                "loss_dist": loss_b.item(),
                "max_abs_grad_diff": (grad_a - grad_b).abs().max().item(),
                "equal": bool(torch.allclose(loss_a, loss_b) and torch.allclose(grad_a, grad_b)),
            }
        result = {
            "backend": dist.get_backend(),
            "world_size": comm.world_size,
            "tokens": args.tokens,
            "all_gather_round_trip": True,
            "sync_debug": 'set_sync_debug_mode("error")' if cuda else "n/a on CPU",
            "modes": modes,
        }
        if cuda:
            result["nccl_version"] = nccl_version()
        print(json.dumps(result))
    finally:
        dist.destroy_process_group()


def child_train(args: argparse.Namespace, train_argv: list[str]) -> int:
    """Run ``toy_entropy.train.main(train_argv)`` (what ``python -m toy_entropy.train`` runs)
    with every ``Trainer._optimise`` call from step ``--sync-from-step`` on under
    ``set_sync_debug_mode("error")`` on CUDA; per-step tokens/s and the sync verdict go to
    ``--report`` (JSON)."""
    import toy_entropy.train as train_module
    from toy_entropy.training.trainer import Trainer

    for name in ("_optimise", "train_step"):
        if not callable(getattr(Trainer, name, None)):
            raise RuntimeError(f"gpu_check: Trainer.{name} is gone; update bench/gpu_check.py")
    report: dict = {"optimise_calls": 0, "optimise_checked": 0, "sync_error": None, "steps": []}
    report_path = Path(args.report)
    cuda = args.device == "cuda"
    if args.compile_backend:
        original_compile = torch.compile
        torch.compile = functools.partial(original_compile, backend=args.compile_backend)
        report["compile_backend"] = args.compile_backend
    elif "compile=true" in train_argv:
        report["compile_backend"] = "inductor (default)"

    optimise, train_step = Trainer._optimise, Trainer.train_step

    def checked_optimise(self, *a, **kw):
        report["optimise_calls"] += 1
        step = self.step + 1  # train_step counts the step after its updates
        if not cuda or step < args.sync_from_step:
            return optimise(self, *a, **kw)
        torch.cuda.set_sync_debug_mode("error")
        try:
            result = optimise(self, *a, **kw)
        except RuntimeError as error:
            if "synchroniz" in str(error):
                frames = traceback.extract_tb(error.__traceback__)
                ours = [f for f in frames if "toy_entropy" in f.filename] or frames
                where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno} in {ours[-1].name}"
                report["sync_error"] = {
                    "step": step,
                    "where": where,
                    "error": last_error_line(str(error)),
                }
            raise
        finally:
            torch.cuda.set_sync_debug_mode("default")
        report["optimise_checked"] += 1
        return result

    def recorded_train_step(self):
        host = train_step(self)
        report["steps"].append({k: v for k, v in host.items() if k.startswith("perf/")})
        report_path.write_text(json.dumps(report))
        return host

    Trainer._optimise, Trainer.train_step = checked_optimise, recorded_train_step
    try:
        return train_module.main(train_argv)
    finally:
        report_path.write_text(json.dumps(report))


# ---- results ------------------------------------------------------------------------------


def environment(args: argparse.Namespace) -> dict:
    """Date, device and versions for the results header."""
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "device": args.device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "tiny": args.tiny,
        "command": shlex.join(["python", "bench/gpu_check.py", *sys.argv[1:]]),
    }
    if args.device == "cuda":
        info["device_name"] = torch.cuda.get_device_name()
        info["device_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
        info["nccl"] = nccl_version()
        total = torch.cuda.get_device_properties(0).total_memory
        info["device_memory_gib"] = round(total / 2**30, 1)
    else:
        info["device_name"] = f"CPU ({platform.processor() or platform.machine()})"
        info["device_count"] = 0
        info["cpu_count"] = os.cpu_count()
    return info


def _fmt(value, digits: int = 3) -> str:
    """A number to ``digits`` significant digits (thousands as integers); a dict as
    ``key value, ...``; anything else as text."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v, digits)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}g}"
    return str(value)


def _details(name: str, m: dict) -> list[str]:
    """Markdown lines with a part's measurements."""
    lines: list[str] = []
    if name == "losses":
        modes = m["modes"]
        lines.append("| tokens | " + " | ".join(f"{x} ms" for x in modes) + " | ratios |")
        lines.append("|" + "---|" * (len(modes) + 2))
        for size, ms in m["ms"].items():
            ratios = ", ".join(f"{k} {v:.2f}x" for k, v in m["ratios"][size].items())
            lines.append(f"| {size} | " + " | ".join(f"{ms[x]:.3f}" for x in modes))
            lines[-1] += f" | {ratios} |"
        lines.append(f"\nsync debug: {m['sync_debug']}")
    elif name == "memory":
        lines.append(f"N = {m['tokens']}, V = {m['vocab']}, one fp32 logits {m['logits_mib']:.1f}")
        lines[-1] += " MiB\n\n| variant | peak rise MiB | x logits | seconds |\n|---|---|---|---|"
        for variant, r in m["variants"].items():
            lines.append(
                f"| {variant} | {r['peak_rise_mib']:.1f} | {r['x_logits']:.2f} | "
                f"{r['seconds']:.3f} |"
            )
    elif name.startswith("scale"):
        info = m["variants"]["chunked"]
        lines.append(
            f"preset {m['preset']} {' '.join(m['overrides'])}: V = {info['vocab']}, "
            f"T = {info['response_length']}, {info['params'] / 1e6:.2f}M parameters, "
            f"{info['rows']} rows, micro-batch {info['micro_batch_size']}, one fp32 logits "
            f"tensor {info['logits_bytes'] / MIB:.1f} MiB, sync debug {info['sync_debug']}"
        )
        lines += [
            "",
            "| variant | rollout tok/s | update tok/s | update peak MiB | x logits |",
            "|---|---|---|---|---|",
        ]
        for variant, r in m["variants"].items():
            lines.append(
                f"| {variant} | {r['rollout_tokens_per_s']:,.0f} | "
                f"{r['update_tokens_per_s']:,.0f} | {r['update_peak_mib']:.1f} | "
                f"{r['x_logits']:.2f} |"
            )
        lines.append(
            f"\nchunked / full logits: update speed x{m['chunked_over_full_update_speed']:.2f}, "
            f"update peak x{m['chunked_over_full_update_peak']:.2f}"
        )
    elif name == "nccl":
        lines.append(
            f"backend {m['backend']}, world size {m['world_size']}, {m['tokens']} tokens, "
            f"sync debug {m['sync_debug']}"
        )
        for mode, r in m["modes"].items():
            lines.append(
                f"- {mode}: loss single {r['loss_single']:.6g}, dist {r['loss_dist']:.6g}, "
                f"max |grad diff| {r['max_abs_grad_diff']:.2g}, equal {r['equal']}"
            )
    else:
        lines += [f"- {k}: {_fmt(v)}" for k, v in m.items()]
    return lines


def write_results(out: Path, info: dict, results: list[dict]) -> None:
    """Write the JSON and the Markdown results (each via a temporary file and a rename)."""
    data = {"environment": info, "parts": results}
    json_path = out.with_suffix(".json")
    md = [
        "# GPU verification (`bench/gpu_check.py`)",
        "",
        f"- date (UTC): {info['date_utc']}",
        f"- command: `{info['command']}`",
        f"- device: {info['device']}, {info['device_name']} (count {info['device_count']})",
        f"- torch {info['torch']}, CUDA {info.get('cuda', '-')}, nccl {info.get('nccl', '-')}, "
        f"python {info['python']}",
        f"- tiny sizes: {info['tiny']}; total wall time {info.get('total_wall_s', 0):.1f} s "
        f"(budget {info['budget_s']:.0f} s)",
        f"- parts run at a time: {info.get('jobs', 1)}"
        + (" (their timings overlap)" if info.get("jobs", 1) > 1 else ""),
        f"- JSON with every number: `{json_path.name}`",
        "",
        "| part | outcome | wall s | budget s | what | detail |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        detail = r.get("detail", "").replace("|", "/")
        md.append(
            f"| {r['name']} | {r['outcome']} | {r['wall_s']:.1f} | {r['budget_s']:.0f} | "
            f"{r['what']} | {detail} |"
        )
    for r in results:
        if r["outcome"] == OK:
            md += ["", f"## {r['name']}", "", *_details(r["name"], r["measured"])]
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((json_path, json.dumps(data, indent=2)), (out, "\n".join(md) + "\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def run_part(part: Part, args: argparse.Namespace, workdir: Path, end: float) -> dict:
    """Run one part within its own budget and what is left of the total; never raises."""
    budget = part.tiny_budget_s if args.tiny else part.budget_s
    ctx = Context(args, workdir)
    t0 = time.monotonic()
    ctx.deadline = t0 + min(budget, end - t0)
    entry = {"name": part.name, "what": part.summary, "budget_s": budget}
    print(f"[gpu_check] {part.name} ...", flush=True)
    try:
        if end - t0 < 5:
            raise PartSkipped(f"the total budget of {args.budget_s:.0f} s is spent")
        entry["measured"] = part.run(ctx)
        entry["outcome"], entry["detail"] = OK, ""
    except PartSkipped as why:
        entry["outcome"], entry["detail"] = SKIPPED, str(why)
    except PartFailed as why:
        entry["outcome"], entry["detail"] = FAILED, str(why)
        entry["output_tail"] = ctx.last_output
    except Exception as error:  # a bug or an unexpected result format: record it
        entry["outcome"] = FAILED
        entry["detail"] = f"{type(error).__name__}: {error}"[:400]
        entry["output_tail"] = ctx.last_output
    entry["wall_s"] = time.monotonic() - t0
    entry["commands"] = ctx.commands
    print(
        f"[gpu_check] {part.name}: {entry['outcome']} ({entry['wall_s']:.1f} s) {entry['detail']}",
        flush=True,
    )
    return entry


def run_parts(args: argparse.Namespace) -> list[dict]:
    """Run the selected parts in PARTS order (``--jobs`` at a time), each within its budget and
    the total budget; the results files are rewritten after every part."""
    names = [p.name for p in PARTS]
    wanted = names if args.parts == "all" else [s.strip() for s in args.parts.split(",")]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise SystemExit(f"gpu_check: unknown part(s) {unknown}; parts: {', '.join(names)}")
    parts = [p for p in PARTS if p.name in wanted]
    out = Path(args.out)
    info = environment(args)
    info["budget_s"] = args.budget_s
    info["jobs"] = args.jobs
    started = time.monotonic()
    end = started + args.budget_s
    done: dict[str, dict] = {}
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)

        def task(part: Part) -> None:
            entry = run_part(part, args, workdir, end)
            with lock:
                done[part.name] = entry
                info["total_wall_s"] = time.monotonic() - started
                write_results(out, info, [done[p.name] for p in parts if p.name in done])

        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for future in [pool.submit(task, part) for part in parts]:
                future.result()
    return [done[p.name] for p in parts]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_argv: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, train_argv = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU test)")
    parser.add_argument("--out", default=str(BENCH / "RESULTS_gpu.md"), help="Markdown results")
    parser.add_argument("--parts", default="all", help="comma-separated part names, or all")
    parser.add_argument(
        "--budget-s", type=float, default=460.0, help="total wall-time budget, seconds"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="parts run at a time (1 on a GPU, so that timings do not overlap; 2 for the CPU test)",
    )
    parser.add_argument("--workdir", default=None, help="keep run directories here (else tmp)")
    parser.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend of train-compile (default: inductor; aot_eager on CPU --tiny)",
    )
    parser.add_argument(
        "--child", choices=["losses", "collectives", "train"], help=argparse.SUPPRESS
    )
    parser.add_argument("--sizes", default="1e6,1e7", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=10**6, help=argparse.SUPPRESS)
    parser.add_argument("--report", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sync-from-step", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child == "losses":
        child_losses(args)
        return 0
    if args.child == "collectives":
        child_collectives(args)
        return 0
    if args.child == "train":
        return child_train(args, train_argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda, but CUDA is not available (try --device cpu --tiny)")
        return 2
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.compile_backend is None and args.tiny and args.device == "cpu":
        args.compile_backend = "aot_eager"
    results = run_parts(args)
    failed = [r["name"] for r in results if r["outcome"] == FAILED]
    print(f"[gpu_check] wrote {args.out} and {Path(args.out).with_suffix('.json')}")
    print(f"[gpu_check] failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
