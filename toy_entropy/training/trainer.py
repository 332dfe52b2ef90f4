"""GRPO-style RL of a small transformer on a verifiable-reward sequence task.

One file, top to bottom, in the order a step runs (CleanRL style):

1. rollout through the task's registered vector env (``gymnasium.make_vec``, whole-response
   actions): ``reset`` gives P prompts x G rows, the model samples the responses at the
   configured temperature (KV cache), ``step(responses)`` returns the verifier's rewards;
2. advantages from the estimator registry, optional filter of groups whose rewards are all
   equal;
3. a no-grad scoring pass: rollout log-probs, the full-distribution entropy, reference log-probs;
4. ``num_iterations`` passes over the rollout in ``num_mini_batches`` mini-batches; each
   mini-batch is one optimiser step whose token selection (Clip-Cov / KL-Cov) is computed once
   over the whole mini-batch and shared by its micro-batches (gradient accumulation);
5. the identity, live: the entropy change that each optimiser step causes on a fixed probe set of
   states, next to the first-order prediction -Cov(log pi, dz) from the measured logit change;
6. evaluation on held-out prompts every ``eval_every`` steps: greedy accuracy, mean@k, pass@k.

Every metric is kept on the device during a step and moved to the host once per step.
"""

from __future__ import annotations

import copy
import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import gymnasium
import numpy as np
import torch
import torch.nn.functional as F

from toy_entropy.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    filter_uniform_groups,
)
from toy_entropy.algorithms.losses import (
    AdaptiveEntropyCoef,
    PolicyLossConfig,
    TokenSelection,
    compute_policy_loss,
    kl_estimate,
    masked_token_covariance,
    select_tokens,
)
from toy_entropy.envs import NAMESPACE
from toy_entropy.envs.sequence import SequenceVectorEnv, env_name, make_task
from toy_entropy.models.model import GPT, MODEL_SIZES, GPTConfig
from toy_entropy.models.token_stats import token_log_probs_and_entropy
from toy_entropy.theory.entropy import (
    entropy_from_logits,
    masked_response_mean,
    masked_token_mean,
    predicted_entropy_change,
)
from toy_entropy.training import interrupts
from toy_entropy.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from toy_entropy.training.config import (
    ConfigError,
    check_choice,
    check_positive_int,
    check_range,
)
from toy_entropy.training.parallel import (
    DataParallel,
    HiddenStates,
    mini_batch_rows,
    stratum_groups,
)
from toy_entropy.training.rollout import Rollout, RolloutHook, RolloutStats, UpdateProbe
from toy_entropy.training.scale_presets import SCALE_PRESETS, apply_scale_preset, parse_task_kwargs
from toy_entropy.training.warmstart import WarmStartConfig, warm_start

__all__ = [
    "TrainConfig",
    "Trainer",
    "StepRecord",
    "NonFiniteError",
    "check_resumable",
    "resume_state",
]

NONFINITE_POLICIES = ("skip", "stop")
SELECTION_SCOPES = ("mini_batch", "micro_batch")
NAN_AWARE_METRICS = re.compile(r"cov/clip_higher_admitted_mean|cov/top_.*%_share|cov/tail_ratio")
"""Per-update metrics that are NaN by definition on some updates (the first, on-policy update
admits no token beyond the symmetric clip; no token has a positive covariance when every
advantage is 0): averaged over the updates that define them, and not a non-finite fault."""


class NonFiniteError(RuntimeError):
    """Training stopped on a NaN/inf under ``nonfinite_policy="stop"``."""


