"""Batch-global Clip-Cov / KL-Cov selection: reference semantics, invariances, seeds, no syncs."""

import math

import pytest
import torch

from toy_entropy.algorithms.losses import (
    AGG_MODES,
    POLICY_LOSSES,
    PolicyLossConfig,
    compute_policy_loss,
    policy_loss,
    select_tokens,
)
from toy_entropy.algorithms.losses.diagnostics import COV_TOP_FRACTIONS, count_of_fraction
from toy_entropy.algorithms.losses.distributed import top_values

pytestmark = pytest.mark.usefixtures("float64_default")


def _batch(rows: int = 6, length: int = 12, seed: int = 0, stale: float = 0.3) -> dict:
    """Random (rows, length) batch: log-probs, a stale rollout policy, GRPO-like advantages."""
    gen = torch.Generator().manual_seed(seed)
    log_probs = -torch.rand(rows, length, generator=gen) * 3
    old = log_probs + stale * torch.randn(rows, length, generator=gen)
    advantages = torch.randn(rows, 1, generator=gen).expand(rows, length).clone()
    lengths = torch.randint(length // 2, length + 1, (rows, 1), generator=gen)
    mask = torch.arange(length) < lengths
    return {"log_probs": log_probs, "old_log_probs": old, "advantages": advantages, "mask": mask}


def _reference_loss(config: PolicyLossConfig, log_probs, old, advantages, mask) -> torch.Tensor:
    """Clip-Cov / KL-Cov as the released code computes them (docs/THEORY.md s.5), token-mean.

    Host syncs, boolean indexing and a CPU randperm included; only valid where the random
    choice does not matter (no more candidates than n).
    """
    valid = mask.bool()
    n_valid = int(valid.sum().item())
    ratio = torch.exp(log_probs - old)
    pg1 = -advantages * ratio
    if config.loss_mode == "clip_cov":
        pg2 = -advantages * ratio.clamp(1 - config.clip_ratio_low, 1 + config.clip_ratio_high)
        clipped = (pg2 > pg1) & valid
        lp_mean = log_probs.detach()[valid].mean()
        cov = (advantages - advantages[valid].mean()) * (log_probs.detach() - lp_mean)
        cov[~valid] = -math.inf
        cov[clipped] = -math.inf
        n = max(int(config.clip_cov_ratio * n_valid), 1)
        band = (cov > config.clip_cov_lb) & (cov < config.clip_cov_ub) & valid
        picked = torch.nonzero(band)
        picked = picked[torch.randperm(len(picked))[: min(n, len(picked))]]
        keep = torch.ones_like(advantages)
        keep[picked[:, 0], picked[:, 1]] = 0
        per_token = torch.maximum(pg1, pg2) * keep
    else:
        flat_valid = torch.nonzero(valid.reshape(-1)).squeeze(-1)
        adv = advantages[valid].detach().cpu()
        lp = log_probs[valid].detach().cpu()
        cov = (adv - adv.mean()) * (lp - lp.mean())
        n = max(1, int(len(cov) * config.kl_cov_ratio))
        top = flat_valid[torch.topk(cov, n).indices]
        penalty = torch.zeros(advantages.numel())
        penalty[top] = 1.0
        per_token = pg1 + config.ppo_kl_coef * (log_probs - old).abs() * penalty.view_as(pg1)
    return (per_token * valid).sum() / n_valid


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("mode", ["clip_cov", "kl_cov"])
def test_matches_reference_semantics_where_randomness_does_not_matter(mode, seed):
    data = _batch(seed=seed)
    config = PolicyLossConfig(
        loss_mode=mode,
        clip_ratio_high=0.28,
        clip_cov_ratio=0.6,  # n >= the candidates here: the sample is all of them
        clip_cov_lb=0.05,
        kl_cov_ratio=0.1,
        ppo_kl_coef=0.7,
    )
    lp = data["log_probs"].clone().requires_grad_()
    loss, metrics = policy_loss(config, lp, data["old_log_probs"], data["advantages"], data["mask"])
    loss.backward()
    lp_ref = data["log_probs"].clone().requires_grad_()
    reference = _reference_loss(
        config, lp_ref, data["old_log_probs"], data["advantages"], data["mask"]
    )
    reference.backward()
    n_valid = data["mask"].sum().item()
    assert 0 < metrics["select/frac"].item() * n_valid
    if mode == "clip_cov":  # fewer candidates than n = floor(0.6 * N): all of them picked
        assert metrics["select/frac"].item() * n_valid < int(0.6 * n_valid)
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(lp.grad, lp_ref.grad)


def test_clip_cov_selected_tokens_have_exactly_zero_gradient():
    data = _batch(rows=8, length=16)
    config = PolicyLossConfig(loss_mode="clip_cov", clip_cov_ratio=0.05, clip_cov_lb=0.0)
    selection = select_tokens(config, *data.values(), generator=torch.Generator().manual_seed(1))
    assert selection.selected.sum() == max(1, int(0.05 * data["mask"].sum()))
    grads = {}
    for mode in ("clip_cov", "vanilla"):
        lp = data["log_probs"].clone().requires_grad_()
        loss, _ = compute_policy_loss(
            PolicyLossConfig(loss_mode=mode), lp, *list(data.values())[1:], selection
        )
        loss.backward()
        grads[mode] = lp.grad
    assert torch.all(grads["clip_cov"][selection.selected] == 0)
    assert torch.all(grads["vanilla"][selection.selected] != 0)
    keep = ~selection.selected
    torch.testing.assert_close(grads["clip_cov"][keep], grads["vanilla"][keep])


def test_clip_cov_with_an_empty_band_equals_vanilla():
    data = _batch()
    results = []
    for config in (
        PolicyLossConfig(loss_mode="clip_cov", clip_cov_lb=1e6, clip_cov_ub=1e7),
        PolicyLossConfig(loss_mode="vanilla"),
    ):
        lp = data["log_probs"].clone().requires_grad_()
        loss, metrics = policy_loss(config, lp, *list(data.values())[1:])
        loss.backward()
        results.append((loss, lp.grad))
    assert metrics["loss/policy"] == results[1][0]
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=0)


