"""Policy losses, aggregation, regularisers and config checks on hand-computed inputs."""

import math

import pytest
import torch

from toy_entropy.algorithms.losses import (
    AGG_MODES,
    POLICY_LOSSES,
    AggregationNorm,
    PolicyLossConfig,
    aggregate,
    compute_policy_loss,
    kl_estimate,
    policy_loss,
    select_tokens,
)

pytestmark = pytest.mark.usefixtures("float64_default")


# One response of 4 tokens: ratios r, advantages A, log-probs lp (old_lp = lp - log r).
RATIOS = [1.5, 0.5, 1.1, 0.7]
ADVANTAGES = [1.0, -1.0, 2.0, -2.0]
LOG_PROBS = [-1.0, -2.0, -0.5, -3.0]
# pg1 = -A r = [-1.5, 0.5, -2.2, 1.4]; with eps 0.2: pg2 = -A clamp(r) = [-1.2, 0.8, -2.2, 1.6],
# so PPO's per-token loss max(pg1, pg2) = [-1.2, 0.8, -2.2, 1.6]. Token 0 is clipped high
# (A > 0, r > 1.2), tokens 1 and 3 low (A < 0, r < 0.8); only token 2 keeps a gradient.
# Covariance: mean lp = -1.625, mean A = 0, cov = (lp + 1.625) A = [0.625, 0.375, 2.25, 2.75].


def _inputs(requires_grad: bool = True) -> dict[str, torch.Tensor]:
    log_probs = torch.tensor([LOG_PROBS], requires_grad=requires_grad)
    old = torch.tensor([LOG_PROBS]) - torch.log(torch.tensor([RATIOS]))
    return {
        "log_probs": log_probs,
        "old_log_probs": old,
        "advantages": torch.tensor([ADVANTAGES]),
        "response_mask": torch.ones(1, 4, dtype=torch.bool),
    }


def _loss(config: PolicyLossConfig, **extra) -> tuple[torch.Tensor, dict, torch.Tensor]:
    batch = _inputs() | extra
    loss, metrics = policy_loss(config, **batch)
    loss.backward()
    return loss, metrics, batch["log_probs"].grad[0]


def test_vanilla_ppo_exact_value_clip_fractions_and_gradient():
    loss, metrics, grad = _loss(PolicyLossConfig(loss_mode="vanilla"))
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2 + 1.6) / 4)
    assert metrics["ratio/clipfrac_high"].item() == 0.25
    assert metrics["ratio/clipfrac_low"].item() == 0.5
    # d/dlp of -A r is -A r for unclipped tokens, 0 for clipped ones.
    expected = torch.tensor([0.0, 0.0, -2.2, 0.0]) / 4
    torch.testing.assert_close(grad, expected)
    k1 = -sum(math.log(r) for r in RATIOS) / 4
    k3 = sum(r - 1 - math.log(r) for r in RATIOS) / 4
    assert metrics["kl/rollout_k1"].item() == pytest.approx(k1)
    assert metrics["kl/rollout_k3"].item() == pytest.approx(k3)


def test_clip_higher_admits_the_high_ratio_token():
    loss, metrics, _ = _loss(PolicyLossConfig(loss_mode="vanilla", clip_ratio_high=0.6))
    # r = 1.5 < 1.6: token 0 keeps pg1 = -1.5.
    assert loss.item() == pytest.approx((-1.5 + 0.8 - 2.2 + 1.6) / 4)
    assert metrics["ratio/clipfrac_high"].item() == 0.0


def test_dual_clip_bounds_negative_advantage_tokens():
    config = PolicyLossConfig(loss_mode="vanilla", clip_ratio_c=3.0)
    batch = {
        "log_probs": torch.tensor([[0.0, 0.0]], requires_grad=True),
        "old_log_probs": -torch.log(torch.tensor([[5.0, 2.0]])),  # r = 5, 2
        "advantages": torch.tensor([[-1.0, -1.0]]),
        "response_mask": torch.ones(1, 2),
    }
    loss, metrics = policy_loss(config, **batch)
    # max(pg1, pg2) = [5, 2]; dual clip min(., 3) = [3, 2].
    assert loss.item() == pytest.approx((3.0 + 2.0) / 2)
    assert metrics["ratio/clipfrac_dual"].item() == 0.5


def test_pg_is_reinforce_without_ratio():
    loss, metrics, grad = _loss(PolicyLossConfig(loss_mode="pg"))
    expected = sum(-a * lp for a, lp in zip(ADVANTAGES, LOG_PROBS, strict=True)) / 4
    assert loss.item() == pytest.approx(expected)
    torch.testing.assert_close(grad, -torch.tensor(ADVANTAGES) / 4)
    assert "ratio/clipfrac_high" not in metrics


