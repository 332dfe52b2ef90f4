"""Memory-lean per-token log-probs and full-distribution entropies for large vocabularies.

RL losses need, at every response token, ``log pi(y_t)`` of the sampled token and the entropy
of the whole next-token distribution. Computed naively from (N, V) logits, autograd keeps the
logits, their log-softmax, the probabilities and products of them: several (N, V) fp32 tensors
at once, which dominates memory at vocabularies of 32k and more.

:func:`token_log_probs_and_entropy` instead walks over the N = B*T tokens in chunks. When given
hidden states and the output-embedding matrix it never forms all (N, V) logits: a custom
autograd function recomputes ``logits = hidden_chunk @ W^T`` chunk by chunk in the forward and
again in the backward pass and accumulates the gradients with respect to the hidden states and
W. The softmax statistics are computed in fp32 inside each chunk, also under bf16 autocast
(the matmul itself then runs in the autocast dtype). Given (N, V) logits instead, it saves the
log-softmax and probability copies: the logits' gradient is the only full-size allocation.
bench/RESULTS_memory.md has the measured peaks.

The gradients are those of the exact expressions: with ``p = softmax(z)``, ``lp = z_y - lse(z)``
and ``H = lse(z) - sum_a p_a z_a``,

    d lp / d z_a = 1[a = y] - p_a,        d H / d z_a = -p_a (log p_a + H).
"""

from __future__ import annotations

import torch

from toy_entropy.theory.entropy import entropy_from_logits

