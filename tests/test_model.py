"""Tests of the transformer policy: shapes, padding, KV cache, sampling, EOS and learning."""

from __future__ import annotations

import pytest
import torch

from toy_entropy.models.model import GPT, MODEL_SIZES, GPTConfig, KVCache, sample_categorical

PAD, EOS, VOCAB = 0, 1, 13


def make_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig.from_size("cpu-micro", vocab_size=VOCAB, block_size=32, **overrides)
    return GPT(config).eval()


def padded_prompts(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(4, 6) left-padded prompts with 0, 2, 5 and 3 pad tokens, and their mask."""
    gen = torch.Generator().manual_seed(seed)
    prompts = torch.randint(2, VOCAB, (4, 6), generator=gen)
    for row, n_pad in enumerate((0, 2, 5, 3)):
        prompts[row, :n_pad] = PAD
    return prompts, prompts != PAD


def test_presets_and_config_validation():
    config = GPTConfig.from_size("cpu-micro", vocab_size=20)
    assert (config.n_layer, config.n_head, config.n_embd, config.vocab_size) == (3, 3, 48, 20)
    assert GPTConfig.from_size("cpu-nano").n_embd == 32
    with pytest.raises(ValueError, match="unknown model size 'gpt-huge'.*cpu-nano"):
        GPTConfig.from_size("gpt-huge")
    with pytest.raises(ValueError, match="unknown field"):
        GPTConfig.from_size("cpu-nano", n_layers=3)
    with pytest.raises(ValueError, match="divisible by n_head"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="vocab_size"):
        GPTConfig(vocab_size=0)


@pytest.mark.parametrize(
    "name, vocab_size, low, high",
    [
        ("gpu-10m", 8192, 8e6, 13e6),
        ("gpu-30m", 16384, 25e6, 38e6),
        ("gpu-100m", 16384, 85e6, 115e6),
    ],
)
def test_gpu_preset_sizes(name, vocab_size, low, high):
    with torch.device("meta"):
        model = GPT(GPTConfig.from_size(name, vocab_size=vocab_size))
    assert low < model.num_parameters() < high
    assert set(MODEL_SIZES) >= {"cpu-nano", "cpu-micro", "cpu-small", name}


def test_forward_shapes_and_tied_head():
    model = make_model()
    tokens = torch.randint(0, VOCAB, (3, 7))
    logits = model(tokens)
    assert logits.shape == (3, 7, VOCAB)
    hidden = model.hidden_states(tokens)
    assert hidden.shape == (3, 7, 48)
    torch.testing.assert_close(hidden @ model.wte.weight.T, logits)
    with pytest.raises(ValueError, match="long tensor"):
        model(tokens.float())
    with pytest.raises(ValueError, match="exceeds"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_left_padding_does_not_change_logits():
    model = make_model()
    prompts, mask = padded_prompts()
    logits = model(prompts, mask)  # (4, 6, V)
    for row, n_pad in enumerate((0, 2, 5, 3)):
        alone = model(prompts[row : row + 1, n_pad:])  # the same row without any padding
        torch.testing.assert_close(logits[row : row + 1, n_pad:], alone, atol=1e-5, rtol=0)
    assert torch.isfinite(logits).all()


def test_cached_logits_equal_uncached_at_every_step():
    model = make_model()
    prompts, prompt_mask = padded_prompts()
    continuation = torch.randint(2, VOCAB, (4, 9))
    cont_mask = torch.ones(4, 9, dtype=torch.bool)
    cont_mask[2, 5:] = False  # a finished row keeps being fed masked pads
    tokens = torch.cat([prompts, continuation], dim=1)
    mask = torch.cat([prompt_mask, cont_mask], dim=1)
    full = model(tokens, mask)  # (4, 15, V)

    cache = KVCache(model.config, 4, 15, torch.device("cpu"), torch.float32)
    steps = [model(prompts, prompt_mask, cache)]
    for t in range(9):
        steps.append(model(continuation[:, t : t + 1], cont_mask[:, t : t + 1], cache))
    cached = torch.cat(steps, dim=1)
    valid = mask[:, :, None].expand_as(full)
    torch.testing.assert_close(cached[valid], full[valid], atol=1e-5, rtol=0)
    assert cache.length == 15
    assert cache.next_position.tolist() == (mask.sum(dim=1)).tolist()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_generate_matches_naive_token_for_token(temperature):
    model = make_model()
    prompts, _ = padded_prompts()
    kwargs = dict(temperature=temperature, eos_id=EOS, pad_id=PAD, return_log_probs=True)
    fast = model.generate(prompts, 12, generator=torch.Generator().manual_seed(7), **kwargs)
    slow = model.generate_naive(prompts, 12, generator=torch.Generator().manual_seed(7), **kwargs)
    assert torch.equal(fast[0], slow[0])
    assert torch.equal(fast[1], slow[1])
    torch.testing.assert_close(fast[2], slow[2], atol=1e-5, rtol=0)
    other = model.generate(prompts, 12, generator=torch.Generator().manual_seed(8), **kwargs)
    assert not torch.equal(fast[0], other[0])


def test_generated_log_probs_equal_scoring_path():
    model = make_model()
    prompts, prompt_mask = padded_prompts()
    gen = torch.Generator().manual_seed(3)
    responses, response_mask, log_probs = model.generate(
        prompts, 10, eos_id=EOS, pad_id=PAD, generator=gen, return_log_probs=True
    )
    tokens = torch.cat([prompts, responses], dim=1)
    mask = torch.cat([prompt_mask, response_mask], dim=1)
    logits = model(tokens, mask)[:, 5:-1]  # positions that predict the response tokens
    scored = torch.log_softmax(logits, dim=-1).gather(-1, responses[..., None]).squeeze(-1)
    torch.testing.assert_close(scored * response_mask, log_probs, atol=1e-5, rtol=0)


def test_eos_ends_rows_and_masks():
    model = make_model()
    prompts = torch.randint(2, VOCAB, (32, 4), generator=torch.Generator().manual_seed(0))
    responses, mask, log_probs = model.generate(
        prompts, 8, eos_id=EOS, pad_id=PAD, generator=torch.Generator().manual_seed(1),
        return_log_probs=True,
    )  # fmt: skip
    assert responses.shape == mask.shape == (32, 8)
    lengths = mask.sum(dim=1)
    ended = (responses == EOS) & mask
    # Both cases occur: rows that end with EOS (about 1 - (12/13)^8 of them) and truncated rows.
    assert 8 <= int(ended.any(dim=1).sum()) <= 24
    for row in range(32):
        n = int(lengths[row])
        assert mask[row, :n].all() and not mask[row, n:].any()  # mask is a prefix
        assert (responses[row, n:] == PAD).all()
        eos_positions = (responses[row, :n] == EOS).nonzero().flatten().tolist()
        if n < 8:  # an early end is exactly one EOS, the last kept token
            assert eos_positions == [n - 1]
        else:
            assert eos_positions in ([], [7])
    assert (log_probs[~mask] == 0).all() and (log_probs[mask] < 0).all()


def test_all_rows_ending_at_once_pads_the_rest():
    model = make_model()
    with torch.no_grad():  # every hidden state becomes `direction`, whose best token is EOS
        direction = torch.randn(model.config.n_embd)
        model.ln_f.weight.zero_()
        model.ln_f.bias.copy_(direction)
        model.lm_head.weight[EOS] = 10 * direction
    prompts, _ = padded_prompts()
    for generate in (model.generate, model.generate_naive):
        responses, mask = generate(prompts, 5, eos_id=EOS, pad_id=PAD, greedy=True)
        assert responses.tolist() == [[EOS, PAD, PAD, PAD, PAD]] * 4
        assert mask.tolist() == [[True, False, False, False, False]] * 4


def test_greedy_and_temperature_zero_are_argmax():
    model = make_model()
    prompts, mask = padded_prompts()
    greedy, _ = model.generate(prompts, 6, greedy=True)
    zero_t, _ = model.generate(prompts, 6, temperature=0.0)
    naive, _ = model.generate_naive(prompts, 6, greedy=True)
    assert torch.equal(greedy, zero_t) and torch.equal(greedy, naive)
    assert torch.equal(greedy[:, 0], model(prompts, mask)[:, -1].argmax(dim=-1))


def test_generate_rejects_bad_arguments():
    model = make_model()
    prompts, _ = padded_prompts()
    with pytest.raises(ValueError, match="exceeds block_size 32"):
        model.generate(prompts, 27)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        model.generate(prompts, 4, temperature=-1.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(prompts, 0)


def test_sample_categorical_frequencies_and_zero_mass():
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.8]]).expand(40000, 4)
    draws = sample_categorical(probs, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=4).float() / 40000
    assert counts[0] == 0 and counts[2] == 0
    assert abs(counts[1].item() - 0.2) < 0.01


def test_overfits_a_fixed_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_size("cpu-nano", vocab_size=VOCAB, block_size=16))
    batch = torch.randint(0, VOCAB, (8, 12), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(100):
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 2.3  # about log(13) at initialisation
    assert losses[-1] < 0.3 * losses[0]