def test_clip_cov_removes_the_one_in_band_unclipped_token():
    # Band (0.5, 5) holds tokens 0, 2, 3; PPO clips 0 and 3, so 2 is the only candidate.
    # n = max(1, floor(0.25 * 4)) = 1.
    config = PolicyLossConfig(loss_mode="clip_cov", clip_cov_ratio=0.25, clip_cov_lb=0.5)
    loss, metrics, grad = _loss(config)
    assert loss.item() == pytest.approx((-1.2 + 0.8 + 0.0 + 1.6) / 4)
    assert torch.equal(grad, torch.zeros(4))
    assert metrics["select/frac"].item() == 0.25
    # The band is strict: with lb = cov of token 2, nothing is a candidate.
    strict = PolicyLossConfig(loss_mode="clip_cov", clip_cov_ratio=0.25, clip_cov_lb=2.25)
    assert _loss(strict)[1]["select/frac"].item() == 0.0


def test_kl_cov_penalises_the_top_covariance_token():
    config = PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.25, ppo_kl_coef=2.0)
    loss, metrics, grad = _loss(config)
    # No clipping; token 3 (cov 2.75) gets 2 * |log 0.7|.
    pg1 = (-1.5 + 0.5 - 2.2 + 1.4) / 4
    assert loss.item() == pytest.approx(pg1 + 2.0 * abs(math.log(0.7)) / 4)
    expected = torch.tensor([-1.5, 0.5, -2.2, 1.4 - 2.0]) / 4  # d|lp - old|/dlp = -1 there
    torch.testing.assert_close(grad, expected)
    assert metrics["select/frac"].item() == 0.25
    assert "ratio/clipfrac_high" not in metrics


def test_kl_cov_with_ppo_clip_uses_the_clipped_surrogate():
    config = PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.25, kl_cov_ppo_clip=True)
    loss, metrics, _ = _loss(config)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2 + 1.6) / 4 + abs(math.log(0.7)) / 4)
    assert metrics["ratio/clipfrac_low"].item() == 0.5


def test_kl_cov_is_inert_on_policy():
    """With lp == old_lp the penalty and its gradient vanish: the gradient is that of -A*ratio."""
    torch.manual_seed(0)
    log_probs = (-torch.rand(6, 9)).requires_grad_()
    advantages = torch.randn(6, 1).expand(6, 9)
    mask = torch.rand(6, 9) > 0.3
    config = PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.1, ppo_kl_coef=5.0)
    loss, metrics = policy_loss(config, log_probs, log_probs.detach(), advantages, mask)
    loss.backward()
    assert metrics["select/frac"].item() > 0
    expected = -advantages * mask / mask.sum()
    torch.testing.assert_close(log_probs.grad, expected)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", (1 + 2 + 4) / 3),
        ("seq-mean-token-mean", ((1 + 2) / 2 + 4 / 1) / 2),
        ("seq-mean-token-sum", (3 + 4) / 2),
        ("seq-mean-token-sum-norm", (3 / 3 + 4 / 3) / 2),  # default norm: T = 3
    ],
)
def test_aggregation_modes_exact(mode, expected):
    loss_mat = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # an all-padding row counts nowhere
    norm = AggregationNorm.from_mask(mask.bool())
    assert aggregate(loss_mat, mask, mode, norm).item() == pytest.approx(expected)


def test_aggregation_constant_norm_and_weights():
    loss_mat = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    norm = AggregationNorm.from_mask(mask, token_sum_norm=4.0)
    assert aggregate(loss_mat, mask, "seq-mean-token-sum-norm", norm).item() == 0.875
    weights = torch.tensor([[True, False, False], [True, False, False]])
    # The weights drop token (0, 1) from the sum; the length of row 0 stays 2.
    value = aggregate(loss_mat, mask, "seq-mean-token-mean", norm, weights=weights)
    assert value.item() == pytest.approx((1 / 2 + 4 / 1) / 2)
    with pytest.raises(ValueError, match="loss_agg_mode must be one of"):
        aggregate(loss_mat, mask, "sum", norm)


@pytest.mark.parametrize("agg_mode", AGG_MODES)
def test_loss_mode_agrees_with_aggregate_of_per_token_loss(agg_mode):
    batch = _inputs()
    batch["response_mask"] = torch.tensor([[True, True, True, False]])
    config = PolicyLossConfig(loss_mode="vanilla", loss_agg_mode=agg_mode, loss_agg_norm=8.0)
    loss, _ = policy_loss(config, **batch)
    per_token = torch.tensor([[-1.2, 0.8, -2.2, 0.0]])
    norm = AggregationNorm.from_mask(batch["response_mask"], token_sum_norm=8.0)
    expected = aggregate(per_token, batch["response_mask"], agg_mode, norm)
    assert loss.item() == pytest.approx(expected.item())


@pytest.mark.parametrize(
    ("kind", "values"),
    [
        ("k1", [0.5, -1.0]),
        ("k2", [0.125, 0.5]),
        ("k3", [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1.0]),
        ("abs", [0.5, 1.0]),
    ],
)
def test_kl_estimators_exact(kind, values):
    log_probs = torch.tensor([[-1.0, -2.0]])
    ref_log_probs = torch.tensor([[-1.5, -1.0]])  # lp - ref = [0.5, -1]
    torch.testing.assert_close(kl_estimate(log_probs, ref_log_probs, kind), torch.tensor([values]))


