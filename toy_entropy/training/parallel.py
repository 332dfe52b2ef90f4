"""Data parallelism of the sequence trainer: shards, global metrics, DDP and the batch layout.

A run on N ranks (``torchrun --nproc_per_node N -m toy_entropy.train``) must train exactly as
one process on the concatenated batch (docs/THEORY.md s.6). What makes it so:

- Rollout: every rank draws the whole rollout's prompts and its (B, T) sampling uniforms from
  the shared seed and keeps its shard of whole GRPO groups, rank r holding global rows
  ``[r * B/N, (r + 1) * B/N)``. Row i is sampled from the same prompt with the same uniforms on
  any number of ranks (and in any generation micro-batch): :meth:`GPT.generate`'s ``uniforms``.
- Optimisation batches: :func:`mini_batch_rows` deals each rollout's rows into mini-batches by
  strata of whole groups, so every rank holds the same number of rows of every mini-batch, and
  a mini-batch's rows in rank order are its rows in global order: the layout
  :func:`toy_entropy.algorithms.losses.select_tokens` needs to select as one process would.
- Loss: ``select_tokens(..., dist=DataParallel.comm)``; DDP averages the gradients over ranks,
  so the trainer multiplies each rank's loss by the world size to get their sum, the
  single-process gradient of the global token-mean (or other) loss.
- Metrics: per-row tensors are gathered (:meth:`DataParallel.gather_rows`) and the
  single-process metric code runs on the global batch; additive loss metrics are summed
  (:meth:`DataParallel.sum`). Sums run in rank order, so all ranks get the same values.
- Every rank evaluates the same held-out prompts with the same seed (so all ranks keep the
  same history); rank 0 alone logs and writes checkpoints. A checkpoint records the world
  size, and resuming on another one is refused (:meth:`DataParallel.check_checkpoint`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator, Mapping
from datetime import timedelta

import torch
import torch.distributed
import torch.nn as nn

from toy_entropy.algorithms.losses.distributed import Collectives, as_collectives
from toy_entropy.training.rollout import RolloutStats

__all__ = ["DataParallel", "HiddenStates", "init_from_env", "mini_batch_rows", "stratum_groups"]


class HiddenStates(nn.Module):
    """``forward(tokens, attention) -> model.hidden_states(...)`` (B, L, C).

    The trainer scores tokens from hidden states and ``lm_head.weight`` (chunked log-probs), so
    this is the forward that DDP wraps (and ``torch.compile`` compiles).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        return self.model.hidden_states(tokens, attention)


