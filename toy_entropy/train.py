"""One sequence RL run, on one process or data-parallel under torchrun.

    python -m toy_entropy.train --out runs/one --set total_steps=20
    torchrun --nproc_per_node 2 -m toy_entropy.train --out runs/two --set total_steps=20
    torchrun --nproc_per_node 8 -m toy_entropy.train --device cuda --out runs/big \\
        --set preset=gpu-large

With N ranks (gloo on CPU, nccl on CUDA, one GPU per rank) the run trains as one process on
the whole batch would (``toy_entropy.parallel``). Rank 0 evaluates, writes metrics.jsonl,
TensorBoard and the checkpoints into ``--out``; ``summary.json`` holds the last step's metrics.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed

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
    parser.add_argument("--quiet", action="store_true", help="no per-step line on stdout")
    return parser


def _train(args: argparse.Namespace) -> None:
    parallel, device = init_from_env(args.device)
    config = apply_overrides(TrainConfig(), args.overrides)
    writer = RunWriter(args.out) if parallel.is_main else None
    if writer is not None:
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
            checkpoint_dir=args.out / "checkpoints",
            parallel=parallel,
        )
        if writer is not None:
            trainer.initial_eval = trainer.evaluate()
            writer.log(0, trainer.initial_eval)
        for _ in range(config.total_steps):
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
