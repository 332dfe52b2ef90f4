"""One sequence RL run, on one process or data-parallel under torchrun.

    python -m toy_entropy.train --out runs/one --set total_steps=20
    torchrun --nproc_per_node 2 -m toy_entropy.train --out runs/two --set total_steps=20
    torchrun --nproc_per_node 8 -m toy_entropy.train --device cuda --out runs/big \\
        --set preset=gpu-large
    torchrun --nproc_per_node 2 -m toy_entropy.train --out runs/two --set total_steps=20 --resume

With N ranks (gloo on CPU, nccl on CUDA, one GPU per rank) the run trains as one process on
the whole batch would (``toy_entropy.parallel``). Rank 0 writes metrics.jsonl, TensorBoard and
the checkpoints into ``--out``; ``summary.json`` holds the last step's metrics. ``--resume``
continues from the newest checkpoint in ``--out/checkpoints`` (every rank reads it, so ``--out``
must be on a file system all ranks see) with the same options and the same number of ranks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed

from toy_entropy.checkpoint import latest_checkpoint, load_checkpoint
from toy_entropy.config import ConfigError, apply_overrides, config_to_dict
from toy_entropy.parallel import init_from_env
from toy_entropy.runlog import RunWriter, environment_info
from toy_entropy.trainer import TrainConfig, Trainer

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m toy_entropy.train", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="run directory (rank 0 writes)")
    parser.add_argument("--seed", type=int, default=0, help="run seed (the same on every rank)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="TrainConfig field, e.g. --set preset=gpu-small (repeatable)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in --out"
    )
    parser.add_argument("--quiet", action="store_true", help="no per-step line on stdout")
    return parser


def _train(args: argparse.Namespace) -> None:
    parallel, device = init_from_env(args.device)
    config = apply_overrides(TrainConfig(), args.overrides)
    checkpoints = args.out / "checkpoints"
    state = None
    if args.resume:
        path = latest_checkpoint(checkpoints)
        if path is None:
            raise ValueError(f"--resume: no checkpoint in {checkpoints}")
        state = load_checkpoint(path)
        parallel.check_checkpoint(state)  # before rank 0 touches the run's logs
    writer = None
    if parallel.is_main:
        writer = RunWriter(args.out, resume_from_step=None if state is None else state["step"])
    if writer is not None and state is None:
        writer.write_config(
            {
                "seed": args.seed,
                "world_size": parallel.world_size,
                "config": config_to_dict(config),
                **environment_info(str(device)),
            }
        )
    try:
        torch.manual_seed(args.seed)
        trainer = Trainer(
            config,
            args.seed,
            device,
            log_fn=None if writer is None else writer.log,
            writer=writer,
            checkpoint_dir=checkpoints,
            parallel=parallel,
        )
        if state is not None:
            trainer.load_state(state)
        else:  # on every rank, so that their eval generators stay alike
            trainer.initial_eval = trainer.evaluate()
            if writer is not None:
                writer.log(0, trainer.initial_eval)
        for _ in range(trainer.step, config.total_steps):
            metrics = trainer.train_step()
            if writer is not None and not args.quiet:
                print(
                    f"step {trainer.step:>4}  reward {metrics['reward']:.3f}  "
                    f"entropy {metrics['entropy']:.4f}  loss {metrics['loss/total']:+.4f}  "
                    f"rollout {metrics['perf/rollout_tokens_per_s']:,.0f} tok/s  "
                    f"update {metrics['perf/update_tokens_per_s']:,.0f} tok/s",
                    flush=True,
                )
        trainer.save_checkpoint()
        if writer is not None:
            writer.write_summary({"world_size": parallel.world_size, **trainer.history[-1].metrics})
    finally:
        if writer is not None:
            writer.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _train(args)
    except (ConfigError, ValueError) as error:
        print(f"toy_entropy.train: error: {error}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
