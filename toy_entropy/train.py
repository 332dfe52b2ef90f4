"""One sequence RL run, on one process or data-parallel under torchrun.

    python -m toy_entropy.train --out runs/one --set total_steps=20
    torchrun --nproc_per_node 2 -m toy_entropy.train --out runs/two --set total_steps=20
    torchrun --nproc_per_node 8 -m toy_entropy.train --device cuda --out runs/big \\
        --set scale=gpu-large
    torchrun --nproc_per_node 2 -m toy_entropy.train --resume runs/two --set total_steps=20

With N ranks (gloo on CPU, nccl on CUDA, one GPU per rank) the run trains as one process on
the whole batch would (``toy_entropy.training.parallel``). Rank 0 writes metrics.jsonl, TensorBoard
and the checkpoints into ``--out``; ``summary.json`` holds the last step's metrics. The
run-directory options and rules are those of ``toy-entropy run`` (``toy_entropy.runs.rundir``): an
existing ``--out`` needs ``--resume`` or ``--overwrite``. ``--resume`` continues from the newest
checkpoint in ``--out/checkpoints`` (every rank reads it, so ``--out`` must be on a file system all
ranks see) with the same options and the same number of ranks. ``--dist-timeout`` bounds how long a
collective waits for a frozen or dead rank. SIGINT / SIGTERM finish the step in flight,
checkpoint it and exit 130 / 143.
"""

from __future__ import annotations

import argparse
import errno
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed

from toy_entropy.runs.rundir import (
    OutDir,
    RunDirError,
    add_run_directory_options,
    check_new_out_dir,
    check_resume_dir,
    prepare_out_dir,
    resume_directory,
    thread_count,
)
from toy_entropy.runs.runlog import RunWriter, environment_info, write_run_summary
from toy_entropy.training import interrupts
from toy_entropy.training.config import ConfigError, apply_overrides, config_to_dict
from toy_entropy.training.parallel import init_from_env
from toy_entropy.training.trainer import NonFiniteError, TrainConfig, Trainer, resume_state
from toy_entropy.training.warmstart import check_cache_dir

__all__ = ["main"]

PROG = "python -m toy_entropy.train"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    add_run_directory_options(parser, out_help="run directory (rank 0 writes)")
    parser.add_argument("--seed", type=int, default=0, help="run seed (the same on every rank)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="TrainConfig field, e.g. --set scale=gpu-small (repeatable)",
    )
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="a collective that waits longer for a rank (frozen or dead) ends the job",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-step line on stdout")
    return parser


def _out_dir(args: argparse.Namespace) -> Path:
    """The run directory the options name (``--out`` or ``--resume DIR``)."""
    out = resume_directory(args) or args.out
    if out is None:
        raise RunDirError("--out is required (the run directory)")
    if not args.dist_timeout > 0:
        raise RunDirError(f"--dist-timeout={args.dist_timeout} is invalid: expected seconds > 0")
    return out


def _resume_state(out: Path, config: TrainConfig, parallel) -> dict:
    """The newest checkpoint in ``out``, checked against this run before anything is written."""
    check_resume_dir(out)
    state = resume_state(out / "checkpoints", config, required=True)
    parallel.check_checkpoint(state)
    return state


def _print_step(trainer: Trainer, metrics: dict) -> None:
    print(
        f"step {trainer.step:>4}  reward {metrics['reward']:.3f}  "
        f"entropy {metrics['entropy']:.4f}  loss {metrics['loss/total']:+.4f}  "
        f"rollout {metrics['perf/rollout_tokens_per_s']:,.0f} tok/s  "
        f"update {metrics['perf/update_tokens_per_s']:,.0f} tok/s",
        flush=True,
    )


def _train(args: argparse.Namespace) -> int:
    out_path = _out_dir(args)
    config = apply_overrides(TrainConfig(), args.overrides)
    check_cache_dir()
    threads = thread_count(args.threads)
    torch.set_num_threads(threads)
    parallel, device = init_from_env(args.device, timedelta(seconds=args.dist_timeout))
    # Every rank checks before rank 0 writes anything, so a refusal leaves the disk as it was.
    state = _resume_state(out_path, config, parallel) if args.resume else None
    if state is None:
        check_new_out_dir(out_path, overwrite=args.overwrite)
    parallel.barrier()
    out = OutDir(out_path, None)
    writer = None
    if parallel.is_main:
        if state is None:
            out = prepare_out_dir(out_path, overwrite=args.overwrite)
        writer = RunWriter(out.path, resume_from_step=None if state is None else state["step"])
        if state is None:
            writer.write_config(
                {
                    "experiment": "train",
                    "seed": args.seed,
                    "world_size": parallel.world_size,
                    "threads": threads,
                    "config": config_to_dict(config),
                    **environment_info(str(device)),
                }
            )

    def log(step: int, metrics: dict) -> None:
        writer.log(step, metrics)
        if step and not args.quiet:  # step 0 is the initial evaluation
            _print_step(trainer, metrics)

    trainer = None
    try:
        torch.manual_seed(args.seed)
        trainer = Trainer(
            config,
            args.seed,
            device,
            log_fn=None if writer is None else log,
            writer=writer,
            checkpoint_dir=out.path / "checkpoints",
            parallel=parallel,
        )
        trainer.fit(state)
    except ConfigError:
        if writer is not None:
            writer.close()
        out.discard()  # a refused start leaves nothing behind
        raise
    except NonFiniteError as error:
        if writer is not None:
            writer.close()
            write_run_summary(out.path, "train", args.seed, status="stopped", reason=str(error))
        print(f"{PROG}: stopped: {error}", file=sys.stderr)
        return 1
    except interrupts.Interrupted as stop:
        if writer is not None:
            print(
                f"{PROG}: {stop}; the last completed step is checkpointed. Resume with the "
                f"same command and --resume {out.path}",
                file=sys.stderr,
            )
        return interrupts.exit_code(stop.signum)
    finally:
        if writer is not None:
            writer.close()
    if writer is not None:
        headline = {"world_size": parallel.world_size, **trainer.history[-1].metrics}
        write_run_summary(out.path, "train", args.seed, headline)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    interrupts.install()
    try:
        return _train(args)
    except (ConfigError, RunDirError, ValueError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # a collective that timed out: a rank froze or died
        if not torch.distributed.is_initialized() or "timed out" not in str(error).lower():
            raise
        print(
            f"{PROG}: error: rank {torch.distributed.get_rank()}: a collective timed out after "
            f"{args.dist_timeout:g} s (another rank is frozen or dead); stopping",
            file=sys.stderr,
        )
        return 1
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        where = error.filename or args.out or "the run directory"
        print(f"{PROG}: error: no space left on device while writing {where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: aborted by a second interrupt", file=sys.stderr)
        return interrupts.exit_code(2)
    finally:
        interrupts.restore_defaults()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
