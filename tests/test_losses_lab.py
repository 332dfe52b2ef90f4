"""The entropy-lab loss knobs on hand-computed inputs: sample polarity (PSR / NSR /
W-REINFORCE), the batch-global top entropy quantile and the adaptive entropy coefficient."""

import pytest
import torch

from toy_entropy.algorithms.losses import (
    AdaptiveEntropyCoef,
    PolicyLossConfig,
    compute_policy_loss,
    policy_loss,
    select_tokens,
)

pytestmark = pytest.mark.usefixtures("float64_default")


# One response of 4 tokens (as tests/test_losses.py): PPO's per-token loss at eps 0.2 is
# [-1.2, 0.8, -2.2, 1.6]; only token 2 (A = 2, r = 1.1) is unclipped.
RATIOS = [1.5, 0.5, 1.1, 0.7]
ADVANTAGES = [1.0, -1.0, 2.0, -2.0]
LOG_PROBS = [-1.0, -2.0, -0.5, -3.0]
ENTROPY = [0.5, 0.1, 0.9, 0.3]


def _batch() -> dict[str, torch.Tensor]:
    return {
        "log_probs": torch.tensor([LOG_PROBS], requires_grad=True),
        "old_log_probs": torch.tensor([LOG_PROBS]) - torch.log(torch.tensor([RATIOS])),
        "advantages": torch.tensor([ADVANTAGES]),
        "response_mask": torch.ones(1, 4, dtype=torch.bool),
    }


def _loss_and_grad(config: PolicyLossConfig, **extra):
    batch = _batch() | extra
    loss, metrics = policy_loss(config, **batch)
    loss.backward()
    return loss.item(), metrics, batch["log_probs"].grad[0].tolist()


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ((1.0, 1.0), (-1.2 + 0.8 - 2.2 + 1.6) / 4),
        ((0.1, 1.0), (-0.12 + 0.8 - 0.22 + 1.6) / 4),  # W-REINFORCE, lambda = 0.1
        ((1.0, 0.0), (-1.2 - 2.2) / 4),  # PSR
        ((0.0, 1.0), (0.8 + 1.6) / 4),  # NSR
    ],
)
def test_sample_weights_scale_the_ppo_terms_by_advantage_sign(weights, expected):
    config = PolicyLossConfig(positive_sample_weight=weights[0], negative_sample_weight=weights[1])
    loss, _, grad = _loss_and_grad(config)
    assert loss == pytest.approx(expected)
    assert grad == pytest.approx([0.0, 0.0, -2.2 * weights[0] / 4, 0.0])  # token 2 only


def test_sample_weights_on_reinforce_gradient_exact():
    config = PolicyLossConfig(loss_mode="pg", positive_sample_weight=0.1)
    _, _, grad = _loss_and_grad(config)
    assert grad == pytest.approx([-0.1 / 4, 1.0 / 4, -0.2 / 4, 2.0 / 4])  # -u A / N


def test_sample_weights_leave_the_kl_cov_penalty_and_the_entropy_bonus():
    base = dict(loss_mode="kl_cov", kl_cov_ratio=0.25, ppo_kl_coef=1.0, entropy_coeff=0.5)
    entropy = torch.tensor([ENTROPY])
    psr, _, _ = _loss_and_grad(
        PolicyLossConfig(**base, negative_sample_weight=0.0), entropy=entropy
    )
    # cov = [0.625, 0.375, 2.25, 2.75]: KL-Cov penalises token 3 (|log r| = -log 0.7).
    # PSR keeps -A r of tokens 0, 2 and the penalty of token 3; the bonus is -0.5 * mean(H).
    penalty = -torch.log(torch.tensor(0.7)).item()
    expected = (-1.5 - 2.2 + penalty) / 4 - 0.5 * sum(ENTROPY) / 4
    assert psr == pytest.approx(expected)


def test_top_entropy_quantile_keeps_the_highest_entropy_tokens():
    config = PolicyLossConfig(loss_mode="pg", top_entropy_quantile=0.5)  # floor(0.5 * 4) = 2
    _, metrics, grad = _loss_and_grad(config, entropy=torch.tensor([ENTROPY]))
    assert grad == pytest.approx([-1.0 / 4, 0.0, -2.0 / 4, 0.0])  # tokens 0 (0.5) and 2 (0.9)
    assert metrics["select/entropy_kept_frac"].item() == pytest.approx(0.5)
    assert metrics["select/entropy_threshold"].item() == pytest.approx(0.5)


