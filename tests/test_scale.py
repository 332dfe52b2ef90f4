"""Scale presets, task arguments, the data-parallel batch layout and batch-free sampling."""

import dataclasses

import pytest
import torch

from toy_entropy.envs.sequence import make_task
from toy_entropy.models.model import GPT, GPTConfig
from toy_entropy.training.config import ConfigError, apply_overrides, config_paths
from toy_entropy.training.parallel import DataParallel, mini_batch_rows, stratum_groups
from toy_entropy.training.scale_presets import SCALE_PRESETS, parse_task_kwargs
from toy_entropy.training.trainer import TrainConfig

# (vocabulary, answer length incl. <eos>, parameters in millions, model preset)
GPU_SIZES = {
    "gpu-small": (8192, 256, 10.2, "gpu-10m"),
    "gpu-medium": (16384, 512, 34.1, "gpu-30m"),
    "gpu-large": (32768, 1024, 111.8, "gpu-100m"),
}


@pytest.mark.parametrize("preset", sorted(GPU_SIZES))
def test_gpu_presets_have_the_documented_sizes(preset):
    config = TrainConfig(scale=preset)
    vocab, length, millions, model_size = GPU_SIZES[preset]
    task = make_task(config.task, extra_tokens=config.extra_tokens, **config.task_args())
    assert (task.vocab.size, task.max_response_length) == (vocab, length)
    assert (config.model_size, config.num_prompts, config.num_generations) == (
        model_size,
        256,
        8,
    )
    assert config.chunked_log_probs and config.bf16
    block = task.prompt_length + task.max_response_length
    with torch.device("meta"):
        model = GPT(GPTConfig.from_size(model_size, vocab_size=vocab, block_size=block))
    assert model.num_parameters() / 1e6 == pytest.approx(millions, abs=0.05)


def test_cpu_preset_is_the_defaults_and_explicit_fields_win():
    assert TrainConfig(scale="cpu") == TrainConfig()
    assert SCALE_PRESETS["cpu"] == {}
    assert TrainConfig(scale="gpu-large", num_prompts=64).num_prompts == 64
    # On the command line the preset goes first, whatever the order: an explicit value wins
    # even when it is the CPU default (num_mini_batches=1).
    overrides = ["num_mini_batches=1", "scale=gpu-small", "num_prompts=64"]
    config = apply_overrides(TrainConfig(), overrides)
    assert (config.num_prompts, config.num_mini_batches) == (64, 1)
    assert (config.model_size, config.micro_batch_size) == ("gpu-10m", 64)
    assert config.task_kwargs == "list_length=255,num_values=1000"
    # Fields that follow the preset follow it back; explicit ones stay.
    back = dataclasses.replace(config, scale="cpu")
    assert (back.model_size, back.task_kwargs, back.extra_tokens, back.bf16) == (
        "cpu-nano",
        "",
        0,
        False,
    )
    assert (back.num_prompts, back.num_mini_batches, back.micro_batch_size) == (64, 1, 0)


def test_bad_preset_and_task_kwargs_name_the_field():
    with pytest.raises(ConfigError, match="scale='gpu-huge'"):
        TrainConfig(scale="gpu-huge")
    with pytest.raises(ConfigError, match="task_kwargs"):
        TrainConfig(task_kwargs="list_length=0")  # the task rejects it
    with pytest.raises(ConfigError, match="task_kwargs.*not key=value"):
        TrainConfig(task_kwargs="list_length")
    with pytest.raises(ConfigError, match="task_kwargs.*extra_tokens"):
        TrainConfig(task_kwargs="extra_tokens=5")
    with pytest.raises(ConfigError, match="task_kwargs"):
        TrainConfig(task="addition", task_kwargs="list_length=4")  # not an addition argument


def test_parse_task_kwargs_types():
    assert parse_task_kwargs("") == {}
    assert parse_task_kwargs(" num_digits=3, format_reward=0.5,min_list_length=none ") == {
        "num_digits": 3,
        "format_reward": 0.5,
        "min_list_length": None,
    }
    with pytest.raises(ValueError, match="repeated"):
        parse_task_kwargs("a=1,a=2")


class _Rank:
    """Collectives stand-in for a rank of a world (the layout reads world_size and rank)."""

    def __init__(self, world_size: int, rank: int) -> None:
        self.world_size, self.rank = world_size, rank

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        raise AssertionError("no collective expected")


@pytest.mark.parametrize("groups, group_size, num_mini, world", [(8, 4, 2, 2), (12, 4, 8, 3)])
def test_mini_batches_are_the_same_rows_on_any_number_of_ranks(groups, group_size, num_mini, world):
    def layout(parallel):
        generator = torch.Generator().manual_seed(1)
        passes = [list(mini_batch_rows(groups, group_size, num_mini, generator, parallel))]
        passes.append(list(mini_batch_rows(groups, group_size, num_mini, generator, parallel)))
        return passes

    single = layout(None)
    rows = groups * group_size
    strata = stratum_groups(group_size, num_mini)
    for mini_batches in single:
        # A partition of all rows into equal mini-batches, each in ascending order, with the
        # same number of rows from every stratum.
        assert sorted(torch.cat(mini_batches).tolist()) == list(range(rows))
        for batch in mini_batches:
            assert batch.numel() == rows // num_mini
            assert torch.all(batch[1:] > batch[:-1])
            per_stratum = torch.bincount(batch // (strata * group_size))
            assert torch.all(per_stratum == per_stratum[0])
    assert not torch.equal(single[0][0], single[1][0])  # each pass reshuffles
    shards = [layout(DataParallel(_Rank(world, r))) for r in range(world)]
    local_rows = rows // world
    for p, mini_batches in enumerate(single):
        for m, batch in enumerate(mini_batches):
            # Rank r's local rows, shifted to global ones and concatenated in rank order.
            joined = torch.cat([shards[r][p][m] + r * local_rows for r in range(world)])
            assert torch.equal(joined, batch)


def test_a_row_samples_the_same_tokens_in_any_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    prompts = torch.randint(3, 11, (6, 4))
    uniforms = torch.rand(6, 10, generator=torch.Generator().manual_seed(2))
    whole, whole_mask = model.generate(prompts, 10, eos_id=2, uniforms=uniforms)
    rows = [4, 1]
    part, part_mask = model.generate(prompts[rows], 10, eos_id=2, uniforms=uniforms[rows])
    assert torch.equal(part, whole[rows]) and torch.equal(part_mask, whole_mask[rows])
    # The uniforms are the noise: other uniforms, other samples; a bad shape is refused.
    other, _ = model.generate(prompts, 10, eos_id=2, uniforms=uniforms.flip(0))
    assert not torch.equal(other, whole)
    with pytest.raises(ValueError, match="uniforms must have shape"):
        model.generate(prompts, 10, uniforms=uniforms[:, :5])


def test_preset_fields_are_train_config_fields():
    names = set(config_paths(TrainConfig))
    for preset, values in SCALE_PRESETS.items():
        assert set(values) <= names, preset
