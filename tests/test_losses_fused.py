"""The fused Clip-Cov selection: compiled equals eager bit for bit, keys are a bijection of the
positions, rank shards equal the whole batch, no host syncs on the compiled path."""

import math

import pytest
import torch

from toy_entropy.algorithms.losses import PolicyLossConfig, compute_policy_loss, select_tokens
from toy_entropy.algorithms.losses import fused as fused_kernels
from toy_entropy.algorithms.losses.fused import clip_cov_bounds, clip_cov_scores, draw_seeds, hash31


def _batch(rows: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """float32 (rows, length) batch with many Clip-Cov candidates and PPO-clipped tokens."""
    gen = torch.Generator().manual_seed(seed)
    log_probs = -torch.empty(rows, length).exponential_(0.5, generator=gen)
    old = log_probs + 0.3 * torch.randn(rows, length, generator=gen)
    advantages = torch.randn(rows, 1, generator=gen).expand(rows, length).contiguous()
    lengths = torch.randint(length // 2, length + 1, (rows, 1), generator=gen)
    mask = torch.arange(length) < lengths
    return {"log_probs": log_probs, "old_log_probs": old, "advantages": advantages, "mask": mask}


def _score_args(data: dict, rows: slice, first_index: int, seeds: torch.Tensor) -> tuple:
    config = PolicyLossConfig(loss_mode="clip_cov", clip_cov_lb=0.2, clip_cov_ub=3.0)
    return (
        data["log_probs"][rows],
        data["old_log_probs"][rows],
        data["advantages"][rows],
        data["mask"][rows].float(),
        torch.tensor(-1.7),
        torch.tensor(0.1),
        clip_cov_bounds(config, torch.float32, torch.device("cpu")),
        seeds,
        first_index,
    )


def test_compiled_scores_equal_eager_and_shards_equal_the_whole_batch():
    data = _batch(rows=64, length=300, seed=0)
    seeds = draw_seeds(torch.Generator().manual_seed(3), torch.device("cpu"))
    compiled = fused_kernels.fused(clip_cov_scores, math.inf, torch.device("cpu"))
    eager = clip_cov_scores(*_score_args(data, slice(None), 0, seeds))
    assert torch.equal(compiled(*_score_args(data, slice(None), 0, seeds)), eager)
    # Rank 1 of 2 holds rows 32..63, its first global index is 32 * 300.
    shard = compiled(*_score_args(data, slice(32, None), 32 * 300, seeds))
    assert torch.equal(shard, eager[32:])
    candidates = eager >= 0
    assert 0.05 < candidates.float().mean() < 0.5  # both kinds of tokens are exercised
    assert torch.unique(eager[candidates]).numel() == int(candidates.sum())  # no ties


def test_fused_selects_the_tokens_of_the_eager_path(monkeypatch):
    data = _batch(rows=40, length=250, seed=1)
    config = PolicyLossConfig(
        loss_mode="clip_cov", clip_cov_ratio=0.01, clip_cov_lb=0.2, clip_ratio_high=0.28
    )
    selections = {}
    for name, threshold in (("eager", math.inf), ("compiled", 0)):
        monkeypatch.setattr(fused_kernels, "COMPILE_MIN_TOKENS", threshold)
        generator = torch.Generator().manual_seed(7)
        selections[name] = [
            select_tokens(config, *data.values(), generator=generator, cov_stats=stats)
            for stats in (False, True)
        ]
    for eager, compiled in zip(selections["eager"], selections["compiled"]):
        assert torch.equal(compiled.selected, eager.selected)
        assert int(eager.selected.sum()) == int(0.01 * data["mask"].sum())  # n = floor(r N)
        assert torch.equal(compiled.metrics["select/frac"], eager.metrics["select/frac"])


def test_hash31_is_a_bijection_of_31_bit_values():
    x = torch.arange(2**20, dtype=torch.int32) * 2047 + 12345  # spread over [0, 2^31)
    y = hash31(x)
    assert int(y.min()) >= 0 and int(y.max()) < 2**31
    assert torch.unique(y).numel() == x.numel()


def test_hash31_equals_the_unsigned_arithmetic_it_stands_for():
    """int32 tensors wrap; Python integers do not: the masked results must agree."""

    def reference(x: int) -> int:
        x ^= x >> 16
        x = (x * 0x21F0AAAD) % 2**31
        x ^= x >> 15
        x = (x * 0x735A2D97) % 2**31
        return x ^ (x >> 15)

    values = [0, 1, 2, 12345, 2**16 + 7, 2**30, 2**31 - 2, 2**31 - 1]
    assert hash31(torch.tensor(values, dtype=torch.int32)).tolist() == list(map(reference, values))


def test_clip_bounds_follow_the_ratio_test():
    """A token is a candidate's PPO-side iff pg2 <= pg1 (not clipped), away from the boundary."""
    config = PolicyLossConfig(loss_mode="clip_cov", clip_ratio_low=0.2, clip_ratio_high=0.28)
    lb, ub, floor, ceiling = clip_cov_bounds(config, torch.float64, torch.device("cpu")).tolist()
    assert (lb, ub) == (1.0, 5.0)
    assert floor == pytest.approx(math.log(0.8)) and ceiling == pytest.approx(math.log(1.28))
    # clip_ratio_low = 1: the lower clip never binds; a ceiling beyond the clamp never binds.
    wide = PolicyLossConfig(loss_mode="clip_cov", clip_ratio_low=1.0, clip_ratio_high=1e12)
    assert clip_cov_bounds(wide, torch.float32, torch.device("cpu")).tolist()[2:] == [
        -math.inf,
        math.inf,
    ]


def test_compiled_path_makes_no_host_sync(monkeypatch):
    """Warm (compiled once), the fused selection and the loss run with host reads forbidden."""
    data = _batch(rows=20, length=100, seed=2)
    config = PolicyLossConfig(loss_mode="clip_cov", clip_cov_ratio=0.02, clip_cov_lb=0.2)
    monkeypatch.setattr(fused_kernels, "COMPILE_MIN_TOKENS", 0)
    tensors = (data["old_log_probs"], data["advantages"], data["mask"])
    generator = torch.Generator().manual_seed(0)
    select_tokens(config, data["log_probs"], *tensors, generator=generator)  # compiles

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation")

    bool_calls = []
    real_bool = torch.Tensor.__bool__

    def counted_bool(self):
        bool_calls.append(1)
        return real_bool(self)

    for name in ("item", "cpu", "tolist", "numpy", "nonzero", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    monkeypatch.setattr(torch, "nonzero", forbidden)
    monkeypatch.setattr(torch.Tensor, "__bool__", counted_bool)
    lp = data["log_probs"].clone().requires_grad_()
    selection = select_tokens(config, lp.detach(), *tensors, generator=generator)
    assert len(bool_calls) == 1  # the documented CPU-only all-zero-mask check
    loss, _ = compute_policy_loss(config, lp, *tensors, selection)
    loss.backward()
