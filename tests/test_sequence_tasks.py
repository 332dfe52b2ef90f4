"""Tests of the sequence tasks: vocabulary, prompts and splits, verifiers, demonstrations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toy_entropy.envs.sequence import TASKS, Vocabulary, make_task
from toy_entropy.envs.sequence.task import in_eval_split


def encode_responses(task, texts: list[str], width: int | None = None):
    """Responses written as text -> (tokens (B, W) long, mask (B, W) bool), pad after the text."""
    rows = [task.vocab.encode(text) for text in texts]
    width = width or max(len(row) for row in rows)
    tokens = torch.full((len(rows), width), task.vocab.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    return tokens, mask


def score_texts(task, prompt_texts: list[str], cases: list[tuple[int, str]]) -> list[float]:
    """Rewards of responses given as (prompt row, response text)."""
    prompts = task.prompts_from_text(prompt_texts)
    tokens, mask = encode_responses(task, [text for _, text in cases])
    index = torch.tensor([row for row, _ in cases])
    return task.score(prompts, index, tokens, mask).tolist()


# ---- vocabulary ---------------------------------------------------------------------------


def test_vocabulary_layout_and_round_trip():
    vocab = Vocabulary(["0", "1", "+"], extra_tokens=3)
    assert vocab.size == len(vocab) == 9
    assert vocab.special_ids == (0, 1, 2)
    assert vocab.encode("0 + 1") == [3, 5, 4]
    assert vocab.encode(["<bos>", "1", "<eos>"]) == [1, 4, 2]
    assert vocab.decode([0, 0, 1, 3, 5, 4, 2]) == "<bos> 0 + 1 <eos>"
    assert vocab.decode(torch.tensor([0, 3]), skip_pad=False) == "<pad> 0"
    assert list(vocab.distractor_ids) == [6, 7, 8]
    assert vocab.tokens[6:] == ("<d0>", "<d1>", "<d2>")
    with pytest.raises(ValueError, match="'x'"):
        vocab.encode("0 x")
    with pytest.raises(ValueError, match="extra_tokens"):
        Vocabulary(["0"], extra_tokens=-1)
    with pytest.raises(ValueError, match="unique"):
        Vocabulary(["0", "<eos>"])


def test_make_task_rejects_unknown_names_listing_known_ones():
    assert set(TASKS) == {"countdown", "addition", "reverse", "sort", "hard_prompt", "fork"}
    with pytest.raises(ValueError, match="known tasks: countdown, addition, reverse, sort"):
        make_task("multiply")
    with pytest.raises(ValueError, match="list_length"):
        make_task("reverse", list_length=0)
    with pytest.raises(TypeError, match="num_digits"):
        make_task("addition", num_digits=2.0)


@pytest.mark.parametrize(
    "name, vocab_size, prompt_length, max_response_length",
    [
        ("countdown", 18, 8, 6),
        ("addition", 15, 7, 4),
        ("reverse", 14, 7, 6),
        ("sort", 14, 7, 6),
        ("hard_prompt", 16, 8, 7),
        ("fork", 29, 7, 65),
    ],
)
def test_default_sizes_are_small(name, vocab_size, prompt_length, max_response_length):
    task = make_task(name)
    assert (task.vocab.size, task.prompt_length, task.max_response_length) == (
        vocab_size,
        prompt_length,
        max_response_length,
    )


def test_scale_preset_sizes_and_verification():
    task = make_task("sort", list_length=300, num_values=1000, extra_tokens=4000)
    assert task.vocab.size == 3 + 1000 + 1 + 4000
    assert (task.prompt_length, task.max_response_length) == (302, 301)
    prompts = task.sample_prompts(4, generator=0)
    responses, mask = task.demonstrations(prompts)
    assert torch.equal(responses[:, :300], prompts.targets[:, :300])
    assert torch.all(responses[:, :300].diff(dim=1) >= 0)  # sorted token ids = sorted values
    swapped = responses.clone()
    swapped[:, [0, 299]] = swapped[:, [299, 0]]
    changed = responses[:, 0] != responses[:, 299]
    assert task.score(prompts, torch.arange(4), responses, mask).tolist() == [1.0] * 4
    assert (
        task.score(prompts, torch.arange(4), swapped, mask).tolist() == (~changed).float().tolist()
    )


def test_extra_tokens_widen_the_vocabulary_without_moving_ids_or_prompts():
    small, wide = make_task("reverse"), make_task("reverse", extra_tokens=100)
    assert wide.vocab.size == small.vocab.size + 100
    assert list(wide.vocab.distractor_ids) == list(range(14, 114))
    assert torch.equal(
        small.sample_prompts(50, "eval", 3).tokens, wide.sample_prompts(50, "eval", 3).tokens
    )


# ---- prompts and splits -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kwargs, num_lengths",
    [
        ("countdown", {}, 2),  # targets of 1 or 2 digits
        ("addition", {}, 1),
        ("reverse", {"min_list_length": 1}, 5),
        ("sort", {"min_list_length": 2}, 4),
        ("hard_prompt", {"min_list_length": 2}, 5),  # 4 list lengths, with or without "?"
    ],
)
def test_prompts_are_left_padded_and_seeded(name, kwargs, num_lengths):
    task = make_task(name, **kwargs)
    prompts = task.sample_prompts(300, "train", generator=np.random.default_rng(0))
    tokens = prompts.tokens
    assert tokens.shape == (300, task.prompt_length) and tokens.dtype == torch.long
    is_pad = tokens == task.vocab.pad_id
    assert torch.equal(prompts.lengths, (~is_pad).sum(dim=1))
    first = task.prompt_length - prompts.lengths  # first non-pad column
    assert torch.all(is_pad.long().diff(dim=1) <= 0)  # pads only on the left
    assert torch.all(tokens.gather(1, first[:, None]).squeeze(1) == task.vocab.bos_id)
    assert torch.all(tokens[:, -1] == task.vocab.id("="))
    assert prompts.lengths.unique().numel() == num_lengths
    assert torch.equal(tokens, task.sample_prompts(300, "train", generator=0).tokens)
    assert not torch.equal(tokens, task.sample_prompts(300, "train", generator=1).tokens)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_train_and_eval_splits_are_disjoint(name):
    task = make_task(name)
    train = task.sample_prompts(3000, "train", generator=0)
    evaluation = task.sample_prompts(300, "eval", generator=0)
    assert task.is_eval(train).sum() == 0 and task.is_eval(evaluation).all()
    train_rows = {tuple(row) for row in train.tokens.tolist()}
    eval_rows = {tuple(row) for row in evaluation.tokens.tolist()}
    assert len(eval_rows) > 30 and not train_rows & eval_rows


def test_eval_split_is_ten_percent_of_the_prompt_space():
    task = make_task("addition")  # 10^4 prompts: every a + b with two digits
    texts = [f"{a // 10} {a % 10} + {b // 10} {b % 10} =" for a in range(100) for b in range(100)]
    share = task.is_eval(task.prompts_from_text(texts)).float().mean().item()
    assert 0.09 < share < 0.11
    tokens = task.prompts_from_text(texts).tokens.numpy()
    assert in_eval_split(tokens, 0.5).mean() == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match="eval split is empty"):
        make_task("addition", eval_fraction=0.0).sample_prompts(1, "eval")
    with pytest.raises(ValueError, match="split"):
        task.sample_prompts(1, "test")


def test_prompts_from_text_rejects_malformed_prompts():
    with pytest.raises(ValueError, match="addition prompt"):
        make_task("addition").prompts_from_text(["1 2 + 3 ="])
    with pytest.raises(ValueError, match="'x'"):
        make_task("reverse").prompts_from_text(["1 2 x 3 4 ="])
    with pytest.raises(ValueError, match="reverse prompt"):
        make_task("reverse").prompts_from_text(["1 2 3 ="])
    with pytest.raises(ValueError, match="no solution"):
        make_task("countdown").prompts_from_text(["1 1 1 : 9 9 ="])
    with pytest.raises(ValueError, match="countdown prompt"):
        make_task("countdown").prompts_from_text(["1 1 1 : 0 4 ="])


def test_prompt_batch_selects_rows_and_moves():
    task = make_task("countdown")
    prompts = task.prompts_from_text(["3 5 2 : 1 6 =", "1 1 2 : 4 =", "9 9 1 : 8 1 ="])
    picked = prompts[torch.tensor([2, 0])]
    assert len(picked) == 2 and task.decode_prompts(picked) == [
        "<bos> 9 9 1 : 8 1 =",
        "<bos> 3 5 2 : 1 6 =",
    ]
    assert picked.content["target"].tolist() == [81, 16]
    assert picked.to("cpu").device == torch.device("cpu")


# ---- verifiers on known answers -----------------------------------------------------------


def test_addition_verifier():
    task = make_task("addition")  # 07 + 58 = 065, 99 + 99 = 198; answers reversed
    prompts = ["0 7 + 5 8 =", "9 9 + 9 9 ="]
    cases = [
        (0, "5 6 0 <eos>"),  # correct
        (1, "8 9 1 <eos>"),  # correct
        (0, "5 6 1 <eos>"),  # wrong digit
        (0, "5 6 0"),  # missing <eos>
        (0, "5 6 0 0 <eos>"),  # extra token
        (0, "0 6 5 <eos>"),  # not reversed
        (0, "5 6 0 <eos> 7 7"),  # tokens after <eos> are ignored
        (1, "5 6 0 <eos>"),  # the other prompt's answer
    ]
    assert score_texts(task, prompts, cases) == [1, 1, 0, 0, 0, 0, 1, 0]
    plain = make_task("addition", reverse_answer=False)
    assert score_texts(plain, prompts, [(0, "0 6 5 <eos>"), (0, "5 6 0 <eos>")]) == [1, 0]
    big = make_task("addition", num_digits=30)
    a, b = 10**30 - 1, 123456789012345678901234567890
    prompt = " ".join(f"{a:030d}") + " + " + " ".join(f"{b:030d}") + " ="
    answer = " ".join(reversed(f"{a + b:031d}")) + " <eos>"
    assert score_texts(big, [prompt], [(0, answer)]) == [1.0]


def test_addition_verifier_masks_and_widths():
    task = make_task("addition")
    prompts = task.prompts_from_text(["0 7 + 5 8 ="])
    tokens, mask = encode_responses(task, ["5 6 0 <eos>"], width=9)
    short_mask = mask.clone()
    short_mask[0, 3] = False  # <eos> written but not generated
    index = torch.zeros(1, dtype=torch.long)
    assert task.score(prompts, index, tokens, mask).item() == 1.0
    assert task.score(prompts, index, tokens, short_mask).item() == 0.0
    assert task.score(prompts, index, tokens[:, :3], mask[:, :3]).item() == 0.0


def test_list_verifiers():
    reverse = make_task("reverse", min_list_length=2)
    sort = make_task("sort", min_list_length=2)
    prompts = ["3 1 4 1 5 =", "2 7 ="]
    assert score_texts(
        reverse, prompts, [(0, "5 1 4 1 3 <eos>"), (1, "7 2 <eos>"), (0, "1 1 3 4 5 <eos>")]
    ) == [1, 1, 0]
    assert score_texts(
        sort, prompts, [(0, "1 1 3 4 5 <eos>"), (1, "2 7 <eos>"), (1, "7 2 <eos>"), (1, "2 7")]
    ) == [1, 1, 0, 0]


def test_countdown_verifier_and_solutions():
    task = make_task("countdown")
    prompts = task.prompts_from_text(["3 5 2 : 1 6 =", "9 2 1 : 7 ="])
    assert sorted(task.solutions(prompts)[0]) == [
        "2 3 5 + *",
        "2 5 3 + *",
        "3 5 + 2 *",
        "5 3 + 2 *",
    ]
    assert task.num_solutions(prompts)[0].item() == 4
    cases = [
        (0, "3 5 + 2 * <eos>"),  # (3 + 5) * 2
        (0, "2 3 5 + * <eos>"),  # 2 * (3 + 5)
        (0, "3 5 * 2 + <eos>"),  # 17
        (0, "8 2 * <eos>"),  # 16 with a number not given
        (0, "3 5 + 2 * 2 * <eos>"),  # 2 used twice
        (0, "3 5 + 2 <eos>"),  # two values left on the stack
        (0, "3 5 + 2 *"),  # missing <eos>
        (1, "9 2 - 1 * <eos>"),  # 9 - 2 = 7
        (1, "2 9 - 1 * <eos>"),  # 2 - 9 = -7
        (1, "9 1 2 - + <eos>"),  # 9 + (1 - 2) = 8
    ]
    assert score_texts(task, ["3 5 2 : 1 6 =", "9 2 1 : 7 ="], cases) == [
        1,
        1,
        0,
        0,
        0,
        0,
        0,
        1,
        0,
        0,
    ]


def test_format_reward_credits_well_formed_wrong_answers():
    addition = make_task("addition", format_reward=0.25)
    cases = [(0, "5 6 0 <eos>"), (0, "1 2 3 <eos>"), (0, "1 2 <eos>"), (0, "1 + 3 <eos>")]
    assert score_texts(addition, ["0 7 + 5 8 ="], cases) == [1, 0.25, 0, 0]
    countdown = make_task("countdown", format_reward=0.25)
    cases = [(0, "3 5 + 2 * <eos>"), (0, "3 5 * 2 + <eos>"), (0, "3 5 + <eos>"), (0, "3 5 2 + *")]
    assert score_texts(countdown, ["3 5 2 : 1 6 ="], cases) == [1, 0.25, 0, 0]


def test_score_rejects_bad_inputs():
    task = make_task("reverse")
    prompts = task.sample_prompts(2, generator=0)
    responses, mask = task.demonstrations(prompts)
    index = torch.arange(2)
    with pytest.raises(TypeError, match="responses"):
        task.score(prompts, index, responses.float(), mask)
    with pytest.raises(TypeError, match="response_mask"):
        task.score(prompts, index, responses, mask.long())
    with pytest.raises(ValueError, match="response_mask shape"):
        task.score(prompts, index, responses, mask[:, :3])
    with pytest.raises(ValueError, match=r"prompt_index must be in \[0, 2\)"):
        task.score(prompts, torch.tensor([0, 2]), responses, mask)
    with pytest.raises(ValueError, match=r"token ids in \[0, 14\)"):
        task.score(prompts, index, responses + 20, mask)


# ---- demonstrations -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("split", ["train", "eval"])
def test_demonstrations_are_correct(name, split):
    task = make_task(name)
    prompts = task.sample_prompts(200, split, generator=1)
    responses, mask = task.demonstrations(prompts, generator=2)
    assert responses.shape == mask.shape == (200, task.max_response_length)
    assert torch.equal(mask.sum(dim=1), (responses != task.vocab.pad_id).sum(dim=1))
    ends = mask.sum(dim=1) - 1
    assert torch.all(responses.gather(1, ends[:, None]) == task.vocab.eos_id)
    assert task.score(prompts, torch.arange(200), responses, mask).tolist() == [1.0] * 200


def test_countdown_demonstrations_cover_every_solution_uniformly():
    task = make_task("countdown")
    prompts = task.prompts_from_text(["3 5 2 : 1 6 ="] * 400)
    responses, mask = task.demonstrations(prompts, generator=0)
    texts = [task.vocab.decode(row[m]) for row, m in zip(responses, mask, strict=True)]
    counts = {text: texts.count(text) for text in set(texts)}
    assert len(counts) == 4 and all(70 <= c <= 130 for c in counts.values())  # 100 expected


def test_hard_prompts_need_a_rare_first_token():
    task = make_task("hard_prompt", min_list_length=3)
    prompts = task.prompts_from_text(["3 1 4 ? =", "3 1 4 ="])
    assert task.is_hard(prompts).tolist() == [True, False]
    cases = [(0, "! 4 1 3 <eos>"), (0, "4 1 3 <eos>"), (1, "4 1 3 <eos>"), (1, "! 4 1 3 <eos>")]
    assert score_texts(task, ["3 1 4 ? =", "3 1 4 ="], cases) == [1, 0, 1, 0]
    common, mask = task.common_answers(prompts)
    assert [task.vocab.decode(row[m]) for row, m in zip(common, mask, strict=True)] == [
        "4 1 3 <eos>",
        "4 1 3 <eos>",
    ]


def test_hard_prompt_warm_start_shows_the_common_answer_at_the_decoy_rate():
    task = make_task("hard_prompt", hard_fraction=0.3, decoy_rate=0.9)
    prompts = task.sample_prompts(4000, generator=0)
    hard = task.is_hard(prompts)
    assert hard.float().mean().item() == pytest.approx(0.3, abs=0.025)
    responses, mask = task.warm_start_demonstrations(prompts, generator=1)
    rewards = task.score(prompts, torch.arange(4000), responses, mask)
    assert rewards[~hard].min().item() == 1.0
    assert 1 - rewards[hard].mean().item() == pytest.approx(0.9, abs=0.025)
    never = make_task("hard_prompt", decoy_rate=0.0)
    responses, mask = never.warm_start_demonstrations(prompts, generator=1)
    assert never.score(prompts, torch.arange(4000), responses, mask).min().item() == 1.0
