"""A small decoder-only transformer policy (nanoGPT style) with logits at every position.

The model in one file: :class:`GPTConfig` (with named :data:`MODEL_SIZES`),
:class:`CausalSelfAttention`, :class:`MLP`, :class:`Block` and :class:`GPT`. Unlike nanoGPT's
``forward``, :meth:`GPT.forward` returns next-token logits at *every* position, because RL scores
every response token. :meth:`GPT.generate` samples with a key/value cache;
:meth:`GPT.generate_naive` runs the full forward pass for every new token and is the reference
the cache is tested (and benchmarked) against.

Padding. Prompts are LEFT-padded so that every response starts at the same column. Pad positions
are never attended: an ``attention_mask`` (B, T) (1 = real token) turns into a key padding mask,
and position ids count real tokens only (a row's first real token gets position 0). A row's
logits are therefore the same whatever the amount of left padding, and the cached and uncached
paths compute the same function. A pad query attends to itself only, so its (unused) output
stays finite.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "EOS_CHECK_EVERY",
    "GPTConfig",
    "MODEL_SIZES",
    "KVCache",
    "CausalSelfAttention",
    "MLP",
    "Block",
    "GPT",
    "sample_categorical",
]


@dataclass
class GPTConfig:
    """Shape of a :class:`GPT`."""

    vocab_size: int = 64
    """number of token ids, pad and EOS included"""
    block_size: int = 64
    """maximum sequence length (prompt + response), the number of learned positions"""
    n_layer: int = 2
    """number of transformer blocks"""
    n_head: int = 2
    """attention heads per block; must divide n_embd"""
    n_embd: int = 32
    """width of the residual stream"""
    dropout: float = 0.0
    """dropout probability in training mode (0 for RL: sampling and scoring must agree)"""
    bias: bool = True
    """bias in the linear layers and LayerNorms"""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")

    @classmethod
    def from_size(cls, name: str, **overrides: object) -> GPTConfig:
        """Config of the model size ``name`` (a key of :data:`MODEL_SIZES`) with fields overridden.

        Example: ``GPTConfig.from_size("cpu-micro", vocab_size=16, block_size=24)``.
        """
        if name not in MODEL_SIZES:
            raise ValueError(f"unknown model size {name!r}; choose one of {sorted(MODEL_SIZES)}")
        unknown = set(overrides) - set(asdict(cls()))
        if unknown:
            raise ValueError(
                f"GPTConfig.from_size: unknown field(s) {sorted(unknown)}; "
                f"allowed: {sorted(asdict(cls()))}"
            )
        return cls(**{**MODEL_SIZES[name], **overrides})


MODEL_SIZES: dict[str, dict[str, int]] = {
    # CPU toys. vocab_size / block_size are defaults; tasks override them.
    "cpu-nano": dict(n_layer=2, n_head=2, n_embd=32, vocab_size=64, block_size=64),
    "cpu-micro": dict(n_layer=3, n_head=3, n_embd=48, vocab_size=64, block_size=64),  # gpt-nano
    "cpu-mini": dict(n_layer=3, n_head=4, n_embd=80, vocab_size=64, block_size=64),
    "cpu-small": dict(n_layer=4, n_head=4, n_embd=128, vocab_size=256, block_size=128),
    # GPU sizes; parameters (tied embeddings) at vocab 8k / 16k / 32k:
    # gpu-10m 10.2M / 12.8M / 18.1M, gpu-30m 29.7M / 33.9M / 42.3M,
    # gpu-100m 92.1M / 98.4M / 111.0M.
    "gpu-10m": dict(n_layer=6, n_head=5, n_embd=320, vocab_size=8192, block_size=512),
    "gpu-30m": dict(n_layer=8, n_head=8, n_embd=512, vocab_size=16384, block_size=512),
    "gpu-100m": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=16384, block_size=1024),
}
"""Named model sizes for :meth:`GPTConfig.from_size`."""


EOS_CHECK_EVERY = 16
"""On accelerators, sampling checks whether every row has emitted EOS (a host read, which
stalls the device queue) once per this many tokens; on CPU after every token. Without an EOS
token it never checks, so sampling makes no host read."""


class KVCache:
    """Pre-allocated keys and values of every layer for incremental decoding.

    Holds ``k, v`` of shape ``(n_layer, B, n_head, max_len, head_dim)``, the key padding mask
    ``key_mask`` (B, max_len) of the positions written so far, the number of filled columns
    ``length``, and ``next_position`` (B,): the position id the next real token of each row gets.
    """

    def __init__(
        self,
        config: GPTConfig,
        batch_size: int,
        max_len: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        if max_len > config.block_size:
            raise ValueError(f"KVCache: max_len {max_len} exceeds block_size {config.block_size}")
        head_dim = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.key_mask = torch.zeros(batch_size, max_len, device=device, dtype=torch.bool)
        self.next_position = torch.zeros(batch_size, device=device, dtype=torch.long)
        self.length = 0
        self.max_len = max_len


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with an optional key padding mask and a KV cache."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """Attend ``x`` (B, T, C) to itself (and to the cached keys of ``layer``).

        ``attn_mask`` is a boolean (B, 1, T, T_keys) mask (True = may attend) or None for the
        plain causal case, where SDPA's ``is_causal`` fast path is used.
        """
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            end = cache.length + T
            cache.k[layer, :, :, cache.length : end] = k
            cache.v[layer, :, :, cache.length : end] = v
            k = cache.k[layer, :, :, :end]  # (B, nh, T_keys, hs)
            v = cache.v[layer, :, :, :end]
        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=attn_mask is None
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward layer: Linear(C, 4C) -> GELU -> Linear(4C, C)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


def sample_categorical(
    probs: torch.Tensor,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw one index per row of ``probs`` (N, V) by inverting the cumulative distribution.

    The uniforms come from ``generator`` on the generator's own device and are then moved to
    ``probs.device``, so a CPU generator also drives sampling on CUDA and a seed gives the same
    draws on every device. Pre-drawn ``uniforms`` (N, 1) in [0, 1) replace the generator: a
    row's draw then does not depend on which other rows share the batch. Zero-probability
    entries are never drawn. Returns (N,) long.
    """
    if uniforms is None:
        device = generator.device if generator is not None else probs.device
        uniforms = torch.rand(probs.shape[0], 1, generator=generator, device=device)
    u = uniforms.to(probs.device)
    cdf = probs.float().cumsum(dim=-1)  # (N, V)
    index = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # (N, 1)
    return index.clamp(max=probs.shape[-1] - 1).squeeze(-1)


