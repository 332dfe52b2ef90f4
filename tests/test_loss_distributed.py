"""Data-parallel exactness: 2 gloo ranks select, and their losses and gradients sum, exactly as
one process does on the concatenated batch."""

import os
import socket

import pytest
import torch
import torch.distributed
import torch.multiprocessing

from toy_entropy.algorithms.losses import (
    PolicyLossConfig,
    TorchDistributed,
    compute_policy_loss,
    select_tokens,
)
from toy_entropy.algorithms.losses import fused as fused_kernels

WORLD = 2


def _tied_batch() -> dict[str, torch.Tensor]:
    """Every covariance is 0 (one advantage everywhere): KL-Cov's pick is decided by ties,
    i.e. by the global token index, and the cut falls inside rank 1's rows."""
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[0, 0] = mask[3, 4] = False
    log_probs = -torch.rand(4, 5, generator=torch.Generator().manual_seed(0))
    return {
        "log_probs": log_probs,
        "old_log_probs": log_probs + 0.1,
        "advantages": torch.ones(4, 5),
        "response_mask": mask,
    }


def _random_batch(seed: int) -> dict[str, torch.Tensor]:
    """8 x 16 batch; rank 1's last row is all padding."""
    gen = torch.Generator().manual_seed(seed)
    log_probs = -3 * torch.rand(8, 16, generator=gen)
    lengths = torch.randint(6, 17, (8, 1), generator=gen)
    lengths[-1] = 0
    return {
        "log_probs": log_probs,
        "old_log_probs": log_probs + 0.3 * torch.randn(8, 16, generator=gen),
        "advantages": torch.randn(8, 1, generator=gen).expand(8, 16).clone(),
        "response_mask": torch.arange(16) < lengths,
    }


CASES = [
    # Clip-Cov with more candidates than picks: the seeded random sample must agree.
    (dict(loss_mode="clip_cov", clip_cov_ratio=0.05, clip_cov_lb=0.0), _random_batch(1)),
    (
        dict(loss_mode="kl_cov", kl_cov_ratio=0.05, loss_agg_mode="seq-mean-token-mean"),
        _random_batch(2),
    ),
    (dict(loss_mode="kl_cov", kl_cov_ratio=0.6), _tied_batch()),
    (
        dict(loss_mode="vanilla", clip_ratio_high=0.28, loss_agg_mode="seq-mean-token-sum"),
        _random_batch(3),
    ),
    # The top entropy quantile: a global threshold, and ties cut inside rank 1's rows.
    (
        dict(top_entropy_quantile=0.2, positive_sample_weight=0.1),
        _random_batch(4)
        | {"entropy": torch.rand(8, 16, generator=torch.Generator().manual_seed(11))},
    ),
    (dict(loss_mode="pg", top_entropy_quantile=0.6), _tied_batch() | {"entropy": torch.ones(4, 5)}),
]


def _run_case(rank: int, config: PolicyLossConfig, batch: dict, dist: object) -> None:
    """Compare this rank's share with the single-process computation on the whole batch."""
    features = torch.randn(batch["log_probs"].shape, generator=torch.Generator().manual_seed(9))
    rows = batch["log_probs"].shape[0] // WORLD
    local = slice(rank * rows, (rank + 1) * rows)
    results = []
    for part, group in ((slice(None), None), (local, dist)):
        theta = torch.zeros((), requires_grad=True)  # a parameter shared by all ranks
        log_probs = batch["log_probs"][part] + theta * features[part]
        tensors = [batch[name][part] for name in ("old_log_probs", "advantages", "response_mask")]
        entropy = batch.get("entropy")
        selection = select_tokens(
            config,
            log_probs.detach(),
            *tensors,
            generator=torch.Generator().manual_seed(5),  # seeded alike on every rank
            dist=group,
            cov_stats=True,
            entropy=None if entropy is None else entropy[part],
        )
        loss, metrics = compute_policy_loss(config, log_probs, *tensors, selection)
        loss.backward()
        results.append((selection, loss.detach(), theta.grad, metrics))
    (single, loss, grad, metrics), (shard, shard_loss, shard_grad, shard_metrics) = results
    assert torch.equal(shard.selected, single.selected[local])
    if single.entropy_kept is not None:
        assert torch.equal(shard.entropy_kept, single.entropy_kept[local])
    assert shard.metrics.keys() == single.metrics.keys()
    for name, value in single.metrics.items():
        torch.testing.assert_close(shard.metrics[name], value, equal_nan=True)
    summed = torch.stack([shard_loss, shard_grad, *shard_metrics.values()])
    torch.distributed.all_reduce(summed)
    torch.testing.assert_close(summed, torch.stack([loss, grad, *metrics.values()]))


def _worker(rank: int, port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        for index, (fields, batch) in enumerate(CASES):
            # Both ways of naming the group: a ProcessGroup and the Collectives wrapper.
            group = torch.distributed.group.WORLD if index % 2 else TorchDistributed()
            _run_case(rank, PolicyLossConfig(**fields), batch, group)
        # Clip-Cov's compiled (fused) pass, forced on this small batch, in both computations.
        fused_kernels.COMPILE_MIN_TOKENS = 0
        _run_case(rank, PolicyLossConfig(**CASES[0][0]), CASES[0][1], TorchDistributed())
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_two_ranks_equal_one_process_on_the_concatenated_batch():
    torch.multiprocessing.spawn(_worker, args=(_free_port(),), nprocs=WORLD, join=True)