def test_entropy_bonus_and_reference_kl_compose_with_any_loss():
    entropy = torch.tensor([[1.0, 2.0, 3.0, 4.0]], requires_grad=True)
    ref = torch.tensor([LOG_PROBS]) - 0.5  # lp - ref = 0.5 everywhere: k1 = 0.5
    config = PolicyLossConfig(
        loss_mode="vanilla", entropy_coeff=0.01, kl_loss_coef=0.1, kl_loss_type="k1"
    )
    loss, metrics, grad = _loss(config, entropy=entropy, ref_log_probs=ref)
    assert loss.item() == pytest.approx(-0.25 - 0.01 * 2.5 + 0.1 * 0.5)
    assert metrics["loss/entropy"].item() == 2.5
    assert metrics["loss/kl_ref"].item() == pytest.approx(0.5)
    assert metrics["loss/policy"].item() == pytest.approx(-0.25)
    torch.testing.assert_close(entropy.grad, torch.full((1, 4), -0.01 / 4))
    torch.testing.assert_close(grad, torch.tensor([0.0, 0.0, -2.2, 0.0]) / 4 + 0.1 / 4)


def test_zero_coefficients_log_the_regularisers_without_gradient():
    entropy = torch.ones(1, 4, requires_grad=True)
    _, metrics, _ = _loss(PolicyLossConfig(), entropy=entropy)
    assert metrics["loss/entropy"].item() == 1.0
    assert entropy.grad is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("clip_cov_ratio", -0.1, r"clip_cov_ratio must be a fraction in \(0, 1\]"),
        ("clip_cov_ratio", 2.0, r"clip_cov_ratio must be a fraction in \(0, 1\]"),
        ("kl_cov_ratio", 0.0, r"kl_cov_ratio must be a fraction in \(0, 1\]"),
        ("clip_ratio_low", 1.5, r"clip_ratio_low must be a fraction in \[0, 1\]"),
        ("clip_ratio_high", -0.2, "clip_ratio_high must be a fraction >= 0"),
        ("clip_ratio_c", 1.0, "clip_ratio_c must be None or a number > 1"),
        ("clip_cov_lb", 5.0, "clip_cov_lb must be < clip_cov_ub"),
        ("loss_mode", "ppo", r"loss_mode must be one of \['clip_cov', 'kl_cov', 'pg', 'vanilla'\]"),
        ("loss_agg_mode", "mean", "loss_agg_mode must be one of"),
        ("kl_loss_type", "k4", r"kl_loss_type must be one of \['abs', 'k1', 'k2', 'k3'\]"),
        ("log_ratio_clamp", 0.0, "log_ratio_clamp must be a number > 0"),
        ("loss_agg_norm", -1.0, "loss_agg_norm must be None or a number > 0"),
        ("ppo_kl_coef", float("nan"), "ppo_kl_coef must be a number >= 0"),
        ("kl_cov_ppo_clip", 1, "kl_cov_ppo_clip must be True or False"),
    ],
)
def test_bad_config_names_field_value_and_allowed(field, value, message):
    with pytest.raises(ValueError, match=message) as error:
        PolicyLossConfig(**{field: value})
    assert repr(value) in str(error.value)


def test_registry_lists_the_four_losses():
    assert sorted(POLICY_LOSSES) == ["clip_cov", "kl_cov", "pg", "vanilla"]


def test_bad_tensors_raise_naming_the_argument():
    batch = _inputs()
    config = PolicyLossConfig()
    with pytest.raises(ValueError, match=r"advantages shape \(1, 3\) must equal response_mask"):
        policy_loss(config, **(batch | {"advantages": torch.ones(1, 3)}))
    with pytest.raises(ValueError, match="response_mask must be"):
        policy_loss(config, **(batch | {"response_mask": torch.ones(4)}))
    with pytest.raises(ValueError, match="old_log_probs must be floating point"):
        policy_loss(config, **(batch | {"old_log_probs": torch.ones(1, 4, dtype=torch.long)}))
    with pytest.raises(ValueError, match="response_mask has no valid token"):
        policy_loss(config, **(batch | {"response_mask": torch.zeros(1, 4)}))
    with pytest.raises(ValueError, match=r"entropy_coeff=0.1 needs entropy"):
        policy_loss(PolicyLossConfig(entropy_coeff=0.1), **batch)
    with pytest.raises(ValueError, match=r"kl_loss_coef=0.1 needs ref_log_probs"):
        policy_loss(PolicyLossConfig(kl_loss_coef=0.1), **batch)
    selection = select_tokens(config, **(batch | {"log_probs": batch["log_probs"].detach()}))
    with pytest.raises(ValueError, match=r"pass selection\[rows\]"):
        compute_policy_loss(
            config,
            torch.zeros(2, 4),
            torch.zeros(2, 4),
            torch.zeros(2, 4),
            torch.ones(2, 4),
            selection,
        )
    with pytest.raises(TypeError, match="dist must be None"):
        select_tokens(config, **(batch | {"log_probs": batch["log_probs"].detach()}), dist=2)