class GPT(nn.Module):
    """Decoder-only transformer language model with tied input/output embeddings."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer).
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Number of parameters (tied embeddings counted once); optionally without ``wpe``."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def hidden_states(
        self,
        tokens: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Final-LayerNorm hidden states (B, T, C); ``logits = hidden @ lm_head.weight.T``.

        Args:
            tokens: (B, T) token ids.
            attention_mask: (B, T) 1/True for real tokens, 0/False for (left) padding;
                None means every token is real.
            cache: if given, ``tokens`` continue the sequences held in the cache (their keys
                and values are appended to it) instead of starting new ones.

        Use this with :func:`toy_entropy.models.token_stats.token_log_probs_and_entropy` to score
        long responses at large vocabularies without materialising (B, T, V) logits.
        """
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(
                f"GPT: tokens must be a (B, T) long tensor, got {tuple(tokens.shape)} "
                f"{tokens.dtype}"
            )
        B, T = tokens.shape
        past = cache.length if cache is not None else 0
        limit = cache.max_len if cache is not None else self.config.block_size
        if past + T > limit:
            raise ValueError(
                f"GPT: sequence length {past + T} exceeds the limit {limit} "
                "(block_size, or the cache's max_len)"
            )
        if attention_mask is not None and attention_mask.shape != tokens.shape:
            raise ValueError(
                f"GPT: attention_mask shape {tuple(attention_mask.shape)} must equal tokens "
                f"shape {tuple(tokens.shape)}"
            )
        real = (
            attention_mask.bool()
            if attention_mask is not None
            else torch.ones_like(tokens, dtype=torch.bool)
        )  # (B, T)
        start = cache.next_position[:, None] if cache is not None else 0
        positions = (start + real.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T)

        attn_mask = None
        if cache is not None or attention_mask is not None:
            key_mask = real
            if cache is not None:
                cache.key_mask[:, past : past + T] = real
                key_mask = cache.key_mask[:, : past + T]  # (B, T_keys)
            query_pos = torch.arange(past, past + T, device=tokens.device)
            key_pos = torch.arange(past + T, device=tokens.device)
            causal = key_pos[None, :] <= query_pos[:, None]  # (T, T_keys)
            attn_mask = causal & key_mask[:, None, :]  # (B, T, T_keys)
            # A pad query may see no real key at all; letting it see itself keeps SDPA finite.
            attn_mask = attn_mask | (key_pos[None, :] == query_pos[:, None])
            attn_mask = attn_mask[:, None]  # (B, 1, T, T_keys)

        x = self.drop(self.wte(tokens) + self.wpe(positions))  # (B, T, C)
        for layer, block in enumerate(self.blocks):
            x = block(x, attn_mask, cache, layer)
        if cache is not None:
            cache.length += T
            cache.next_position = cache.next_position + real.long().sum(dim=1)
        return self.ln_f(x)  # (B, T, C)

    def forward(
        self,
        tokens: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Next-token logits (B, T, V) at every position; arguments as in :meth:`hidden_states`.

        ``logits[:, t]`` is the distribution of the token at column ``t + 1``.
        """
        return self.lm_head(self.hidden_states(tokens, attention_mask, cache))

    def _check_generate_args(
        self, prompt_tokens: torch.Tensor, max_new_tokens: int, temperature: float
    ) -> None:
        if prompt_tokens.dim() != 2 or prompt_tokens.shape[1] < 1:
            raise ValueError(
                f"generate: prompt_tokens must be (B, Lp) with Lp >= 1, "
                f"got {tuple(prompt_tokens.shape)}"
            )
        if max_new_tokens < 1:
            raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
        total = prompt_tokens.shape[1] + max_new_tokens
        if total > self.config.block_size:
            raise ValueError(
                f"generate: prompt length {prompt_tokens.shape[1]} + max_new_tokens "
                f"{max_new_tokens} = {total} exceeds block_size {self.config.block_size}"
            )
        if temperature < 0:
            raise ValueError(f"generate: temperature must be >= 0, got {temperature}")

    def _next_tokens(
        self,
        logits: torch.Tensor,
        temperature: float,
        greedy: bool,
        generator: torch.Generator | None,
        uniforms: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick the next token from last-position logits (B, V); returns (tokens, log-probs)."""
        logits = logits.float()
        if greedy or temperature == 0:
            log_probs = torch.log_softmax(logits, dim=-1)  # (B, V)
            tokens = logits.argmax(dim=-1)
        else:
            log_probs = torch.log_softmax(logits / temperature, dim=-1)  # (B, V)
            tokens = sample_categorical(log_probs.exp(), generator, uniforms)
        return tokens, log_probs.gather(-1, tokens[:, None]).squeeze(-1)

    def _decode(
        self,
        prompt_tokens: torch.Tensor,
        max_new_tokens: int,
        temperature: float,
        eos_id: int | None,
        pad_id: int,
        generator: torch.Generator | None,
        greedy: bool,
        prompt_mask: torch.Tensor | None,
        return_log_probs: bool,
        use_cache: bool,
        uniforms: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """The sampling loop shared by :meth:`generate` and :meth:`generate_naive`."""
        self._check_generate_args(prompt_tokens, max_new_tokens, temperature)
        B, Lp = prompt_tokens.shape
        device = prompt_tokens.device
        if uniforms is not None and uniforms.shape != (B, max_new_tokens):
            raise ValueError(
                f"generate: uniforms must have shape (B, max_new_tokens) = {(B, max_new_tokens)}, "
                f"got {tuple(uniforms.shape)}"
            )
        if prompt_mask is None:
            prompt_mask = prompt_tokens != pad_id
        prompt_mask = prompt_mask.bool()  # (B, Lp)

        responses = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
        response_mask = torch.zeros(B, max_new_tokens, dtype=torch.bool, device=device)
        log_probs = torch.zeros(B, max_new_tokens, dtype=torch.float32, device=device)
        finished = torch.zeros(B, dtype=torch.bool, device=device)

        cache = None
        if use_cache:
            dtype = next(self.parameters()).dtype
            if torch.is_autocast_enabled(device.type):  # keys/values are made in that dtype
                dtype = torch.get_autocast_dtype(device.type)
            cache = KVCache(self.config, B, Lp + max_new_tokens, device, dtype)
            logits = self(prompt_tokens, prompt_mask, cache)[:, -1]  # (B, V)
        for t in range(max_new_tokens):
            if not use_cache:
                tokens = torch.cat([prompt_tokens, responses[:, :t]], dim=1)  # (B, Lp + t)
                mask = torch.cat([prompt_mask, response_mask[:, :t]], dim=1)
                logits = self(tokens, mask)[:, -1]  # (B, V)
            column = None if uniforms is None else uniforms[:, t : t + 1]  # (B, 1)
            next_tokens, next_log_probs = self._next_tokens(
                logits, temperature, greedy, generator, column
            )
            alive = ~finished
            responses[:, t] = torch.where(alive, next_tokens, pad_id)
            response_mask[:, t] = alive
            log_probs[:, t] = torch.where(alive, next_log_probs, 0.0)
            if eos_id is not None:
                finished = finished | (alive & (next_tokens == eos_id))
            if t + 1 == max_new_tokens:
                break
            # Stop early once every row has ended: a host read, free on CPU; on accelerators
            # made every EOS_CHECK_EVERY tokens only, and never without an EOS token.
            check = device.type == "cpu" or (t + 1) % EOS_CHECK_EVERY == 0
            if eos_id is not None and check and bool(finished.all()):
                break
            if use_cache:
                logits = self(responses[:, t : t + 1], response_mask[:, t : t + 1], cache)[:, -1]
        if return_log_probs:
            return responses, response_mask, log_probs
        return responses, response_mask

    @torch.no_grad()
    def generate(
        self,
        prompt_tokens: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        eos_id: int | None = None,
        pad_id: int = 0,
        generator: torch.Generator | None = None,
        greedy: bool = False,
        prompt_mask: torch.Tensor | None = None,
        return_log_probs: bool = False,
        uniforms: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Sample responses to left-padded prompts with a key/value cache.

        Args:
            prompt_tokens: (B, Lp) long, left-padded with ``pad_id``.
            max_new_tokens: response length T; a response that has not emitted EOS by then
                is truncated.
            temperature: logits are divided by it; 0 means greedy (argmax).
            eos_id: token that ends a response (kept in it, mask 1); None: never stop early.
            pad_id: filler after EOS in ``responses`` (and in the prompts).
            generator: source of the sampling noise (any device; see :func:`sample_categorical`).
            greedy: argmax instead of sampling.
            prompt_mask: (B, Lp) 1 for real prompt tokens; default ``prompt_tokens != pad_id``
                (pass it when pad_id can occur inside a prompt).
            return_log_probs: also return the log-probs of the chosen tokens.
            uniforms: optional (B, T) pre-drawn uniforms in [0, 1); column t draws the t-th
                token of every row instead of ``generator``, so a row's sample does not depend
                on the batch it is generated in (data-parallel rollouts use this).

        Returns:
            ``responses`` (B, T) long, ``response_mask`` (B, T) bool (1 up to and including
            EOS), and with ``return_log_probs`` the (B, T) float32 log-probs of the chosen
            tokens under ``softmax(logits / temperature)`` (``softmax(logits)`` when greedy),
            0 where masked. The model's train/eval mode is left as the caller set it.
        """
        return self._decode(
            prompt_tokens, max_new_tokens, temperature, eos_id, pad_id, generator, greedy,
            prompt_mask, return_log_probs, use_cache=True, uniforms=uniforms,
        )  # fmt: skip

    @torch.no_grad()
    def generate_naive(
        self,
        prompt_tokens: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        eos_id: int | None = None,
        pad_id: int = 0,
        generator: torch.Generator | None = None,
        greedy: bool = False,
        prompt_mask: torch.Tensor | None = None,
        return_log_probs: bool = False,
        uniforms: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """:meth:`generate` without a cache: one full forward pass per new token (reference)."""
        return self._decode(
            prompt_tokens, max_new_tokens, temperature, eos_id, pad_id, generator, greedy,
            prompt_mask, return_log_probs, use_cache=False, uniforms=uniforms,
        )  # fmt: skip