def test_top_entropy_quantile_is_global_over_rows_and_ignores_padding():
    """TRL's own example: 10 valid tokens, rho = 0.2 keeps the 2 highest (0.9 and 1.0); the
    padded 1.1 and 1.2 (here NaN-free but larger) do not count."""
    entropy = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.7, 0.8, 0.9, 1.0, 1.1, 1.2]])
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    zeros = torch.zeros(2, 6)
    config = PolicyLossConfig(top_entropy_quantile=0.2)
    selection = select_tokens(config, zeros, zeros, torch.ones(2, 6), mask, entropy=entropy)
    expected = torch.zeros(2, 6, dtype=torch.bool)
    expected[1, 2:4] = True
    assert torch.equal(selection.entropy_kept, expected)
    # A micro-batch of row 1 keeps its slice and the whole batch's normaliser (10 tokens).
    part = selection[1:]
    assert torch.equal(part.entropy_kept, expected[1:]) and part.norm.n_tokens.item() == 10
    # Ties go to the lowest global index: all equal, rho = 0.5 keeps the first 5 valid tokens.
    tied = select_tokens(
        PolicyLossConfig(top_entropy_quantile=0.5), zeros, zeros, zeros, mask, entropy=zeros + 1
    )
    assert tied.entropy_kept[0, :5].all() and tied.entropy_kept.sum().item() == 5


def test_low_entropy_and_random_subsets():
    """TRL's example again: the lowest 80% (8 of the 10 valid tokens) are the complement of
    the top 20%; a random 20% keeps 2 valid tokens, the same for the same generator seed."""
    entropy = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.7, 0.8, 0.9, 1.0, 1.1, 1.2]])
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    zeros = torch.zeros(2, 6)

    def kept(by: str, rho: float, seed: int = 0) -> torch.Tensor:
        config = PolicyLossConfig(top_entropy_quantile=rho, top_entropy_quantile_by=by)
        generator = torch.Generator().manual_seed(seed)
        return select_tokens(
            config, zeros, zeros, zeros, mask, generator=generator, entropy=entropy
        ).entropy_kept

    assert torch.equal(kept("low_entropy", 0.8), mask & ~kept("entropy", 0.2))
    random = kept("random", 0.2)
    assert random.sum().item() == 2 and not (random & ~mask).any()
    assert torch.equal(random, kept("random", 0.2))
    draws = {tuple(kept("random", 0.2, seed).nonzero().flatten().tolist()) for seed in range(8)}
    assert len(draws) > 1  # another seed, another subset
    with pytest.raises(ValueError, match="top_entropy_quantile_by"):
        PolicyLossConfig(top_entropy_quantile_by="median")


def test_micro_batches_with_both_knobs_sum_to_the_full_batch():
    gen = torch.Generator().manual_seed(3)
    lp = -3 * torch.rand(6, 8, generator=gen)
    old, adv = lp + 0.2 * torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    mask = torch.arange(8) < torch.randint(3, 9, (6, 1), generator=gen)
    entropy = torch.rand(6, 8, generator=gen)
    config = PolicyLossConfig(
        top_entropy_quantile=0.3, positive_sample_weight=0.2, clip_ratio_high=0.28
    )
    selection = select_tokens(config, lp, old, adv, mask, entropy=entropy)
    full, _ = compute_policy_loss(config, lp, old, adv, mask, selection)
    parts = sum(
        compute_policy_loss(config, lp[r], old[r], adv[r], mask[r], selection[r])[0]
        for r in (slice(0, 2), slice(2, 6))
    )
    assert parts.item() == pytest.approx(full.item())
    assert selection.entropy_kept.sum().item() == int(0.3 * mask.sum().item())


def test_missing_entropy_is_refused():
    with pytest.raises(ValueError, match="top_entropy_quantile=0.2 needs entropy"):
        _loss_and_grad(PolicyLossConfig(top_entropy_quantile=0.2))
    with pytest.raises(ValueError, match="adaptive entropy coefficient needs entropy"):
        _loss_and_grad(PolicyLossConfig(use_adaptive_entropy=True))


