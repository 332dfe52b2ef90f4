"""Clip-Cov's per-token selection chain in one pass: covariance band, PPO-clip test, random key.

:func:`clip_cov_scores` maps every token of this rank's ``(B, T)`` rows to one int32 score:
``-1`` for a token that is not a Clip-Cov candidate, and for a candidate a random key that
is unique in the global batch (a seeded bijection of the token's global position). The
``n`` largest scores are the sample (see :mod:`toy_entropy.algorithms.losses.selection`); no tie
handling is needed because no two candidates share a score.

The random key is counter-based: a keyed integer hash of the token's global position, with
two 31-bit seeds drawn from the caller's generator (:func:`draw_seeds`).
So the sample depends only on the seed and the global position, not on how the rows are
split over ranks or micro-batches, and drawing it costs a few integer operations per token
instead of a pass of the (single-threaded, on CPU) torch generator over the whole batch.

The function is plain tensor code. :func:`fused` returns it compiled by ``torch.compile`` (one
generated loop instead of ~25 elementwise passes) when the global batch holds at least
:data:`COMPILE_MIN_TOKENS` tokens, eager otherwise (and on any compile failure). Every
operation in it is exact (subtraction, product, comparisons, integer arithmetic that wraps
modulo 2^32 in both eager PyTorch and generated code), so the compiled and eager results are
bit-identical; ``tests/test_losses_fused.py`` checks it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from toy_entropy.algorithms.losses.config import PolicyLossConfig

__all__ = [
    "COMPILE_MIN_TOKENS",
    "clip_cov_bounds",
    "clip_cov_scores",
    "fused",
    "draw_seeds",
    "hash31",
    "MAX_POSITIONS",
]

COMPILE_MIN_TOKENS = 1 << 16
"""Global batch size (tokens) from which :func:`fused` compiles. Compiling costs seconds once
per process (5-10 s on a 2-core CPU, less with inductor's on-disk cache), which the toy CPU
runs (hundreds of tokens per batch, seconds per run) would not win back, although a compiled
call is faster than the eager chain from ~1e3 tokens on (0.32 against 0.40-0.70 ms on that
CPU). Set it to ``math.inf`` to stay eager, to 0 to always compile. The choice depends on the
global size, so every rank and the single process make the same one."""

_MASK31 = 2**31 - 1
MAX_POSITIONS = 2**31
"""Global token positions must fit in 31 bits: the random key is a bijection of them."""

_compiled: dict[Callable, Callable] = {}
_compile_failed: set[str] = set()


def hash31(x: torch.Tensor) -> torch.Tensor:
    """A bijection of ``[0, 2^31)``: two multiply-xorshift rounds (C. Wellons' constants).

    ``x``: int32 tensor of any shape with values in ``[0, 2^31)``; returns the same. The
    products wrap modulo 2^32 and are masked to 31 bits (multiplication by an odd constant
    is a bijection modulo 2^31, and so is ``x ^ (x >> s)``); every value stays non-negative,
    so the shifts are logical. The same function in eager PyTorch and in compiled code.
    """
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _MASK31
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _MASK31
    return x ^ (x >> 15)


def draw_seeds(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``(2,)`` int32 seeds in ``[0, 2^31)`` from the caller's generator, on ``device``
    (no host read). The Clip-Cov sample depends on them and the global positions only."""
    return torch.randint(0, _MASK31, (2,), generator=generator, device=device, dtype=torch.int32)


def clip_cov_bounds(config: PolicyLossConfig, dtype: torch.dtype, device: torch.device):
    """``(4,)`` tensor ``[lb, ub, log-ratio floor, log-ratio ceiling]`` in ``dtype``.

    PPO clips a token (``pg2 > pg1``) when ``A > 0`` and ``ratio > 1 + clip_ratio_high``, or
    ``A < 0`` and ``ratio < 1 - clip_ratio_low``. With ``ratio = exp(clamp(log_ratio, +-c))``
    that is ``log_ratio > log(1 + clip_ratio_high)`` (never if that is >= c), resp.
    ``log_ratio < log(1 - clip_ratio_low)`` (never if that is <= -c); comparing log-ratios
    avoids an ``exp`` per token (it can differ from the ratio test only within one rounding
    step of the clip boundary). Bounds are rounded to ``dtype`` here, once, so that eager
    and compiled code compare the same numbers.
    """
    clamp = config.log_ratio_clamp
    low = 1.0 - config.clip_ratio_low
    floor = math.log(low) if low > 0 and math.log(low) > -clamp else -math.inf
    ceiling = math.log1p(config.clip_ratio_high)
    ceiling = ceiling if ceiling < clamp else math.inf
    values = [config.clip_cov_lb, config.clip_cov_ub, floor, ceiling]
    # Filled on the device: a host-to-device copy would synchronise on CUDA.
    return torch.stack([torch.full((), v, dtype=dtype, device=device) for v in values])


def clip_cov_scores(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    log_prob_mean: torch.Tensor,
    advantage_mean: torch.Tensor,
    bounds: torch.Tensor,
    seeds: torch.Tensor,
    first_index: int,
) -> torch.Tensor:
    """Clip-Cov score of every token: ``-1`` for non-candidates, else a unique random key.

    A candidate is valid, has ``lb < cov < ub`` with ``cov = (lp - mean lp) * (A - mean A)``,
    and is not clipped by PPO (:func:`clip_cov_bounds`). Its key is
    ``hash31(hash31(i ^ s0) ^ s1)`` of its global flat index ``i`` (ranks in order, then
    row-major): a seeded bijection of ``[0, 2^31)``, so keys never tie and their order is a
    pseudo-random order of the positions.

    Args:
        log_probs, old_log_probs, advantages: ``(B, T)`` float, detached.
        weights: ``(B, T)`` response mask as 0/1 floats (compiled code loads floats much
            faster than bools).
        log_prob_mean, advantage_mean: 0-dim, in the dtype of ``log_probs``.
        bounds: ``(4,)`` from :func:`clip_cov_bounds`.
        seeds: ``(2,)`` int32 from :func:`draw_seeds`.
        first_index: global flat index of this rank's first token; ``first_index + B * T``
            must not exceed :data:`MAX_POSITIONS`.

    Returns:
        ``(B, T)`` int32 scores in ``[-1, 2^31)``.
    """
    rows, length = log_probs.shape
    cov = (log_probs - log_prob_mean) * (advantages - advantage_mean)  # (B, T)
    log_ratio = log_probs - old_log_probs
    not_clipped = ((advantages <= 0) | (log_ratio <= bounds[3])) & (
        (advantages >= 0) | (log_ratio >= bounds[2])
    )
    candidate = (cov > bounds[0]) & (cov < bounds[1]) & (weights > 0) & not_clipped  # (B, T)
    index = torch.arange(rows * length, device=log_probs.device, dtype=torch.int32)
    index = (index + first_index).view(rows, length)  # (B, T) global positions
    key = hash31(hash31(index ^ seeds[0]) ^ seeds[1])  # (B, T) int32 in [0, 2^31)
    return torch.where(candidate, key, -1)


def fused(fn: Callable, global_tokens: int, device: torch.device) -> Callable:
    """``fn`` compiled with ``torch.compile`` (dynamic shapes) when ``global_tokens`` reaches
    :data:`COMPILE_MIN_TOKENS`, else ``fn`` itself. A device type whose compilation failed
    once (no C++ compiler, no Triton) stays eager, with one warning."""
    if global_tokens < COMPILE_MIN_TOKENS or device.type in _compile_failed:
        return fn
    compiled = _compiled.get(fn)
    if compiled is None:
        compiled = _compiled[fn] = torch.compile(fn, dynamic=True)

    def call(*args: object) -> torch.Tensor:
        try:
            return compiled(*args)
        except Exception as error:  # compile errors surface on the first call
            _compile_failed.add(device.type)
            warnings.warn(
                f"torch.compile of {fn.__name__} failed on {device.type} ({error!r}); "
                "running it eager (same result, slower)",
                RuntimeWarning,
                stacklevel=2,
            )
            return fn(*args)

    return call