class DataParallel:
    """This process's place in the data-parallel group (a world of one by default).

    Args:
        dist: None for one process, else a ``torch.distributed`` process group or a
            :class:`~toy_entropy.algorithms.losses.Collectives` (e.g. ``TorchDistributed()``).
    """

    def __init__(self, dist: object = None) -> None:
        self.comm: Collectives = as_collectives(dist)
        self.world_size = self.comm.world_size
        self.rank = self.comm.rank

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, evaluates and writes checkpoints."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for in a world of one)."""
        if self.world_size > 1:
            torch.distributed.barrier()

    def shard(self, n: int) -> slice:
        """This rank's block of ``n`` items (rows or groups); ``n`` divisible by world size."""
        if n % self.world_size:
            raise ValueError(f"cannot shard {n} items evenly over {self.world_size} ranks")
        size = n // self.world_size
        return slice(self.rank * size, (self.rank + 1) * size)

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(world * B, ...)``: every rank's ``(B, ...)`` rows, in rank (= global) order."""
        if self.world_size == 1:
            return tensor
        flag = tensor.dtype == torch.bool  # collectives of bool tensors are not portable
        gathered = self.comm.all_gather(tensor.to(torch.uint8) if flag else tensor)
        gathered = gathered.reshape(-1, *tensor.shape[1:])
        return gathered.bool() if flag else gathered

    def gather_stats(self, stats: RolloutStats) -> RolloutStats:
        """The rollout's per-row statistics with the rows of every rank, in rank order."""
        if self.world_size == 1:
            return stats
        values = [getattr(stats, f.name) for f in dataclasses.fields(stats)]
        return RolloutStats(*(None if v is None else self.gather_rows(v) for v in values))

    def sum(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sum 0-dim tensors over ranks (in rank order: identical on every rank)."""
        if self.world_size == 1 or not values:
            return dict(values)
        stacked = torch.stack([v.to(torch.float64) for v in values.values()])  # (K,)
        totals = self.comm.all_gather(stacked).sum(dim=0)  # (K,)
        return dict(zip(values, totals.unbind()))

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` in DistributedDataParallel (parameters broadcast from rank 0), or as is."""
        if self.world_size == 1:
            return module
        group = getattr(self.comm, "group", None)
        device_ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            module, device_ids=device_ids, process_group=group
        )

    @staticmethod
    def no_sync(module: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        """DDP's ``no_sync()`` unless ``sync``: gradient accumulation all-reduces only once."""
        if sync or not hasattr(module, "no_sync"):
            return contextlib.nullcontext()
        return module.no_sync()

    def check_checkpoint(self, state: Mapping) -> None:
        """Refuse to resume a checkpoint written on another world size (ValueError)."""
        saved = state.get("world_size", 1)
        if saved != self.world_size:
            raise ValueError(
                f"checkpoint world_size={saved} does not match this run's world_size="
                f"{self.world_size}: the rollout shards, mini-batch layout and RNG streams "
                f"depend on it; resume with torchrun --nproc_per_node {saved}"
            )


def stratum_groups(group_size: int, num_mini_batches: int) -> int:
    """Groups per stratum: the fewest whole groups whose rows split evenly into mini-batches."""
    return num_mini_batches // math.gcd(num_mini_batches, group_size)


def mini_batch_rows(
    num_groups: int,
    group_size: int,
    num_mini_batches: int,
    generator: torch.Generator,
    parallel: DataParallel | None = None,
) -> Iterator[torch.Tensor]:
    """This rank's local row indices of each mini-batch of one pass over a rollout.

    The rollout's ``num_groups * group_size`` rows (groups contiguous) are cut into strata of
    :func:`stratum_groups` consecutive groups; each stratum's rows are shuffled and dealt
    evenly into the ``num_mini_batches`` mini-batches. A mini-batch lists its rows in global
    order; since ranks hold contiguous blocks of whole strata, the rows a rank holds come out
    in rank order and each rank holds the same number. The shuffle is drawn for the whole
    rollout on every rank from ``generator`` (seeded alike everywhere), so the mini-batches do
    not depend on the number of ranks.

    Args:
        num_groups: P, prompts of the whole rollout (all ranks).
        group_size: G, responses per prompt.
        num_mini_batches: mini-batches per pass; must divide ``P * G``.
        generator: shuffling noise, on the device the rows live on.
        parallel: this rank's place (None: one process).

    Yields:
        ``num_mini_batches`` long tensors ``(P * G / num_mini_batches / world,)`` of row indices
        into this rank's shard.
    """
    parallel = parallel or DataParallel()
    per_stratum = stratum_groups(group_size, num_mini_batches) * group_size  # rows
    num_strata = num_groups * group_size // per_stratum
    take = per_stratum // num_mini_batches  # rows of a stratum in each mini-batch
    device = generator.device
    order = torch.rand(num_strata, per_stratum, generator=generator, device=device).argsort(dim=1)
    local = parallel.shard(num_strata)
    order = order[local]  # (S_local, per_stratum) positions in each of this rank's strata
    offsets = torch.arange(order.shape[0], device=device)[:, None] * per_stratum  # (S_local, 1)
    for m in range(num_mini_batches):
        chosen = order[:, m * take : (m + 1) * take].sort(dim=1).values  # (S_local, take)
        yield (chosen + offsets).reshape(-1)


def init_from_env(
    device: str, timeout: timedelta = timedelta(minutes=10)
) -> tuple[DataParallel, torch.device]:
    """Join the process group torchrun describes in the environment, or run alone.

    With ``WORLD_SIZE`` > 1 (set by torchrun), initialises ``torch.distributed`` with nccl on
    CUDA (one GPU per process, ``cuda:LOCAL_RANK``) or gloo on CPU.

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        timeout: how long a collective waits for the other ranks before it fails (a frozen
            or dead rank then ends the job with an error instead of hanging it).

    Returns:
        ``(parallel, device)``: this rank's :class:`DataParallel` and its torch device.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is invalid: expected 'cpu' or 'cuda'")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for but CUDA is not available")
        torch_device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(torch_device)
    else:
        torch_device = torch.device("cpu")
    if world_size == 1:
        return DataParallel(), torch_device
    torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo", timeout=timeout)
    return DataParallel(torch.distributed.group.WORLD), torch_device