@pytest.mark.parametrize("mode", sorted(POLICY_LOSSES))
@pytest.mark.parametrize("agg_mode", AGG_MODES)
def test_micro_batches_sum_to_the_full_batch(mode, agg_mode):
    """Gradient accumulation over uneven micro-batches equals the full batch, selection included
    (Clip-Cov here has more candidates than picks, so its random sample matters)."""
    data = _batch(rows=7, length=10, seed=3)
    config = PolicyLossConfig(
        loss_mode=mode,
        loss_agg_mode=agg_mode,
        clip_cov_ratio=0.05,
        clip_cov_lb=0.0,
        kl_cov_ratio=0.05,
        entropy_coeff=0.01,
        kl_loss_coef=0.1,
    )
    entropy = torch.rand(7, 10) + 0.5
    ref = data["log_probs"] - 0.1
    tensors = list(data.values())[1:]

    lp = data["log_probs"].clone().requires_grad_()
    full, _ = policy_loss(
        config, lp, *tensors, entropy, ref, generator=torch.Generator().manual_seed(7)
    )
    full.backward()

    lp_micro = data["log_probs"].clone().requires_grad_()
    selection = select_tokens(
        config, lp_micro.detach(), *tensors, generator=torch.Generator().manual_seed(7)
    )
    total = 0.0
    for rows in (slice(0, 3), slice(3, 4), slice(4, 7)):
        loss, _ = compute_policy_loss(
            config,
            lp_micro[rows],
            *(t[rows] for t in tensors),
            selection[rows],
            entropy=entropy[rows],
            ref_log_probs=ref[rows],
        )
        loss.backward()
        total = total + loss.detach()
    torch.testing.assert_close(total, full.detach())
    torch.testing.assert_close(lp_micro.grad, lp.grad)