@dataclass
class TrainConfig:
    """Everything a sequence RL run needs. Field names follow TRL / verl where they exist."""

    task: str = "reverse"
    """sequence task: countdown, addition, reverse, sort, hard_prompt"""
    extra_tokens: int = 0
    """distractor tokens added to the task's vocabulary"""
    model_size: str = "cpu-nano"
    """transformer size (toy_entropy.models.model.MODEL_SIZES)"""
    warmstart: WarmStartConfig = field(default_factory=WarmStartConfig)
    """the supervised warm start on noisy demonstrations that makes the starting policy"""
    total_steps: int = 60
    """RL steps (one rollout each)"""
    num_prompts: int = 16
    """P, prompts per rollout"""
    num_generations: int = 8
    """G, responses per prompt (TRL's num_generations)"""
    temperature: float = 1.0
    """sampling temperature of the rollout"""
    advantage_estimator: str = "grpo"
    """grpo, dr_grpo, rloo, reinforce"""
    filter_groups: bool = False
    """drop groups whose rewards are all equal (the paper filters them)"""
    num_iterations: int = 1
    """passes over each rollout (TRL's num_iterations); KL-Cov acts from the second on"""
    num_mini_batches: int = 1
    """optimiser steps per pass; each mini-batch is one optimisation batch"""
    micro_batch_size: int = 0
    """rows per forward/backward (gradient accumulation); 0 = the whole mini-batch"""
    selection_scope: str = "mini_batch"
    """where Clip-Cov / KL-Cov select tokens: mini_batch (over the whole optimisation batch and
    all ranks) or micro_batch (each micro-batch of each rank on its own, as verl's KL-Cov does,
    verl-project/verl #7818; the normaliser stays the mini-batch's)"""
    learning_rate: float = 3e-3
    """AdamW learning rate"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    max_grad_norm: float = 1.0
    """gradient clipping (0 disables)"""
    loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    """the policy loss: PPO / Clip-Cov / KL-Cov, aggregation, entropy bonus, reference KL"""
    eval_every: int = 10
    """evaluate on held-out prompts every this many steps (and at the end)"""
    eval_prompts: int = 64
    """held-out prompts per evaluation"""
    eval_samples: int = 8
    """k: samples per eval prompt for mean@k and pass@k"""
    probe_states: int = 64
    """responses whose every position is a probe state of the live identity check"""
    histogram_every: int = 10
    """TensorBoard histograms every this many steps (0 disables)"""
    checkpoint_every: int = 0
    """checkpoint every this many steps (0: only at the end)"""
    keep_checkpoints: int = 3
    """newest checkpoints kept on disk"""
    nonfinite_policy: str = "skip"
    """a NaN/inf in the step's metrics (model outputs, rewards, advantages, loss, gradients):
    skip (roll back to the last good state, count it, warn) or stop (roll back, checkpoint
    and stop)"""
    nonfinite_max_consecutive: int = 3
    """under skip: stop after this many roll-backs without a good new state in between"""
    rollout_seed_offset: int = 0
    """added to the run seed for the rollout randomness (the warm start uses the run seed)"""
    scale: str = "cpu"
    """scale preset: cpu, gpu-small, gpu-medium, gpu-large (toy_entropy.training.scale_presets);
    sets the fields it names unless they were given other values"""
    scale_resolved: str = field(default="cpu", repr=False)
    """kept by the config: the scale its fields were last resolved from (do not set)"""
    task_kwargs: str = ""
    """task size arguments as key=value pairs, e.g. list_length=255,num_values=1000"""
    chunked_log_probs: bool = True
    """log-probs and entropy from hidden states in token chunks (toy_entropy.models.token_stats),
    never a (B, T, V) logits tensor; False: from full logits"""
    log_prob_chunk_tokens: int = 0
    """tokens per chunk of the chunked path (0: 2^24 / V, 64 MiB of fp32 logits)"""
    rollout_micro_batch_size: int = 0
    """rows per generate call (0: all of this rank's rows); a memory knob, samples are equal"""
    bf16: bool = False
    """bf16 autocast of the forward passes on CUDA (ignored on CPU)"""
    compile: bool = False
    """torch.compile the scoring forward passes and the log-prob chunk kernels"""

    def __post_init__(self) -> None:
        from toy_entropy.envs.sequence import TASKS

        check_choice("scale", self.scale, SCALE_PRESETS)
        check_choice("scale_resolved", self.scale_resolved, SCALE_PRESETS)
        apply_scale_preset(self)
        check_choice("task", self.task, sorted(TASKS))
        check_range("extra_tokens", self.extra_tokens, 0)
        check_choice("model_size", self.model_size, sorted(MODEL_SIZES))
        for name in ("total_steps", "num_prompts", "num_iterations", "num_mini_batches"):
            check_positive_int(name, getattr(self, name))
        check_range("num_generations", self.num_generations, 2)
        check_range("temperature", self.temperature, 0, low_inclusive=False)
        check_choice("advantage_estimator", self.advantage_estimator, ADVANTAGE_ESTIMATORS)
        check_range("micro_batch_size", self.micro_batch_size, 0)
        check_choice("selection_scope", self.selection_scope, SELECTION_SCOPES)
        check_range("learning_rate", self.learning_rate, 0, low_inclusive=False)
        check_range("weight_decay", self.weight_decay, 0)
        check_range("max_grad_norm", self.max_grad_norm, 0)
        check_positive_int("eval_every", self.eval_every)
        check_positive_int("eval_prompts", self.eval_prompts)
        check_positive_int("eval_samples", self.eval_samples)
        check_positive_int("probe_states", self.probe_states)
        check_range("histogram_every", self.histogram_every, 0)
        check_range("checkpoint_every", self.checkpoint_every, 0)
        check_range("keep_checkpoints", self.keep_checkpoints, 1)
        check_choice("nonfinite_policy", self.nonfinite_policy, NONFINITE_POLICIES)
        check_positive_int("nonfinite_max_consecutive", self.nonfinite_max_consecutive)
        batch = self.num_prompts * self.num_generations
        if batch % self.num_mini_batches:
            raise ConfigError(
                "num_mini_batches",
                self.num_mini_batches,
                f"must divide the rollout batch num_prompts*num_generations={batch}",
            )
        mini = batch // self.num_mini_batches
        if self.micro_batch_size and mini % self.micro_batch_size:
            raise ConfigError(
                "micro_batch_size",
                self.micro_batch_size,
                f"must divide the mini-batch of {mini} rows (or be 0)",
            )
        check_range("log_prob_chunk_tokens", self.log_prob_chunk_tokens, 0)
        check_range("rollout_micro_batch_size", self.rollout_micro_batch_size, 0)
        if self.task_kwargs:
            try:
                make_task(self.task, extra_tokens=self.extra_tokens, **self.task_args())
            except (ValueError, TypeError) as error:
                raise ConfigError("task_kwargs", self.task_kwargs, str(error)) from None

    def task_args(self) -> dict:
        """``task_kwargs`` parsed into keyword arguments of ``make_task``."""
        return parse_task_kwargs(self.task_kwargs)


@dataclass
class StepRecord:
    """What one RL step logged (host floats), for callers that keep curves in memory."""

    step: int
    metrics: dict[str, float]


def device_memory_bytes(device: torch.device) -> int:
    """Total memory of ``device``: the GPU's, or the machine's RAM for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(
    config: TrainConfig, model_config: GPTConfig, world_size: int, device: torch.device
) -> None:
    """Refuse, before anything is allocated, batch sizes that cannot fit on ``device``.

    The estimate is a lower bound: the per-token tensors a rollout and an evaluation must hold
    at once (tokens, masks, log-probs, entropies: about 48 bytes a token) plus the KV cache of
    one generate call (2 * n_layer * n_embd fp32 values a token). A config refused here could
    not run; one accepted may still run out of memory in activations.
    """
    tokens = model_config.block_size
    rollout_rows = config.num_prompts * config.num_generations // world_size
    eval_rows = config.eval_prompts * config.eval_samples
    generate_rows = config.rollout_micro_batch_size or max(rollout_rows, eval_rows)
    kv_per_token = 2 * model_config.n_layer * model_config.n_embd * 4
    need = (rollout_rows + eval_rows) * tokens * 48 + generate_rows * tokens * kv_per_token
    have = device_memory_bytes(device)
    if need > have:
        name, value = (
            ("num_prompts", config.num_prompts)
            if rollout_rows >= eval_rows
            else ("eval_prompts", config.eval_prompts)
        )
        raise ConfigError(
            name,
            value,
            f"the rollout and evaluation batches need at least {need / 2**30:.1f} GiB, more than "
            f"the {have / 2**30:.1f} GiB of {device}",
        )


def check_resumable(state: dict, config: TrainConfig) -> None:
    """Raise ValueError unless checkpoint ``state`` was written by a run of ``config``.

    Cheap, so that entry points can call it before they touch a run's logs.
    """
    if not isinstance(state, dict) or state.get("config") != asdict(config):
        raise ValueError("checkpoint was written with a different config; cannot resume")


def resume_state(checkpoints: Path, config: TrainConfig, required: bool) -> dict | None:
    """The newest checkpoint of a run being resumed, checked against ``config`` before any of
    the run's logs is touched.

    Raises:
        ValueError: no checkpoint (when ``required``), a corrupt one, or another config.
    """
    path = latest_checkpoint(checkpoints)
    if path is None:
        if required:
            raise ValueError(
                f"--resume: no checkpoint in {checkpoints} (the run stopped before writing one; "
                "with checkpoint_every=0 only a finished or interrupted run has one); "
                "rerun with --overwrite"
            )
        return None
    state = load_checkpoint(path)
    check_resumable(state, config)
    return state


def _pass_at_k(correct: torch.Tensor, k: int) -> torch.Tensor:
    """Unbiased pass@k per prompt from n >= k samples: 1 - C(n-c, k) / C(n, k). ``(P, n)``."""
    n = correct.shape[1]
    c = correct.sum(dim=1).double()  # (P,)
    # prod_{i=0}^{k-1} (n - c - i) / (n - i), the chance that k draws miss every correct sample
    i = torch.arange(k, dtype=torch.float64, device=correct.device)
    miss = ((n - c[:, None] - i) / (n - i)).clamp(min=0).prod(dim=1)
    return 1.0 - miss


class Trainer:
    """Warm start, then GRPO-style RL with logging through ``log_fn``.

    Args:
        config: the run's config.
        seed: seeds the warm start, prompts and sampling.
        device: torch device.
        log_fn: ``log_fn(step, metrics: dict[str, float])`` (e.g. ``RunWriter.log``).
        writer: optional RunWriter for histograms and figures.
        checkpoint_dir: where checkpoints go (None: no checkpoints).
        parallel: this process's rank in a data-parallel run (``toy_entropy.training.parallel``);
            None for one process. Pass ``log_fn`` and ``writer`` on rank 0 only.
        show_progress: a progress bar for the warm start when it is not cached.
        rollout_hooks, update_probes: observers of every step whose metrics join the step's
            row (``toy_entropy.training.rollout``).
    """

    def __init__(
        self,
        config: TrainConfig,
        seed: int,
        device: torch.device,
        log_fn: Callable[[int, dict], None] | None = None,
        writer=None,
        checkpoint_dir: Path | None = None,
        parallel: DataParallel | None = None,
        show_progress: bool = False,
        rollout_hooks: Sequence[RolloutHook] = (),
        update_probes: Sequence[UpdateProbe] = (),
    ) -> None:
        self.config, self.seed, self.device = config, seed, torch.device(device)
        self.rollout_hooks, self.update_probes = tuple(rollout_hooks), tuple(update_probes)
        self.warm_seed = seed if config.warmstart.seed < 0 else config.warmstart.seed
        self.log_fn, self.writer = log_fn, writer
        self.checkpoint_dir = checkpoint_dir
        self.parallel = parallel or DataParallel()
        self._check_parallel_sizes()
        self.task = make_task(config.task, extra_tokens=config.extra_tokens, **config.task_args())
        vocab = self.task.vocab
        self.prompt_length = self.task.prompt_length
        self.response_length = self.task.max_response_length
        model_config = GPTConfig.from_size(
            config.model_size,
            vocab_size=vocab.size,
            block_size=self.prompt_length + self.response_length,
        )
        check_memory(config, model_config, self.parallel.world_size, self.device)
        task_spec = {"name": config.task, "extra_tokens": config.extra_tokens}
        task_spec.update(config.task_args())
        self.model, self.warm_from_cache = warm_start(
            self.task,
            task_spec,
            model_config,
            config.warmstart,
            self.warm_seed,
            self.device,
            show_progress,
        )
        # The loss forward; under DDP its construction broadcasts rank 0's parameters.
        self.policy = self.parallel.wrap(HiddenStates(self.model), self.device)
        self.scorer = HiddenStates(self.model)  # no-grad scoring, outside DDP
        if config.compile:
            self.policy, self.scorer = torch.compile(self.policy), torch.compile(self.scorer)
        self.reference = None
        if config.loss.kl_loss_coef > 0:
            self.reference = GPT(model_config).to(self.device).eval()
            self.reference.load_state_dict(self.model.state_dict())
            self.reference.requires_grad_(False)
        self.loss_config = config.loss
        """the loss config of the next update (rollout hooks may replace it; checkpointed)"""
        self.entropy_coef = None
        if config.loss.use_adaptive_entropy:  # TRL's adaptive entropy bonus, on the device
            self.entropy_coef = AdaptiveEntropyCoef(config.loss, self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.rng = np.random.default_rng(seed + 1 + config.rollout_seed_offset)
        self.env = self._make_env()
        # Rollout uniforms and mini-batch shuffles: drawn alike on every rank.
        self.generator = torch.Generator(device=self.device).manual_seed(
            seed + 2 + config.rollout_seed_offset
        )
        self.eval_generator = torch.Generator(device=self.device).manual_seed(
            seed + 6 + config.rollout_seed_offset
        )
        self.selection_generator = torch.Generator(device=self.device).manual_seed(seed + 3)
        self.eval_prompts = self.task.sample_prompts(
            config.eval_prompts, "eval", np.random.default_rng(seed + 4), device=self.device
        )
        self.probe = self._make_probe(seed + 5)
        self.step = 0
        self.initial_eval: dict[str, float] = {}
        self.skipped_updates = 0
        self._good_state: dict | None = None  # the newest state whose outputs were finite
        self._bad_streak = 0  # roll-backs since the last good state made by an update
        self._restored = False  # the model is a rolled-back state, not a fresh update
        self.history: list[StepRecord] = []
        self.identity_points: list[tuple[float, float]] = []

    # ---- scoring -------------------------------------------------------------------------

    def _sequence(self, prompt_tokens: torch.Tensor, responses: torch.Tensor, mask: torch.Tensor):
        """``[prompt, response]`` tokens ``(B, Lp + T)`` and their attention mask."""
        tokens = torch.cat([prompt_tokens, responses], dim=1)
        attention = torch.cat([prompt_tokens != self.task.vocab.pad_id, mask], dim=1)
        return tokens, attention

    def response_logits(self, model: GPT, tokens: torch.Tensor, attention: torch.Tensor):
        """``(B, T, V)`` next-token logits at the T response positions."""
        logits = model(tokens, attention)  # (B, Lp + T, V)
        start = self.prompt_length - 1
        return logits[:, start : start + self.response_length] / self.config.temperature

    @staticmethod
    def _token_log_probs(logits: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` log-probability of each response token."""
        return torch.log_softmax(logits, dim=-1).gather(-1, responses.unsqueeze(-1)).squeeze(-1)

    def _autocast(self):
        """bf16 autocast of a forward pass on CUDA when ``config.bf16``; a no-op otherwise."""
        enabled = self.config.bf16 and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _token_stats(
        self,
        forward: Callable,
        model: GPT,
        tokens: torch.Tensor,
        attention: torch.Tensor,
        responses: torch.Tensor,
        with_entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, T)`` log-probs of the responses and (optionally) the entropy, in nats.

        ``forward(tokens, attention)`` gives ``model``'s hidden states; logits are
        ``hidden @ model.lm_head.weight.T / temperature``, formed in token chunks
        (``chunked_log_probs``) or at once.
        """
        cfg = self.config
        start = self.prompt_length - 1
        hidden = forward(tokens, attention)[:, start : start + self.response_length]  # (B, T, C)
        if cfg.temperature != 1.0:
            hidden = hidden / cfg.temperature
        weight = model.lm_head.weight  # (V, C)
        if cfg.chunked_log_probs:
            return token_log_probs_and_entropy(
                hidden,
                weight,
                responses,
                chunk_size=cfg.log_prob_chunk_tokens or None,
                with_entropy=with_entropy,
                compile=cfg.compile,
            )
        logits = F.linear(hidden, weight).float()  # (B, T, V)
        entropy = entropy_from_logits(logits) if with_entropy else None
        return self._token_log_probs(logits, responses), entropy

    @torch.no_grad()
    def _score(
        self,
        model: GPT,
        tokens: torch.Tensor,
        attention: torch.Tensor,
        responses: torch.Tensor,
        with_entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`_token_stats` without grad, ``micro_batch_size`` rows per forward pass."""
        forward = self.scorer if model is self.model else HiddenStates(model)
        rows = self.config.micro_batch_size or tokens.shape[0]
        parts = []
        for start in range(0, tokens.shape[0], rows):
            part = slice(start, start + rows)
            with self._autocast():
                parts.append(
                    self._token_stats(
                        forward, model, tokens[part], attention[part], responses[part], with_entropy
                    )
                )
        log_probs = torch.cat([lp for lp, _ in parts])  # (B, T)
        return log_probs, torch.cat([h for _, h in parts]) if with_entropy else None

    def _generate(
        self, prompt_tokens: torch.Tensor, uniforms: torch.Tensor | None = None, greedy=False
    ):
        """Responses ``(B, T)`` and masks, ``rollout_micro_batch_size`` rows at a time.

        Sampled with the (B, T) ``uniforms`` (see :meth:`GPT.generate`), or greedy.
        """
        rows = self.config.rollout_micro_batch_size or prompt_tokens.shape[0]
        parts = []
        for start in range(0, prompt_tokens.shape[0], rows):
            part = slice(start, start + rows)
            with self._autocast():
                parts.append(
                    self.model.generate(
                        prompt_tokens[part],
                        self.response_length,
                        temperature=self.config.temperature,
                        eos_id=self.task.vocab.eos_id,
                        pad_id=self.task.vocab.pad_id,
                        greedy=greedy,
                        uniforms=None if uniforms is None else uniforms[part],
                    )[:2]
                )
        return torch.cat([r for r, _ in parts]), torch.cat([m for _, m in parts])

    def _check_parallel_sizes(self) -> None:
        """The rollout's groups and strata split evenly over the ranks (ConfigError if not)."""
        cfg, world = self.config, self.parallel.world_size
        strata = stratum_groups(cfg.num_generations, cfg.num_mini_batches)
        if cfg.num_prompts % (world * strata):
            raise ConfigError(
                "num_prompts",
                cfg.num_prompts,
                f"must be a multiple of world_size * {strata} = {world * strata} (whole groups, "
                f"and strata of {strata} group(s) for {cfg.num_mini_batches} mini-batches, on "
                "every rank)",
            )
        local = cfg.num_prompts * cfg.num_generations // cfg.num_mini_batches // world
        if cfg.micro_batch_size and local % cfg.micro_batch_size:
            raise ConfigError(
                "micro_batch_size",
                cfg.micro_batch_size,
                f"must divide each rank's share of a mini-batch, {local} rows",
            )

    def _make_env(self) -> SequenceVectorEnv:
        """The rollout's vector env: this rank's P * G / world_size rows of the task's registered
        id, whole-response actions, on the trainer's device. Its prompts come from ``self.rng``
        (the env's ``np_random`` is that generator, so checkpoints keep restoring the stream)."""
        cfg, parallel = self.config, self.parallel
        env = gymnasium.make_vec(
            f"{NAMESPACE}/{env_name(cfg.task)}",
            num_envs=cfg.num_prompts * cfg.num_generations // parallel.world_size,
            vectorization_mode="vector_entry_point",
            device=self.device,
            task=self.task,
            action_mode="response",
            world_size=parallel.world_size,
            rank=parallel.rank,
        )
        env.np_random = self.rng
        return env

    # ---- the live identity probe ---------------------------------------------------------

    def _make_probe(self, seed: int):
        """A fixed set of states: every position of responses sampled from the warm start."""
        prompts = self.task.sample_prompts(
            self.config.probe_states, "train", np.random.default_rng(seed), device=self.device
        )
        generator = torch.Generator(device=self.device).manual_seed(seed)
        with torch.no_grad():
            responses, mask = self.model.generate(
                prompts.tokens,
                self.response_length,
                temperature=self.config.temperature,
                eos_id=self.task.vocab.eos_id,
                pad_id=self.task.vocab.pad_id,
                generator=generator,
            )[:2]
        tokens, attention = self._sequence(prompts.tokens, responses, mask)
        return tokens, attention, mask

    def _probe_logits(self) -> torch.Tensor:
        tokens, attention, _ = self.probe
        with torch.no_grad():
            return self.response_logits(self.model, tokens, attention).double()  # (B, T, V)

    # ---- one step ------------------------------------------------------------------------

    def rollout(self) -> Rollout:
        """Sample P x G responses through the env, score them, compute advantages (B = P * G).

        With several ranks, P and B are this rank's shard of whole groups: every rank draws
        the whole rollout's prompts (its env keeps its block) and (B, T) sampling uniforms and
        keeps its rows, so a row's sample does not depend on the number of ranks.
        """
        cfg = self.config
        observation, info = self.env.reset(options={"group_size": cfg.num_generations})
        prompts, prompt_index = self.env.prompts, info["prompt_index"]  # P, (B,) contiguous
        prompt_tokens = observation["tokens"][:, : self.prompt_length]  # (B, Lp)
        uniforms = torch.rand(
            cfg.num_prompts * cfg.num_generations,
            self.response_length,
            generator=self.generator,
            device=self.device,
        )  # (B_global, T)
        uniforms = uniforms[self.parallel.shard(uniforms.shape[0])]  # (B, T)
        num_prompts = len(prompts)
        self.model.eval()
        responses, mask = self._generate(prompt_tokens, uniforms)  # (B, T), pad after <eos>
        rewards = self.env.step(responses)[1]  # (B,) the verifier's
        grouped = rewards.view(num_prompts, cfg.num_generations)
        advantages = compute_advantages(cfg.advantage_estimator, grouped).reshape(-1)  # (B,)
        mask = mask.bool()
        response_mask = mask  # every response, also those of filtered groups (for metrics)
        if cfg.filter_groups:
            keep = filter_uniform_groups(grouped).repeat_interleave(cfg.num_generations)  # (B,)
            mask = mask & keep[:, None]
        # Attention covers every generated token, also in filtered groups (whose rows the loss
        # mask drops), so their scored log-probs and entropy are those the policy sampled from.
        tokens, attention = self._sequence(prompt_tokens, responses, response_mask)
        old_log_probs, token_entropy = self._score(self.model, tokens, attention, responses, True)
        ref_log_probs = None
        if self.reference is not None:
            ref_log_probs = self._score(self.reference, tokens, attention, responses, False)[0]
        return Rollout(
            mask=mask,
            response_mask=response_mask,
            rewards=rewards,
            advantages=advantages[:, None].expand_as(old_log_probs).contiguous(),
            old_log_probs=old_log_probs,
            token_entropy=token_entropy,
            ref_log_probs=ref_log_probs,
            prompts=prompts,
            prompt_index=prompt_index,
            tokens=tokens,
            attention=attention,
            responses=responses,
        )

    def _optimise(
        self, rollout: Rollout, rows: torch.Tensor, on_policy: bool = False
    ) -> dict[str, torch.Tensor]:
        """One optimiser step on the mini-batch ``rows`` of ``rollout``; returns device metrics.

        ``on_policy``: the model is still the one that sampled the rollout (the first step
        after it). The loss then takes its own detached log-probs as the old ones, as TRL does
        for on-policy updates, so ``lp - lp_old`` is exactly 0: the rollout's log-probs come
        from another forward pass, and their rounding difference (~1e-6) would otherwise be
        amplified by KL-Cov's ``|lp - lp_old|`` into a random +-ppo_kl_coef gradient per
        selected token (the sign of rounding noise), which depends on the thread count and
        the chunking of the forward pass.
        """
        cfg = self.config
        take = {k: getattr(rollout, k)[rows] for k in ("tokens", "attention", "responses", "mask")}
        old_lp = rollout.old_log_probs[rows]  # (b, T)
        advantages = rollout.advantages[rows]  # (b, T)
        ref_lp = None if rollout.ref_log_probs is None else rollout.ref_log_probs[rows]
        self.model.train()
        loss_config = self.loss_config
        # The selection is made once over the whole mini-batch (all ranks); top_entropy_quantile
        # ranks the tokens by the current policy's entropy.
        current_lp, current_entropy = self._score(
            self.model,
            take["tokens"],
            take["attention"],
            take["responses"],
            loss_config.top_entropy_quantile < 1,
        )
        if on_policy:
            old_lp = current_lp
        selection = select_tokens(
            loss_config,
            current_lp,
            old_lp,
            advantages,
            take["mask"],
            generator=self.selection_generator,
            dist=self.parallel.comm,
            cov_stats=True,
            entropy=current_entropy,
        )
        coef = None if self.entropy_coef is None else self.entropy_coef.value
        num_rows = rows.numel()
        micro = cfg.micro_batch_size or num_rows
        summed: dict[str, torch.Tensor] = {}
        local_selected = torch.zeros((), device=self.device)  # micro_batch scope: its count
        self.optimizer.zero_grad(set_to_none=True)
        for start in range(0, num_rows, micro):
            part = slice(start, start + micro)
            part_selection = selection[part]
            if cfg.selection_scope == "micro_batch":
                part_selection, count = self._micro_batch_selection(
                    part_selection,
                    current_lp[part],
                    old_lp[part],
                    advantages[part],
                    take["mask"][part],
                    None if current_entropy is None else current_entropy[part],
                )
                local_selected = local_selected + count
            # DDP all-reduces the gradients after the last micro-batch only.
            with self.parallel.no_sync(self.policy, sync=start + micro >= num_rows):
                with self._autocast():
                    log_probs, entropy = self._token_stats(
                        self.policy,
                        self.model,
                        take["tokens"][part],
                        take["attention"][part],
                        take["responses"][part],
                        with_entropy=bool(loss_config.entropy_coeff) or coef is not None,
                    )
                    loss, metrics = compute_policy_loss(
                        loss_config,
                        log_probs,
                        log_probs.detach() if on_policy else old_lp[part],
                        advantages[part],
                        take["mask"][part],
                        part_selection,
                        entropy=entropy,
                        ref_log_probs=None if ref_lp is None else ref_lp[part],
                        entropy_coeff=coef,
                    )
                # DDP averages over ranks; scaled, the average is the sum, the global gradient.
                (loss * self.parallel.world_size).backward()
            for name, value in metrics.items():
                summed[name] = summed.get(name, 0) + value.detach()
        # Loss metrics add up over ranks; the selection's are global already.
        totals = dict(selection.metrics) | self.parallel.sum(summed)
        if cfg.selection_scope == "micro_batch" and "select/frac" in totals:
            count = self.parallel.sum({"n": local_selected})["n"]
            totals["select/frac"] = count / selection.norm.n_tokens
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(
            parameters, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        )
        self.optimizer.step()
        totals["optim/grad_norm"] = grad_norm.detach()
        if coef is not None:  # the coefficient of this update, then the next one's
            totals["loss/entropy_coef"] = coef
            self.entropy_coef.update(totals["loss/entropy"])
        return totals

    def _micro_batch_selection(
        self,
        selection: TokenSelection,
        log_probs: torch.Tensor,
        old_log_probs: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        entropy: torch.Tensor | None,
    ) -> tuple[TokenSelection, torch.Tensor | int]:
        """``selection_scope=micro_batch``: ``selection`` (this micro-batch's rows of the
        mini-batch's selection) with the tokens chosen in this micro-batch of this rank alone,
        as verl's KL-Cov does; the normaliser stays the mini-batch's. All tensors ``(b, T)``.

        Returns the selection and the count it selected. One host sync: a micro-batch the group
        filter emptied selects nothing.
        """
        if not bool(mask.any()):
            return selection, 0
        local = select_tokens(self.loss_config, log_probs, old_log_probs, advantages, mask,
                              generator=self.selection_generator, entropy=entropy)  # fmt: skip
        local_selection = replace(selection, selected=local.selected,
                                  entropy_kept=local.entropy_kept)  # fmt: skip
        return local_selection, local.selected.sum()

    def train_step(self) -> dict[str, float]:
        """One RL step, in the order of the module docstring; returns its metrics (host floats).

        rollout -> rollout hooks -> updates (update probes before each) -> step metrics and the
        identity -> one host transfer -> the non-finite guard -> evaluation, histograms, log,
        checkpoint.
        """
        cfg = self.config
        start_state = self._snapshot()
        started = time.perf_counter()
        rollout = self.rollout()
        rollout_seconds = time.perf_counter() - started
        hook_metrics = self._run_rollout_hooks(rollout)
        stats = self.parallel.gather_stats(rollout.stats())  # the whole rollout (all ranks)
        started = time.perf_counter()
        update_metrics, identity, probe_totals = self._update(rollout)
        update_seconds = time.perf_counter() - started
        metrics = self._rollout_metrics(stats) | update_metrics
        metrics["identity/actual_dH"] = identity[1].sum()
        metrics["identity/predicted_dH"] = identity[0].sum()
        self._guard_flags(metrics, stats, identity)
        # The step's single host transfer: metrics, the guard flags and the identity points.
        values = torch.cat(
            [
                torch.stack(
                    [torch.as_tensor(v).to(self.device, torch.float64) for v in metrics.values()]
                ),
                identity.reshape(-1).to(torch.float64),
            ]
        ).tolist()
        host = dict(zip(metrics, values[: len(metrics)]))
        points = values[len(metrics) :]
        tokens = host["rollout/response_length"] * stats.rewards.numel()
        host["perf/rollout_tokens_per_s"] = tokens / max(rollout_seconds, 1e-9)
        host["perf/update_tokens_per_s"] = tokens * cfg.num_iterations / max(update_seconds, 1e-9)
        self.step += 1
        flagged = bool(host["guard/nonfinite"])
        self._guard(start_state, not host["guard/state_nonfinite"], flagged)
        if not flagged:
            half = len(points) // 2
            self.identity_points.extend(zip(points[:half], points[half:]))
        host["guard/skipped_updates"] = float(self.skipped_updates)
        host.update(hook_metrics)
        for probe in self.update_probes:
            host.update(probe.finish(probe_totals))
        if self.step % cfg.eval_every == 0 or self.step == cfg.total_steps:
            host.update(self.evaluate())
        histogram_step = cfg.histogram_every and self.step % cfg.histogram_every == 0
        if self.writer is not None and histogram_step and not flagged:
            self._histograms(stats)
        if self.log_fn is not None:
            self.log_fn(self.step, host)
        self.history.append(StepRecord(self.step, host))
        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
            self.save_checkpoint()
        return host

    def _run_rollout_hooks(self, rollout: Rollout) -> dict[str, float]:
        """The rollout hooks' metrics (they run before the updates, which they may steer)."""
        metrics: dict[str, float] = {}
        for hook in self.rollout_hooks:
            metrics.update({k: float(v) for k, v in hook(self, rollout).items()})
        return metrics

    def _rollout_metrics(self, stats: RolloutStats) -> dict[str, torch.Tensor]:
        """Device metrics of the rollout itself: reward, entropy (nats), lengths, KL to ref.

        Measured over every response, also those of groups the all-equal filter drops."""
        cfg, mask = self.config, stats.response_mask
        metrics = {
            "reward": stats.rewards.mean(),
            "entropy": masked_response_mean(stats.token_entropy, mask),
            "entropy/token_mean": masked_token_mean(stats.token_entropy, mask),
            "entropy/sampled_neg_log_prob": masked_token_mean(-stats.old_log_probs, mask),
            "rollout/response_length": mask.sum(dim=1).float().mean(),
            "rollout/solved_groups": (stats.rewards.view(cfg.num_prompts, -1).max(dim=1).values > 0)
            .float()
            .mean(),
        }
        if stats.ref_log_probs is not None:
            k3 = kl_estimate(
                stats.old_log_probs, stats.ref_log_probs, "k3", self.loss_config.log_ratio_clamp
            )
            metrics["kl/reference_k3"] = masked_token_mean(k3, mask)
        return metrics

    def _update(
        self, rollout: Rollout
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
        """``num_iterations`` passes of ``num_mini_batches`` optimiser steps over the rollout.

        Returns the update metrics averaged over the optimiser steps, the identity points
        ``(2, num_updates)`` (predicted and actual entropy change, nats, on the probe states)
        and the update probes' totals summed over the steps.
        """
        cfg = self.config
        update_metrics: dict[str, list[torch.Tensor]] = {}
        identity_actual, identity_predicted = [], []
        probe_totals: dict[str, torch.Tensor] = {}
        empty_updates = 0
        for _ in range(cfg.num_iterations):
            passes = mini_batch_rows(
                cfg.num_prompts,
                cfg.num_generations,
                cfg.num_mini_batches,
                self.generator,
                self.parallel,
            )
            for rows in passes:
                if cfg.filter_groups and not self._any_valid(rollout.mask[rows]):
                    empty_updates += 1  # every group of this mini-batch was filtered out
                    continue
                for probe in self.update_probes:
                    for name, value in probe.before_update(self, rollout, rows).items():
                        probe_totals[name] = probe_totals.get(name, 0) + value
                before = self._probe_logits()
                step_metrics = self._optimise(rollout, rows, on_policy=not identity_actual)
                after = self._probe_logits()
                actual, predicted = self._identity(before, after)
                identity_actual.append(actual)
                identity_predicted.append(predicted)
                for name, value in step_metrics.items():
                    update_metrics.setdefault(name, []).append(torch.as_tensor(value))
        metrics = {}
        for name, values in update_metrics.items():
            # Diagnostics undefined on some updates (no token admitted) average over the rest.
            mean = torch.nanmean if NAN_AWARE_METRICS.fullmatch(name) else torch.mean
            metrics[name] = mean(torch.stack(values).double())
        metrics["filter/empty_updates"] = torch.tensor(float(empty_updates), device=self.device)
        if not identity_actual:  # no update this step: every group was filtered out
            for name in ("loss/total", "optim/grad_norm"):
                metrics[name] = torch.zeros((), dtype=torch.float64, device=self.device)
            return metrics, torch.zeros(2, 0, dtype=torch.float64, device=self.device), probe_totals
        identity = torch.stack([torch.stack(identity_predicted), torch.stack(identity_actual)])
        return metrics, identity, probe_totals

    def _guard_flags(
        self, metrics: dict[str, torch.Tensor], stats: RolloutStats, identity: torch.Tensor
    ) -> None:
        """Add the guard's device flags: whether the state the step started from gave
        non-finite outputs, and whether anything of the step (outputs, rewards, advantages,
        loss, gradients, identity) is non-finite."""
        checked = [v for k, v in metrics.items() if not NAN_AWARE_METRICS.fullmatch(k)]
        outputs_finite = torch.isfinite(metrics["entropy"]) & torch.isfinite(
            metrics["entropy/sampled_neg_log_prob"]
        )
        all_finite = (
            torch.isfinite(torch.stack([torch.as_tensor(v).to(self.device) for v in checked]))
            .all()
            .logical_and(torch.isfinite(stats.advantages).all())
            .logical_and(torch.isfinite(identity).all())
        )
        metrics["guard/state_nonfinite"] = (~outputs_finite).double()
        metrics["guard/nonfinite"] = (~all_finite).double()

    def fit(self, state: dict | None = None, progress: Callable | None = None) -> None:
        """The run loop: resume from ``state`` (a checkpoint) or evaluate and log step 0, train
        to ``total_steps``, checkpoint the last step.

        Between steps it honours a stop request (``toy_entropy.training.interrupts``): the step in
        flight completes, its checkpoint is written, then :class:`Interrupted` propagates.
        ``progress(iterable, total)`` wraps the step loop (a progress bar) when given.
        """
        if state is not None:
            self.load_state(state)
        else:  # on every rank, so that their eval generators stay alike
            self.initial_eval = self.evaluate()
            if self.log_fn is not None:
                self.log_fn(0, self.initial_eval)
        steps = range(self.step, self.config.total_steps)
        if progress is not None:
            steps = progress(steps, len(steps))
        try:
            for _ in steps:
                metrics = self.train_step()
                if hasattr(steps, "set_postfix"):
                    steps.set_postfix(
                        reward=f"{metrics['reward']:.3f}", H=f"{metrics['entropy']:.3f}"
                    )
                interrupts.check()
        except interrupts.Interrupted:
            self.save_checkpoint()  # the last completed step, which a resume continues from
            raise
        self.save_checkpoint()

    def _guard(self, start_state: dict, start_state_ok: bool, flagged: bool) -> None:
        """The non-finite guard, after the step's metrics reached the host.

        ``start_state`` (the model and optimiser the step started from) becomes the last good
        state when its outputs were finite. A flagged step rolls back to the last good state;
        the run stops (:class:`NonFiniteError`, after checkpointing that state) under
        ``nonfinite_policy="stop"`` or after ``nonfinite_max_consecutive`` roll-backs with no
        good state made by an update in between (a learning rate that destroys every update).
        """
        cfg = self.config
        if start_state_ok:
            self._good_state = start_state
            if not self._restored:
                self._bad_streak = 0
        if not flagged:
            self._restored = False
            return
        self._restore(self._good_state or start_state)
        self._restored = True
        self._bad_streak += 1
        self.skipped_updates += 1
        streak_ended = self._bad_streak >= cfg.nonfinite_max_consecutive
        if cfg.nonfinite_policy == "stop" or streak_ended:
            self.step -= 1
            path = self.save_checkpoint()
            where = f"; last good state saved to {path}" if path else ""
            why = (
                "nonfinite_policy='stop'"
                if cfg.nonfinite_policy == "stop"
                else f"{self._bad_streak} roll-backs in a row, nonfinite_max_consecutive="
                f"{cfg.nonfinite_max_consecutive}"
            )
            raise NonFiniteError(
                f"non-finite metrics, loss or gradients at step {self.step + 1}; stopped "
                f"({why}){where}"
            )
        warnings.warn(
            f"step {self.step}: non-finite metrics, loss or gradients; rolled back to the last "
            "good state (nonfinite_policy='skip')",
            RuntimeWarning,
            stacklevel=3,
        )

    def _any_valid(self, mask: torch.Tensor) -> bool:
        """Whether a mini-batch holds a valid token on any rank (one host sync; called only
        with ``filter_groups``, which can leave a mini-batch empty)."""
        return bool(self.parallel.sum({"n": mask.sum()})["n"] > 0)

    def _snapshot(self) -> dict:
        """Device copies of the model and optimiser state (no host sync), to drop an update."""
        return {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "loss_config": self.loss_config,
            "entropy_coef": None if self.entropy_coef is None else self.entropy_coef.state_dict(),
        }

    def _restore(self, snapshot: dict) -> None:
        self.model.load_state_dict(snapshot["model"])
        self.optimizer.load_state_dict(snapshot["optimizer"])
        self.loss_config = snapshot["loss_config"]
        if self.entropy_coef is not None:
            self.entropy_coef.load_state_dict(snapshot["entropy_coef"])

    def save_checkpoint(self) -> Path | None:
        """Write model, optimiser, RNG states, step and config atomically (if enabled).

        Only rank 0 writes; the world size is recorded (a run resumes on the same one).
        """
        if self.checkpoint_dir is None or not self.parallel.is_main:
            return None
        state = {
            "step": self.step,
            "config": asdict(self.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loss_config": asdict(self.loss_config),
            "entropy_coef": None if self.entropy_coef is None else self.entropy_coef.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "generator": self.generator.get_state(),
            "selection_generator": self.selection_generator.get_state(),
            "eval_generator": self.eval_generator.get_state(),
            "world_size": self.parallel.world_size,
            "torch_rng": torch.get_rng_state(),
            "history": [(r.step, r.metrics) for r in self.history],
            "identity_points": self.identity_points,
            "initial_eval": self.initial_eval,
            "skipped_updates": self.skipped_updates,
        }
        return save_checkpoint(self.checkpoint_dir, self.step, state, self.config.keep_checkpoints)

    def load_state(self, state: dict) -> None:
        """Continue from a checkpoint written by :meth:`save_checkpoint` with the same config
        and world size (every rank loads the same checkpoint)."""
        self.parallel.check_checkpoint(state)
        check_resumable(state, self.config)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loss_config = PolicyLossConfig(**state["loss_config"])  # as controllers left it
        if self.entropy_coef is not None:
            self.entropy_coef.load_state_dict(state["entropy_coef"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.generator.set_state(state["generator"])
        self.selection_generator.set_state(state["selection_generator"])
        self.eval_generator.set_state(state["eval_generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = state["step"]
        self.history = [StepRecord(step, metrics) for step, metrics in state["history"]]
        self.identity_points = list(state["identity_points"])
        self.initial_eval = dict(state["initial_eval"])
        self.skipped_updates = state["skipped_updates"]

    def _identity(self, before: torch.Tensor, after: torch.Tensor):
        """Mean actual and predicted entropy change (nats) over the probe states."""
        _, _, mask = self.probe
        actual = entropy_from_logits(after) - entropy_from_logits(before)  # (B, T)
        predicted = predicted_entropy_change(before, after - before)  # (B, T)
        return masked_token_mean(actual, mask), masked_token_mean(predicted, mask)

    def _histograms(self, stats: RolloutStats) -> None:
        mask = stats.mask
        covariance = masked_token_covariance(stats.old_log_probs, stats.advantages, mask)[mask]
        self.writer.add_histogram("covariance/token_covariance", covariance, self.step)
        self.writer.add_histogram("entropy/per_state", stats.token_entropy[mask], self.step)

    # ---- evaluation ----------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Greedy accuracy, mean@k and the unbiased pass@j (j = 1, 2, 4, ..., k) of k samples
        per held-out prompt."""
        cfg, prompts = self.config, self.eval_prompts
        self.model.eval()
        with torch.no_grad():
            greedy, greedy_mask = self._generate(prompts.tokens, greedy=True)
            index = torch.arange(len(prompts), device=self.device)
            accuracy = self.task.score(prompts, index, greedy, greedy_mask).mean()
            k = cfg.eval_samples
            repeated = index.repeat_interleave(k)
            uniforms = torch.rand(
                len(repeated),
                self.response_length,
                generator=self.eval_generator,
                device=self.device,
            )  # (P * k, T)
            samples, sample_mask = self._generate(prompts.tokens[repeated], uniforms)
            correct = self.task.score(prompts, repeated, samples, sample_mask).view(-1, k)
        # pass@j for j = 1, 2, 4, ... up to k (and k): the sampled pass@k curve
        curve = sorted({2**i for i in range(k.bit_length()) if 2**i <= k} | {k})
        return {
            "eval/greedy_accuracy": float(accuracy),
            f"eval/mean_at_{k}": float(correct.mean()),
            **{f"eval/pass_at_{j}": float(_pass_at_k(correct > 0, j).mean()) for j in curve},
        }
