"""Supervised warm start on noisy demonstrations: the "pretrained" policy RL starts from.

RL in the paper starts from a pretrained model that already solves some prompts and is unsure
about the rest. Here a fresh transformer is trained by cross-entropy on demonstrations of which
a fraction ``noise`` is replaced by a corrupted answer (tokens of the answer alphabet at random
positions swapped in), so the warm-started policy puts mass on wrong answers: ``noise`` sets its
starting accuracy and entropy. (For ``hard_prompt``, the task's own
``warm_start_demonstrations`` already show a decoy answer on most hard prompts.) The trained
weights are cached on disk keyed by a hash of everything that determines them, so runs with the
same warm start reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from toy_entropy.models.model import GPT, GPTConfig
from toy_entropy.training import interrupts
from toy_entropy.training.checkpoint import atomic_torch_save
from toy_entropy.training.config import check_positive_int, check_range

__all__ = [
    "WarmStartConfig",
    "warm_start",
    "cache_dir",
    "check_cache_dir",
    "corrupt_demonstrations",
]


@dataclass(frozen=True)
class WarmStartConfig:
    """How the pretrained-like policy is made: supervised steps on noisy demonstrations."""

    steps: int = 300
    """optimiser steps of supervised training (0: the random initial model)"""
    batch_size: int = 64
    """demonstrations per step"""
    learning_rate: float = 3e-3
    """AdamW learning rate"""
    noise: float = 0.6
    """fraction of demonstrations replaced by a corrupted (wrong) answer, in [0, 1]; sets the
    starting accuracy"""
    corrupt_tokens: int = 1
    """answer tokens swapped in a corrupted demonstration"""
    seed: int = -1
    """seed of the warm start (-1: the run's seed); runs sharing it start from one model, as RL
    runs of a paper start from one base model"""

    def __post_init__(self) -> None:
        check_range("warmstart.steps", self.steps, 0)
        check_positive_int("warmstart.batch_size", self.batch_size)
        check_range("warmstart.learning_rate", self.learning_rate, 0, low_inclusive=False)
        check_range("warmstart.noise", self.noise, 0, 1)
        check_positive_int("warmstart.corrupt_tokens", self.corrupt_tokens)
        check_range("warmstart.seed", self.seed, -1)


def cache_dir() -> Path:
    """Where warm-started checkpoints are cached (``$TOY_ENTROPY_CACHE`` or ~/.cache)."""
    root = os.environ.get("TOY_ENTROPY_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "toy-entropy"


def check_cache_dir() -> None:
    """Raise ValueError naming the problem if the warm-start cache cannot be used."""
    root = cache_dir()
    existing = next((p for p in (root, *root.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ValueError(
            f"the warm-start cache {root} (TOY_ENTROPY_CACHE) is under the file {existing}, "
            "which is not a directory"
        )
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"the warm-start cache {root} (TOY_ENTROPY_CACHE) is not writable")


def corrupt_demonstrations(
    responses: torch.Tensor,
    mask: torch.Tensor,
    answer_ids: torch.Tensor,
    noise: float,
    corrupt_tokens: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Replace ``corrupt_tokens`` non-EOS tokens of a ``noise`` fraction of rows at random.

    Args:
        responses: ``(P, T)`` demonstrations ending in EOS (pad after).
        mask: ``(P, T)`` bool, True up to and including EOS.
        answer_ids: ``(A,)`` token ids an answer may use.
        noise: fraction of rows corrupted.
        corrupt_tokens: tokens replaced per corrupted row.
        generator: CPU generator.

    Returns:
        ``(P, T)`` new responses (same lengths and EOS positions).
    """
    responses = responses.clone()
    num_rows, length = responses.shape
    lengths = mask.sum(dim=1)  # (P,) includes EOS
    corrupt = torch.rand(num_rows, generator=generator) < noise  # (P,)
    for _ in range(corrupt_tokens):
        # a position among the answer tokens (EOS excluded); rows of length 1 stay as they are
        position = (torch.rand(num_rows, generator=generator) * (lengths - 1).clamp(min=1)).long()
        token = answer_ids[torch.randint(len(answer_ids), (num_rows,), generator=generator)]
        rows = corrupt & (lengths > 1)
        responses[rows, position[rows]] = token[rows]
    return responses


def _cache_key(
    task_spec: dict, model_config: GPTConfig, config: WarmStartConfig, seed: int, device
) -> str:
    """A hash of everything that changes the warm start's bytes: its inputs, the torch version
    and the device type (on the CPU it always trains on one thread, see :func:`warm_start`)."""
    where = {"device": torch.device(device).type, "torch": torch.__version__}
    recipe = {k: v for k, v in asdict(config).items() if k != "seed"}  # the resolved seed is keyed
    blob = json.dumps(
        {"task": task_spec, "model": asdict(model_config), "warm": recipe, "seed": seed, **where},
        sort_keys=True,
        default=str,
    )  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _train(task, model: GPT, config: WarmStartConfig, seed: int, show_progress: bool) -> None:
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    answer_ids = torch.tensor(task.vocab.encode(list(task.vocab.symbols)))  # (A,) task tokens
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    model.train()
    steps = range(config.steps)
    if show_progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="warm start (cached afterwards)", leave=False, dynamic_ncols=True)
    for _ in steps:
        interrupts.check()  # a stop request during the warm start keeps nothing of it
        prompts = task.sample_prompts(config.batch_size, "train", rng)
        demos, demo_mask = task.warm_start_demonstrations(prompts, rng)
        demos = corrupt_demonstrations(
            demos, demo_mask, answer_ids, config.noise, config.corrupt_tokens, generator
        )
        tokens = torch.cat([prompts.tokens, demos], dim=1).to(device)  # (P, Lp + T)
        attention = torch.cat([prompts.tokens != task.vocab.pad_id, demo_mask], dim=1).to(device)
        logits = model(tokens, attention)  # (P, Lp + T, V)
        start = prompts.tokens.shape[1] - 1
        response_logits = logits[:, start : start + demos.shape[1]]  # (P, T, V)
        targets = torch.where(demo_mask, demos, -100).to(device)  # (P, T)
        loss = F.cross_entropy(response_logits.transpose(1, 2), targets, ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()


def warm_start(
    task,
    task_spec: dict,
    model_config: GPTConfig,
    config: WarmStartConfig,
    seed: int,
    device,
    show_progress: bool = False,
) -> tuple[GPT, bool]:
    """A warm-started model, from the cache when one with the same key exists.

    Args:
        task: the sequence task (``envs.sequence``).
        task_spec: the task's name and arguments (part of the cache key).
        model_config: the transformer's shape.
        config: the warm-start recipe.
        seed: seeds initialisation, prompts and corruption.
        device: where the model lives.
        show_progress: draw a progress bar while training (a cache miss).

    Returns:
        ``(model, from_cache)``.
    """
    key = _cache_key(task_spec, model_config, config, seed, device)
    path = cache_dir() / "warmstart" / f"{key}.pt"
    torch.manual_seed(seed)
    model = GPT(model_config)
    if path.exists():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.to(device).eval(), True
        except (RuntimeError, OSError, EOFError, ValueError):
            path.unlink(missing_ok=True)  # a corrupt cache entry is rebuilt, not trusted
            torch.manual_seed(seed)
            model = GPT(model_config)
    model.to(device)
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        # One thread: the thread count changes the order of floating-point sums, and the
        # cached bytes must not depend on which process (how many threads) made them.
        torch.set_num_threads(1)
    try:
        _train(task, model, config, seed, show_progress)
    finally:
        torch.set_num_threads(threads)
    atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    return model.eval(), False