@pytest.mark.parametrize("mode", sorted(POLICY_LOSSES))
def test_padding_changes_nothing(mode):
    data = _batch(rows=5, length=8, seed=4)
    config = PolicyLossConfig(
        loss_mode=mode,
        loss_agg_mode="seq-mean-token-sum-norm",
        loss_agg_norm=8.0,
        clip_cov_ratio=1.0,  # every candidate is picked: the sample does not depend on the keys
        clip_cov_lb=0.0,
        kl_cov_ratio=0.1,
    )
    padded = {}
    for name, value in data.items():
        garbage = torch.randn(7, 11).abs().neg() if value.is_floating_point() else None
        out = torch.zeros(7, 11, dtype=torch.bool) if garbage is None else garbage
        out[:5, :8] = value
        padded[name] = out
    results = []
    for batch in (data, padded):
        lp = batch["log_probs"].clone().requires_grad_()
        selection = select_tokens(config, lp.detach(), *list(batch.values())[1:], cov_stats=True)
        loss, metrics = compute_policy_loss(config, lp, *list(batch.values())[1:], selection)
        loss.backward()
        results.append((loss, lp.grad[:5, :8], selection, metrics))
    (loss, grad, selection, metrics), (loss_p, grad_p, selection_p, metrics_p) = results
    torch.testing.assert_close(loss_p, loss)
    torch.testing.assert_close(grad_p, grad)
    assert torch.equal(selection_p.selected[:5, :8], selection.selected)
    assert not selection_p.selected[5:].any() and not selection_p.selected[:, 8:].any()
    for name in metrics | selection.metrics:
        torch.testing.assert_close(
            (metrics_p | selection_p.metrics)[name], (metrics | selection.metrics)[name]
        )


def test_same_seed_same_selection_other_seed_other_selection():
    data = _batch(rows=20, length=30, seed=5, stale=0.0)
    config = PolicyLossConfig(loss_mode="clip_cov", clip_cov_ratio=0.01, clip_cov_lb=0.0)

    def selected(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return select_tokens(config, *data.values(), generator=generator).selected

    assert torch.equal(selected(11), selected(11))
    assert not torch.equal(selected(11), selected(12))


def test_clip_cov_sample_is_uniform_without_replacement():
    """10 candidates, n = 3: every draw picks exactly 3, each candidate with probability 0.3."""
    data = {
        "log_probs": -torch.arange(1.0, 11.0).view(1, 10) / 10,
        "old_log_probs": -torch.arange(1.0, 11.0).view(1, 10) / 10,
        "advantages": torch.ones(1, 10),
        "mask": torch.ones(1, 10),
    }
    config = PolicyLossConfig(
        loss_mode="clip_cov", clip_cov_ratio=0.3, clip_cov_lb=-100, clip_cov_ub=100
    )
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack(
        [
            select_tokens(config, *data.values(), generator=generator).selected[0]
            for _ in range(1000)
        ]
    )
    assert torch.all(draws.sum(dim=1) == 3)
    counts = draws.sum(dim=0).double()  # mean 300, sd ~14.5
    assert torch.all((counts - 300).abs() < 75), counts


def test_kl_cov_breaks_ties_by_lowest_index():
    data = {
        "log_probs": torch.full((3, 4), -1.0),
        "old_log_probs": torch.full((3, 4), -1.2),
        "advantages": torch.ones(3, 4),
        "mask": torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]),
    }
    config = PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.5)  # n = floor(0.5 * 9) = 4
    selected = select_tokens(config, *data.values()).selected
    expected = torch.tensor(
        [[False, True, True, True], [True, False, False, False], [False, False, False, False]]
    )
    assert torch.equal(selected, expected)


def test_count_of_fraction_rounds_like_python():
    for fraction, count in ((2e-4, 10000), (2e-3, 1000), (0.1, 30), (2e-4, 4999), (0.3, 10)):
        expected = max(1, int(fraction * count))
        n = count_of_fraction(fraction, torch.tensor(float(count)))
        assert int(n) == expected


@pytest.mark.parametrize("k", [1, 3, 17, 40, 200])
def test_block_top_values_equal_topk(k):
    gen = torch.Generator().manual_seed(k)
    values = torch.randint(-5, 5, (3000,), generator=gen).double()  # many ties
    values[torch.rand(3000, generator=gen) < 0.3] = -math.inf
    assert torch.equal(top_values(values, k, block=16), values.topk(k).values)


