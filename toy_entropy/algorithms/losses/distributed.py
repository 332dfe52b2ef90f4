"""The one collective the batch-global token selection needs: all-gather over data-parallel ranks.

Every rank holds a contiguous block of rows of the global batch, in rank order, and all ranks
hold the same local shape ``(B, T)``. Statistics are gathered (not all-reduced) and combined
in rank order, so every rank computes bit-identical global values and the single-process path
(world size 1) runs the same code.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.distributed

__all__ = [
    "Collectives",
    "SingleProcess",
    "TorchDistributed",
    "as_collectives",
    "global_row_sum",
    "global_top_values",
    "top_entries",
    "top_values",
]


@runtime_checkable
class Collectives(Protocol):
    """What :func:`toy_entropy.algorithms.losses.select_tokens` needs from a data-parallel group."""

    world_size: int
    rank: int

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(world_size, *tensor.shape)``: every rank's tensor, in rank order."""
        ...


class SingleProcess:
    """World of one: gathering returns the tensor with a leading axis of size 1."""

    world_size = 1
    rank = 0

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.unsqueeze(0)


class TorchDistributed:
    """Collectives over a ``torch.distributed`` process group (gloo on CPU, nccl on CUDA)."""

    def __init__(self, group: torch.distributed.ProcessGroup | None = None) -> None:
        if not torch.distributed.is_available() or not torch.distributed.is_initialized():
            raise ValueError(
                "dist: torch.distributed is not initialised; call init_process_group first "
                "or pass dist=None for a single process"
            )
        self.group = group
        self.world_size = torch.distributed.get_world_size(group)
        self.rank = torch.distributed.get_rank(group)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, tensor, group=self.group)
        return torch.stack(parts)


def as_collectives(dist: object) -> Collectives:
    """``None`` -> :class:`SingleProcess`; a ProcessGroup -> :class:`TorchDistributed`;
    an object with ``world_size``, ``rank`` and ``all_gather`` is used as it is."""
    if dist is None:
        return SingleProcess()
    if torch.distributed.is_available() and isinstance(dist, torch.distributed.ProcessGroup):
        return TorchDistributed(dist)
    if isinstance(dist, Collectives):
        return dist
    raise TypeError(
        "dist must be None, a torch.distributed.ProcessGroup or an object with world_size, rank "
        f"and all_gather (e.g. TorchDistributed()), got {type(dist).__name__}"
    )


def global_row_sum(comm: Collectives, row_values: torch.Tensor) -> torch.Tensor:
    """Sum over the rows of the global batch of per-row values ``(B, K)`` -> ``(K,)``.

    The rows are gathered and summed in global row order, so the result does not depend on how
    the rows are split across ranks (as long as each row's own value does not).
    """
    gathered = comm.all_gather(row_values)  # (world, B, K)
    return gathered.reshape(-1, row_values.shape[-1]).sum(dim=0)


def global_top_values(comm: Collectives, score: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` largest entries of ``score`` over the global batch, in descending order.

    Args:
        comm: the data-parallel group.
        score: ``(B, T)`` this rank's scores (``-inf`` or another low value where they must
            not count).
        k: a static bound, ``1 <= k <= world_size * B * T``.

    Returns:
        ``(k,)`` values; every rank gets the same tensor.
    """
    local_top = top_values(score.reshape(-1), min(k, score.numel()))  # (k_local,)
    # Each rank's top k_local holds all of its entries among the global top k.
    gathered = comm.all_gather(local_top).reshape(-1)  # (world * k_local,)
    return gathered.topk(k).values


def top_values(values: torch.Tensor, k: int, block: int | None = None) -> torch.Tensor:
    """``values.topk(k).values`` of a 1-D tensor; fast for small ``k`` (:func:`top_entries`)."""
    return top_entries(values, k, block)[0]


def top_entries(
    values: torch.Tensor, k: int, block: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest entries of a 1-D tensor and their indices, like ``values.topk(k)``.

    The k largest values lie in the k blocks (of ``block`` consecutive entries) with the
    largest maxima: were the j-th largest value (j <= k) in another block, the k chosen
    blocks would hold k maxima >= it besides the value itself, k + 1 values >= the j-th
    largest. So a top-k over the block maxima and a top-k over the k chosen blocks replace
    one top-k over all entries. Shapes stay static. Among equal values, which indices are
    returned is unspecified (as for ``topk``). ``block`` None picks the largest of 128, 64,
    32 whose pool of ``k * block`` entries is at most 1/8 of the values (long blocks make the
    block maxima cheap; a small pool keeps the second top-k cheap).

    Returns:
        ``(k,)`` values in descending order and ``(k,)`` int64 indices into ``values``.
    """
    if block is None:
        block = next((b for b in (128, 64) if 8 * k * b <= values.numel()), 32)
    n_blocks = values.numel() // block
    if n_blocks <= 2 * k:
        top = values.topk(k)
        return top.values, top.indices
    body = values[: n_blocks * block].view(n_blocks, block)  # (n_blocks, block)
    best = body.amax(dim=1).topk(k).indices  # (k,)
    offsets = torch.arange(block, device=values.device)
    tail = torch.arange(n_blocks * block, values.numel(), device=values.device)
    pool_index = torch.cat([(best[:, None] * block + offsets).reshape(-1), tail])  # (k*block+r,)
    pool = torch.cat([body.index_select(0, best).reshape(-1), values[n_blocks * block :]])
    top = pool.topk(k)
    return top.values, pool_index.gather(0, top.indices)