__all__ = [
    "DEFAULT_CHUNK_ELEMENTS",
    "token_log_probs_and_entropy",
    "token_log_probs_and_entropy_reference",
]


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax statistics run in fp64 for fp64 inputs and in fp32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_stats(
    logits: torch.Tensor, targets: torch.Tensor, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(log_probs, logsumexp, entropy)`` of one chunk of logits (n, V); each (n,), >= fp32."""
    logits = logits.to(_stats_dtype(logits.dtype))
    lse = torch.logsumexp(logits, dim=-1)  # (n,)
    log_probs = logits.gather(-1, targets[:, None]).squeeze(-1) - lse  # (n,)
    entropy = None
    if with_entropy:
        # In place on a fresh buffer: one extra (n, V) tensor instead of three.
        weighted = (logits - lse[:, None]).exp_().mul_(logits)  # (n, V) p_a z_a
        entropy = lse - weighted.sum(dim=-1)  # (n,)
    return log_probs, lse, entropy


def _chunk_logit_grad(
    logits: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor | None,
    grad_log_probs: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
) -> torch.Tensor:
    """Gradient (n, V) of ``sum(g_lp * lp + g_H * H)`` w.r.t. one chunk of logits (n, V).

    ``g_lp * 1[a = y] - p_a * (g_lp + g_H * (log p_a + H))``, built in place so that only two
    (n, V) buffers are alive. Overwrites ``logits``: pass a buffer the caller can spare.
    """
    dtype = lse.dtype
    log_p = logits.to(dtype).sub_(lse[:, None])  # (n, V)
    probs = log_p.exp()  # (n, V)
    if grad_entropy is not None:
        coeff = log_p.add_(entropy[:, None]).mul_(grad_entropy.to(dtype)[:, None])  # (n, V)
        if grad_log_probs is not None:
            coeff.add_(grad_log_probs.to(dtype)[:, None])
        grad = probs.mul_(coeff).neg_()
    else:
        grad = probs.mul_(-grad_log_probs.to(dtype)[:, None])
    if grad_log_probs is not None:
        grad.scatter_add_(-1, targets[:, None], grad_log_probs.to(dtype)[:, None])
    return grad


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor | None) -> torch.dtype:
    """dtype of the chunk matmul: the autocast dtype if autocast is on, else the promoted one."""
    if weight is None:
        return hidden.dtype
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(hidden.dtype, weight.dtype)


class _ChunkedTokenStats(torch.autograd.Function):
    """``(log_probs, entropy)`` per token, one chunk of (n, V) logits alive at a time.

    The input is either hidden states (N, C) with ``weight`` (V, C), in which case the logits
    of a chunk are recomputed as ``hidden_chunk @ weight.T`` in both passes, or logits (N, V)
    with ``weight=None``, in which case only their gradient is allocated at full size.
    """

    @staticmethod
    def forward(
        ctx,
        inputs: torch.Tensor,
        weight: torch.Tensor | None,
        targets: torch.Tensor,
        chunk_size: int,
        with_entropy: bool,
        stats_fn,
        logit_grad_fn,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = _compute_dtype(inputs, weight)
        N = inputs.shape[0]
        out_dtype = _stats_dtype(dtype)
        log_probs = inputs.new_empty(N, dtype=out_dtype)
        lse = inputs.new_empty(N, dtype=out_dtype)
        entropy = inputs.new_empty(N if with_entropy else 0, dtype=out_dtype)
        w = weight.to(dtype) if weight is not None else None
        with torch.autocast(inputs.device.type, enabled=False):
            for start in range(0, N, chunk_size):
                end = min(start + chunk_size, N)
                chunk = inputs[start:end]
                logits = chunk if w is None else chunk.to(dtype) @ w.T  # (n, V)
                lp, ls, h = stats_fn(logits, targets[start:end], with_entropy)
                log_probs[start:end] = lp
                lse[start:end] = ls
                if with_entropy:
                    entropy[start:end] = h
        ctx.save_for_backward(inputs, weight, targets, lse, entropy)
        ctx.chunk_size = chunk_size
        ctx.dtype = dtype
        ctx.logit_grad_fn = logit_grad_fn
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return log_probs, entropy

    @staticmethod
    def backward(ctx, grad_log_probs: torch.Tensor | None, grad_entropy: torch.Tensor | None):
        inputs, weight, targets, lse, entropy = ctx.saved_tensors
        if entropy.numel() == 0:
            grad_entropy = None
        dtype = ctx.dtype
        need_inputs, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_inputs = torch.empty_like(inputs) if need_inputs else None
        grad_weight = torch.zeros_like(weight, dtype=lse.dtype) if need_weight else None
        w = weight.to(dtype) if weight is not None else None
        with torch.autocast(inputs.device.type, enabled=False):
            for start in range(0, inputs.shape[0], ctx.chunk_size):
                end = min(start + ctx.chunk_size, inputs.shape[0])
                chunk = inputs[start:end].to(dtype)  # (n, C) or (n, V)
                grad_logits = ctx.logit_grad_fn(
                    chunk.clone() if w is None else chunk @ w.T,  # (n, V), overwritten
                    targets[start:end],
                    lse[start:end],
                    entropy[start:end] if grad_entropy is not None else None,
                    grad_log_probs[start:end] if grad_log_probs is not None else None,
                    grad_entropy[start:end] if grad_entropy is not None else None,
                ).to(dtype)  # (n, V)
                if need_inputs:
                    grad_inputs[start:end] = grad_logits if w is None else grad_logits @ w
                if need_weight and grad_weight.dtype == dtype:
                    grad_weight.addmm_(grad_logits.T, chunk)  # (V, C), no temporary
                elif need_weight:
                    grad_weight += (grad_logits.T @ chunk).to(grad_weight.dtype)  # (V, C)
        if need_weight:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_inputs, grad_weight, None, None, None, None, None


DEFAULT_CHUNK_ELEMENTS = 2**24
"""Logit entries per chunk when no chunk size is given (64 MiB in fp32)."""

_COMPILED: dict[str, object] = {}


def _kernels(compile: bool) -> tuple:
    """The per-chunk functions, compiled once per process when ``compile`` is set."""
    if not compile:
        return _chunk_stats, _chunk_logit_grad
    if not _COMPILED:
        _COMPILED["stats"] = torch.compile(_chunk_stats, dynamic=True)
        _COMPILED["grad"] = torch.compile(_chunk_logit_grad, dynamic=True)
    return _COMPILED["stats"], _COMPILED["grad"]


def token_log_probs_and_entropy(
    hidden_or_logits: torch.Tensor,
    weight: torch.Tensor | None,
    targets: torch.Tensor,
    chunk_size: int | None = None,
    with_entropy: bool = True,
    compile: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-prob of ``targets`` and full-distribution entropy, chunked over tokens.

    Args:
        hidden_or_logits: (B, T, C) final hidden states when ``weight`` is given (logits are
            ``hidden @ weight.T`` and are never formed for more than ``chunk_size`` tokens at
            a time), or (B, T, V) logits when ``weight`` is None.
        weight: (V, C) output-embedding matrix (``GPT.lm_head.weight``), or None.
        targets: (B, T) long token ids in [0, V) whose log-probs are wanted (any valid id at
            padded positions; mask the outputs afterwards).
        chunk_size: tokens per chunk; the extra memory is about three (chunk_size, V) fp32
            tensors. None: ``DEFAULT_CHUNK_ELEMENTS // V`` tokens (64 MiB of fp32 logits).
        with_entropy: also compute the entropy (else ``None`` is returned for it).
        compile: run the per-chunk softmax kernels through ``torch.compile``.

    Returns:
        ``log_probs`` (B, T) and ``entropy`` (B, T) in nats, fp32 (fp64 for fp64 inputs),
        differentiable with respect to ``hidden_or_logits`` and ``weight``. With logits as
        input the (N, V) gradient is the only full-size tensor allocated.
    """
    if hidden_or_logits.dim() != 3:
        raise ValueError(
            "token_log_probs_and_entropy: hidden_or_logits must be (B, T, C) or (B, T, V), "
            f"got shape {tuple(hidden_or_logits.shape)}"
        )
    B, T, _ = hidden_or_logits.shape
    if targets.shape != (B, T) or targets.dtype != torch.long:
        raise ValueError(
            f"token_log_probs_and_entropy: targets must be a ({B}, {T}) long tensor, got "
            f"{tuple(targets.shape)} {targets.dtype}"
        )
    if chunk_size is None:
        vocab_size = hidden_or_logits.shape[-1] if weight is None else weight.shape[0]
        chunk_size = max(1, DEFAULT_CHUNK_ELEMENTS // vocab_size)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(
            f"token_log_probs_and_entropy: chunk_size must be a positive int, got {chunk_size!r}"
        )
    if weight is not None and (weight.dim() != 2 or weight.shape[1] != hidden_or_logits.shape[-1]):
        raise ValueError(
            f"token_log_probs_and_entropy: weight must be (V, C) with C = "
            f"{hidden_or_logits.shape[-1]}, got {tuple(weight.shape)}"
        )
    stats_fn, logit_grad_fn = _kernels(compile)
    inputs = hidden_or_logits.reshape(B * T, -1)  # (N, C) or (N, V)
    log_probs, entropy = _ChunkedTokenStats.apply(
        inputs, weight, targets.reshape(-1), chunk_size, with_entropy, stats_fn, logit_grad_fn
    )
    return log_probs.view(B, T), entropy.view(B, T) if with_entropy else None


def token_log_probs_and_entropy_reference(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain (memory-hungry) reference: ``log_softmax`` + gather, and the full entropy.

    Args:
        logits: (B, T, V) next-token logits (upcast to fp32 unless already fp64).
        targets: (B, T) long token ids.

    Returns:
        ``log_probs`` (B, T) and ``entropy`` (B, T) in nats.
    """
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    return log_probs, entropy_from_logits(logits)