def test_adaptive_entropy_coefficient_steps_and_clamps():
    config = PolicyLossConfig(
        use_adaptive_entropy=True, entropy_coeff=0.01, entropy_coef_max=0.012
    )  # target 0.2, delta 0.005 (TRL's defaults)
    control = AdaptiveEntropyCoef(config)
    seen = [control.update(h).item() for h in (0.1, 0.3, 0.3, 0.3, 0.2)]
    assert seen == pytest.approx([0.012, 0.007, 0.002, 0.0, 0.005])  # at the target: up
    state = control.state_dict()
    control.update(torch.tensor(1.0))
    control.load_state_dict(state)
    assert control.value.item() == pytest.approx(0.005)
    with pytest.raises(ValueError, match="use_adaptive_entropy=True"):
        AdaptiveEntropyCoef(PolicyLossConfig())


def test_a_tensor_entropy_coefficient_drives_the_bonus():
    config = PolicyLossConfig(loss_mode="pg", use_adaptive_entropy=True)
    entropy = torch.tensor([ENTROPY], requires_grad=True)
    batch = _batch()
    loss, metrics = policy_loss(config, **batch, entropy=entropy, entropy_coeff=torch.tensor(0.3))
    loss.backward()
    policy = sum(-a * lp for a, lp in zip(ADVANTAGES, LOG_PROBS, strict=True)) / 4
    assert loss.item() == pytest.approx(policy - 0.3 * sum(ENTROPY) / 4)
    assert entropy.grad[0].tolist() == pytest.approx([-0.3 / 4] * 4)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"positive_sample_weight": -0.1}, "positive_sample_weight must be a number >= 0"),
        ({"negative_sample_weight": float("nan")}, "negative_sample_weight must be"),
        (
            {"positive_sample_weight": 0.0, "negative_sample_weight": 0.0},
            "must not both be 0",
        ),
        ({"top_entropy_quantile": 0.0}, r"top_entropy_quantile must be a fraction in \(0, 1\]"),
        ({"top_entropy_quantile": 1.5}, "top_entropy_quantile must be .*got 1.5"),
        ({"use_adaptive_entropy": "yes"}, "use_adaptive_entropy must be True or False"),
        ({"entropy_target": -1.0}, "entropy_target must be a number >= 0"),
        ({"entropy_coef_delta": 0.0}, "entropy_coef_delta must be a number > 0"),
        ({"entropy_coef_min": 0.5, "entropy_coef_max": 0.1}, "entropy_coef_max must be >="),
        (
            {"use_adaptive_entropy": True, "entropy_coeff": 2.0},
            r"entropy_coeff .* \[0.0, 1.0\], got 2.0",
        ),
    ],
)
def test_bad_knob_values_name_the_field_value_and_allowed(fields, message):
    with pytest.raises(ValueError, match=message):
        PolicyLossConfig(**fields)


def test_no_host_sync_with_the_new_knobs(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation")

    gen = torch.Generator().manual_seed(1)
    lp = -3 * torch.rand(4, 10, generator=gen)
    old, adv = lp + 0.1, torch.randn(4, 10, generator=gen)
    mask, entropy = torch.ones(4, 10, dtype=torch.bool), torch.rand(4, 10, generator=gen)
    config = PolicyLossConfig(
        loss_mode="kl_cov",
        top_entropy_quantile=0.2,
        positive_sample_weight=0.1,
        use_adaptive_entropy=True,
    )
    control = AdaptiveEntropyCoef(config)
    for name in ("item", "cpu", "tolist", "numpy", "nonzero", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    monkeypatch.setattr(torch, "nonzero", forbidden)
    lp = lp.clone().requires_grad_()
    loss, metrics = policy_loss(
        config, lp, old, adv, mask, entropy=entropy, entropy_coeff=control.value
    )
    loss.backward()
    control.update(metrics["loss/entropy"])
    monkeypatch.undo()
    assert control.value.item() == pytest.approx(0.0)  # entropy > 0.2: down, clamped at 0


def test_a_float64_controller_value_keeps_the_loss_dtype():
    config = PolicyLossConfig(use_adaptive_entropy=True, entropy_coeff=0.1)
    batch = {k: v.detach().float() if v.is_floating_point() else v for k, v in _batch().items()}
    entropy = torch.tensor([ENTROPY], dtype=torch.float32)
    value = AdaptiveEntropyCoef(config).value  # float64
    loss, _ = policy_loss(config, **batch, entropy=entropy, entropy_coeff=value)
    assert loss.dtype == torch.float32