def test_covariance_diagnostics_exact():
    # Ratios [1.25, 1.25, 1.1, 0.7], A = [1, -1, 2, -2], lp = [-1, -2, -0.5, -3]:
    # cov = [0.625, 0.375, 2.25, 2.75]; clip-higher (0.2 -> 0.28) admits token 0 only.
    log_probs = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    old = log_probs - torch.log(torch.tensor([[1.25, 1.25, 1.1, 0.7]]))
    advantages = torch.tensor([[1.0, -1.0, 2.0, -2.0]])
    config = PolicyLossConfig(clip_ratio_high=0.28)
    metrics = select_tokens(
        config, log_probs, old, advantages, torch.ones(1, 4), cov_stats=True
    ).metrics
    assert metrics["cov/mean"].item() == pytest.approx(1.5)
    assert metrics["cov/pos_frac"].item() == 1.0
    assert metrics["cov/clip_higher_admitted_mean"].item() == pytest.approx(0.625)
    assert metrics["cov/clip_higher_admitted_frac"].item() == 0.25
    for q in COV_TOP_FRACTIONS:  # N = 4: every fraction means the single largest, 2.75
        assert metrics[f"cov/top_{100 * q:g}%_mean"].item() == pytest.approx(2.75)


def test_covariance_diagnostics_match_numpy_on_random_batches():
    data = _batch(rows=30, length=40, seed=6)
    metrics = select_tokens(PolicyLossConfig(), *data.values(), cov_stats=True).metrics
    valid = data["mask"]
    lp, adv = data["log_probs"][valid], data["advantages"][valid]
    cov = (lp - lp.mean()) * (adv - adv.mean())
    assert metrics["cov/mean"].item() == pytest.approx(
        torch.cov(torch.stack([lp, adv]), correction=0)[0, 1].item()
    )
    assert metrics["cov/pos_frac"].item() == pytest.approx((cov > 0).double().mean().item())
    ordered = cov.sort(descending=True).values
    for q in COV_TOP_FRACTIONS:
        n = max(1, int(q * len(cov)))
        assert metrics[f"cov/top_{100 * q:g}%_mean"].item() == pytest.approx(ordered[:n].mean())
    assert "cov/clip_higher_admitted_mean" not in metrics  # symmetric clip: nothing admitted


def test_no_host_sync_in_selection_and_loss(monkeypatch):
    """With every host read patched to raise, all losses run forward and backward; the one
    host read left is the documented CPU-only check for an all-zero mask (one __bool__)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation")

    bool_calls = []
    real_bool = torch.Tensor.__bool__

    def counted_bool(self):
        bool_calls.append(1)
        return real_bool(self)

    data = _batch(rows=6, length=20, seed=8)
    for name in ("item", "cpu", "tolist", "numpy", "nonzero", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    monkeypatch.setattr(torch, "nonzero", forbidden)
    monkeypatch.setattr(torch.Tensor, "__bool__", counted_bool)
    entropy, ref = torch.rand(6, 20), data["log_probs"] - 0.2
    for mode in sorted(POLICY_LOSSES):
        config = PolicyLossConfig(
            loss_mode=mode,
            clip_ratio_high=0.28,
            clip_cov_lb=0.0,
            entropy_coeff=0.01,
            kl_loss_coef=0.1,
            clip_ratio_c=3.0,
        )
        lp = data["log_probs"].clone().requires_grad_()
        selection = select_tokens(
            config,
            lp.detach(),
            *list(data.values())[1:],
            generator=torch.Generator().manual_seed(0),
            cov_stats=True,
        )
        assert len(bool_calls) == 1
        bool_calls.clear()
        loss, metrics = compute_policy_loss(
            config, lp, *list(data.values())[1:], selection, entropy, ref
        )
        loss.backward()
        assert not bool_calls
    assert set(metrics) >= {"loss/total", "ratio/clipfrac_high", "kl/rollout_k3"}
