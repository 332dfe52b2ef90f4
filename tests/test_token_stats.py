"""Tests of the chunked per-token log-probs and entropies against the plain reference."""

from __future__ import annotations

import math

import pytest
import torch

from toy_entropy.models.token_stats import (
    token_log_probs_and_entropy,
    token_log_probs_and_entropy_reference,
)

B, T, C, V = 3, 7, 6, 17


def make_inputs(dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, C, generator=gen, dtype=dtype).requires_grad_()
    weight = torch.randn(V, C, generator=gen, dtype=dtype).requires_grad_()
    targets = torch.randint(0, V, (B, T), generator=gen)
    # Random cotangents make every output position matter differently.
    g_lp = torch.randn(B, T, generator=gen, dtype=dtype)
    g_h = torch.randn(B, T, generator=gen, dtype=dtype)
    return hidden, weight, targets, g_lp, g_h


def values_and_grads(fn, inputs, g_lp, g_h):
    log_probs, entropy = fn()
    loss = (g_lp * log_probs).sum() + (g_h * entropy).sum()
    return (log_probs, entropy, *torch.autograd.grad(loss, inputs))


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 16, 21, 64])
def test_hidden_path_matches_reference_fp64(chunk_size):
    hidden, weight, targets, g_lp, g_h = make_inputs(torch.float64)
    chunked = values_and_grads(
        lambda: token_log_probs_and_entropy(hidden, weight, targets, chunk_size),
        (hidden, weight), g_lp, g_h,
    )  # fmt: skip
    reference = values_and_grads(
        lambda: token_log_probs_and_entropy_reference(hidden @ weight.T, targets),
        (hidden, weight), g_lp, g_h,
    )  # fmt: skip
    for got, want in zip(chunked, reference, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("chunk_size", [2, 7, 100])
def test_logits_path_matches_reference_fp64_and_leaves_input_alone(chunk_size):
    hidden, weight, targets, g_lp, g_h = make_inputs(torch.float64, seed=1)
    logits = (hidden @ weight.T).detach().requires_grad_()
    before = logits.detach().clone()
    chunked = values_and_grads(
        lambda: token_log_probs_and_entropy(logits, None, targets, chunk_size),
        (logits,), g_lp, g_h,
    )  # fmt: skip
    reference = values_and_grads(
        lambda: token_log_probs_and_entropy_reference(logits, targets), (logits,), g_lp, g_h
    )
    for got, want in zip(chunked, reference, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    assert torch.equal(logits.detach(), before)


def test_fp32_matches_reference_loosely():
    hidden, weight, targets, g_lp, g_h = make_inputs(torch.float32, seed=2)
    chunked = values_and_grads(
        lambda: token_log_probs_and_entropy(hidden, weight, targets, chunk_size=4),
        (hidden, weight), g_lp, g_h,
    )  # fmt: skip
    reference = values_and_grads(
        lambda: token_log_probs_and_entropy_reference(hidden @ weight.T, targets),
        (hidden, weight), g_lp, g_h,
    )  # fmt: skip
    assert all(out.dtype == torch.float32 for out in chunked)
    for got, want in zip(chunked, reference, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_gradcheck_both_outputs():
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 5, (2, 3), generator=gen)
    assert torch.autograd.gradcheck(
        lambda h, w: token_log_probs_and_entropy(h, w, targets, chunk_size=4), (hidden, weight)
    )


def test_without_entropy_returns_none_and_same_log_prob_gradient():
    hidden, weight, targets, g_lp, _ = make_inputs(torch.float64, seed=4)
    log_probs, entropy = token_log_probs_and_entropy(
        hidden, weight, targets, chunk_size=5, with_entropy=False
    )
    assert entropy is None
    grads = torch.autograd.grad((g_lp * log_probs).sum(), (hidden, weight))
    ref_lp, _ = token_log_probs_and_entropy_reference(hidden @ weight.T, targets)
    ref_grads = torch.autograd.grad((g_lp * ref_lp).sum(), (hidden, weight))
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_masked_loss_gives_zero_gradient_at_masked_positions():
    hidden, weight, targets, _, _ = make_inputs(torch.float64, seed=5)
    mask = torch.ones(B, T, dtype=torch.float64)
    mask[0, 4:] = 0
    mask[2, 1:] = 0
    log_probs, entropy = token_log_probs_and_entropy(hidden, weight, targets, chunk_size=3)
    loss = -((log_probs + 0.1 * entropy) * mask).sum() / mask.sum()
    grad_hidden, grad_weight = torch.autograd.grad(loss, (hidden, weight))
    assert (grad_hidden[mask == 0] == 0).all()
    assert (grad_hidden[mask == 1].abs().sum(dim=-1) > 0).all()
    ref_lp, ref_h = token_log_probs_and_entropy_reference(hidden @ weight.T, targets)
    ref_loss = -((ref_lp + 0.1 * ref_h) * mask).sum() / mask.sum()
    ref_grads = torch.autograd.grad(ref_loss, (hidden, weight))
    torch.testing.assert_close(grad_hidden, ref_grads[0], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grad_weight, ref_grads[1], atol=1e-12, rtol=1e-12)


def test_uniform_distribution_values():
    logits = torch.zeros(2, 3, 8)
    targets = torch.tensor([[0, 3, 7], [1, 1, 2]])
    log_probs, entropy = token_log_probs_and_entropy(logits, None, targets, chunk_size=4)
    torch.testing.assert_close(log_probs, torch.full((2, 3), -math.log(8)))
    torch.testing.assert_close(entropy, torch.full((2, 3), math.log(8)))
    # A one-hot-like distribution: entropy ~0, the chosen token's log-prob ~0.
    peaked = torch.full((1, 1, 8), -1e4)
    peaked[0, 0, 5] = 0.0
    lp, h = token_log_probs_and_entropy(peaked, None, torch.tensor([[5]]))
    assert abs(lp.item()) < 1e-6 and abs(h.item()) < 1e-6


def test_bf16_autocast_keeps_fp32_statistics():
    hidden, weight, targets, g_lp, g_h = make_inputs(torch.float32, seed=6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked = values_and_grads(
            lambda: token_log_probs_and_entropy(hidden, weight, targets, chunk_size=4),
            (hidden, weight), g_lp, g_h,
        )  # fmt: skip
        reference = values_and_grads(
            lambda: token_log_probs_and_entropy_reference(hidden @ weight.T, targets),
            (hidden, weight), g_lp, g_h,
        )  # fmt: skip
    assert chunked[0].dtype == chunked[1].dtype == torch.float32
    assert chunked[2].dtype == chunked[3].dtype == torch.float32
    # Both compute the logits with a bf16 matmul; the softmax statistics agree closely.
    torch.testing.assert_close(chunked[0], reference[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(chunked[1], reference[1], atol=1e-4, rtol=1e-4)
    for got, want in zip(chunked[2:], reference[2:], strict=True):
        torch.testing.assert_close(got, want, atol=0.05, rtol=0.05)


def test_bad_arguments_raise():
    hidden, weight, targets, _, _ = make_inputs(torch.float32)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        token_log_probs_and_entropy(hidden, weight, targets, chunk_size=0)
    with pytest.raises(ValueError, match=r"targets must be a \(3, 7\) long tensor"):
        token_log_probs_and_entropy(hidden, weight, targets[:, :3])
    with pytest.raises(ValueError, match="weight must be"):
        token_log_probs_and_entropy(hidden, weight[:, :4], targets)
    with pytest.raises(ValueError, match="must be"):
        token_log_probs_and_entropy(hidden[0], weight, targets)
