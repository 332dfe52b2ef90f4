"""identity: which covariance predicts the entropy change of an optimiser step?

docs/THEORY.md section 3: for a softmax policy, ``dH = -Cov_{a~pi}(log pi(a), dz_a)`` to first
order, per state. The paper uses three granularities of this covariance; here all three are computed
next to the true entropy change of every optimiser step:

(i)   the exact per-state covariance with the measured logit change dz, weighted by the state
      visitation (``identity/predicted_dH``);
(ii)  Theorem 1 at the sequence level as the paper plotted it: per prompt, the covariance over
      the G sampled responses of the length-normalised log-probability and the advantage,
      averaged over prompts (``granularity/neg_sequence_cov``, sign flipped: a prediction of
      dH up to the unknown positive step size);
(iii) the token-level batch covariance ``(lp - mean lp)(A - mean A)`` the algorithms select
      tokens with (``granularity/neg_token_cov``, sign flipped).

For each predictor: correlation with the actual change, sign agreement and the least-squares
scale (actual ~ slope * predictor).

Two policies:

- ``prefix``: the exact tabular prefix policy (``toy_entropy.models.prefix_policy``): every response
  is enumerable, so the *true* change of the dataset entropy H(pi, D) is exact, and it splits into
  the per-state part the identity covers and the state-distribution shift the paper ignores
  (``PrefixPolicy.entropy_change_split``). GRPO with sampled groups, the loss library's ``pg``
  loss (token-mean), plain gradient steps on the logits (tabular vanilla PG).
- ``transformer-<task>``: the warm-started transformer trained by GRPO, one optimiser step per
  rollout; the actual change is the trainer's probe-state entropy change (fixed states, so the
  per-state part only), (ii) and (iii) come from each rollout batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from toy_entropy.algorithms.advantages import compute_advantages
from toy_entropy.algorithms.losses import PolicyLossConfig, policy_loss
from toy_entropy.experiments.probes import granularity_covariances, sequence_covariance
from toy_entropy.experiments.registry import ExperimentResult, RunContext, experiment
from toy_entropy.experiments.sweeps import RunSpec, group_by_variant, run_sweep
from toy_entropy.models.prefix_policy import PrefixPolicy
from toy_entropy.runs.claims import Claim, greater_than, less_than
from toy_entropy.runs.report import SubRun, figure_identity, markdown_table
from toy_entropy.runs.tb_layout import add_layout
from toy_entropy.theory.curve_stats import agreement
from toy_entropy.theory.entropy import masked_token_mean
from toy_entropy.training.config import check_choice, check_positive_int, check_range
from toy_entropy.training.trainer import TrainConfig

__all__ = ["IdentityConfig", "PREDICTORS", "prefix_run", "target_rewards"]

PREDICTORS = {
    "identity/predicted_dH": "(i) exact per-state",
    "granularity/neg_sequence_cov": "(ii) per-prompt sequence",
    "granularity/neg_token_cov": "(iii) batch token",
}
ACTUAL = "identity/actual_dH"


def identity_budget() -> TrainConfig:
    """Each transformer run: 150 steps of 32 x 8 responses, one optimiser step each, AdamW
    1e-3, one held-out evaluation at the end."""
    return TrainConfig(total_steps=150, num_prompts=32, learning_rate=1e-3, eval_every=150)


@dataclass
class IdentityConfig:
    prefix_prompts: int = 16
    """P of the tabular prefix policy"""
    prefix_vocab: int = 4
    """V of the prefix policy (EOS included)"""
    prefix_length: int = 4
    """L, the longest response of the prefix policy"""
    prefix_init_std: float = 1.5
    """standard deviation of the prefix policy's initial logits"""
    prefix_target_rank: int = 3
    """each prompt's one correct response is its this-most-likely response at the start"""
    prefix_group_size: int = 8
    """G, sampled responses per prompt per step"""
    prefix_step_size: float = 10.0
    """gradient step on the logits (tabular vanilla PG)"""
    prefix_steps: int = 300
    """optimiser steps of each prefix run"""
    prefix_seeds: int = 4
    """prefix runs (seeds)"""
    train: TrainConfig = field(default_factory=identity_budget)
    """each transformer run; its task is replaced by each of ``tasks``"""
    tasks: tuple[str, ...] = ("reverse", "sort")
    """sequence tasks of the transformer runs (empty: prefix policy only)"""
    num_seeds: int = 3
    """transformer runs per task"""
    workers: int = 0
    """parallel training processes (0: one per CPU core; 1 on CUDA)"""

    def __post_init__(self) -> None:
        from toy_entropy.envs.sequence import TASKS

        for name in ("prefix_prompts", "prefix_steps", "num_seeds"):
            check_positive_int(name, getattr(self, name))
        check_range("prefix_vocab", self.prefix_vocab, 2)
        check_range("prefix_length", self.prefix_length, 1)
        check_range("prefix_init_std", self.prefix_init_std, 0)
        check_range("prefix_target_rank", self.prefix_target_rank, 1)
        check_range("prefix_group_size", self.prefix_group_size, 2)
        check_range("prefix_step_size", self.prefix_step_size, 0, low_inclusive=False)
        check_range("prefix_seeds", self.prefix_seeds, 2)
        for task in self.tasks:
            check_choice("tasks", task, sorted(TASKS))
        check_range("workers", self.workers, 0)


def target_rewards(policy: PrefixPolicy, rank: int) -> torch.Tensor:
    """``(P, R)`` rewards: 1 for each prompt's ``rank``-th most likely response, else 0."""
    probs = policy.response_probs().detach()  # (P, R)
    if rank > probs.shape[1]:
        raise ValueError(f"prefix_target_rank={rank} exceeds the {probs.shape[1]} responses")
    target = probs.argsort(dim=1, descending=True)[:, rank - 1]  # (P,)
    rewards = torch.zeros_like(probs)
    rewards[torch.arange(probs.shape[0]), target] = 1.0
    return rewards


def _sampled_rewards(policy: PrefixPolicy, rewards, prompts, responses, mask) -> torch.Tensor:
    """``(B,)`` reward of each sampled response, looked up by matching the enumeration."""
    padded = torch.where(mask, responses, policy.pad_id)  # (B, L)
    table = torch.where(policy.response_mask, policy.responses, policy.pad_id)  # (R, L)
    match = (padded[:, None, :] == table[None, :, :]).all(dim=-1)  # (B, R)
    return (rewards[prompts] * match).sum(dim=1)


def prefix_run(config: IdentityConfig, seed: int, device: torch.device) -> list[dict[str, float]]:
    """One GRPO run of the prefix policy; per step the exact entropy change, its split and the
    three predictors (keys as in :data:`PREDICTORS`)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    policy = PrefixPolicy(
        config.prefix_prompts,
        config.prefix_vocab,
        config.prefix_length,
        init_std=config.prefix_init_std,
        generator=torch.Generator().manual_seed(seed),
    ).to(device)
    rewards = target_rewards(policy, config.prefix_target_rank)
    loss_config = PolicyLossConfig(loss_mode="pg")
    group = config.prefix_group_size
    prompts = torch.arange(config.prefix_prompts, device=device).repeat_interleave(group)  # (B,)
    rows = []
    for step in range(1, config.prefix_steps + 1):
        responses, mask, old_lp = policy.sample(prompts, generator, return_log_probs=True)
        sampled = _sampled_rewards(policy, rewards, prompts, responses, mask)  # (B,)
        advantages = compute_advantages("grpo", sampled.view(-1, group)).reshape(-1)  # (B,)
        token_adv = advantages[:, None].expand_as(old_lp) * mask  # (B, L)
        logits = policy.logits_for(prompts, responses, mask)  # (B, L, V)
        lp = torch.log_softmax(logits, dim=-1).gather(-1, responses.clamp(min=0)[..., None])
        lp = lp.squeeze(-1) * mask  # (B, L)
        loss, metrics = policy_loss(loss_config, lp, old_lp, token_adv, mask, cov_stats=True)
        (grad,) = torch.autograd.grad(loss, policy.logits)
        dz = -config.prefix_step_size * grad  # (P, S, V), descent on the loss
        split = policy.entropy_change_split(dz)
        with torch.no_grad():
            entropy, expected = policy.entropy(), policy.expected_reward(rewards)
        row = {
            "entropy": float(entropy),
            "reward": float(expected),
            "reward/sampled": float(sampled.mean()),
            ACTUAL: split.total,
            "identity/per_state_dH": split.per_state,
            "identity/distribution_shift_dH": split.distribution_shift,
            "identity/predicted_dH": split.first_order,
            "granularity/neg_sequence_cov": -float(
                sequence_covariance(old_lp, advantages, mask, group)
            ),
            "granularity/neg_token_cov": -float(metrics["cov/mean"]),
            "cov/mean": float(metrics["cov/mean"]),
            "entropy/sampled_neg_log_prob": float(masked_token_mean(-old_lp, mask)),
        }
        rows.append({"step": step, **row})
        policy.apply_update(dz)
    return rows


def _agreements(rows_by_run: list[list[dict]]) -> dict[str, dict[str, float]]:
    actual = np.concatenate([[r[ACTUAL] for r in rows] for rows in rows_by_run])
    out = {}
    for key, label in PREDICTORS.items():
        if key in rows_by_run[0][0]:
            predicted = np.concatenate([[r[key] for r in rows] for rows in rows_by_run])
            out[label] = agreement(predicted, actual)
    return out


@experiment(
    "identity",
    "entropy change per optimiser step vs the exact per-state, per-prompt sequence and batch "
    "token covariances; the share of the state-distribution shift (exact prefix policy)",
    IdentityConfig,
    quick={"prefix_steps": 150, "prefix_seeds": 3, "tasks": ("reverse",), "num_seeds": 2,
           "train.total_steps": 50, "train.num_prompts": 16, "train.eval_every": 50},
)  # fmt: skip
def run(config: IdentityConfig, context: RunContext) -> ExperimentResult:
    prefix_rows = []
    for i in context.progress(range(config.prefix_seeds), desc="prefix"):
        rows = prefix_run(config, context.seed + i, context.device)
        writer = context.writer(f"prefix/seed{context.seed + i}")
        for row in rows:
            writer.log(row["step"], {k: v for k, v in row.items() if k != "step"})
        prefix_rows.append(rows)
    variants = {"prefix": prefix_rows}
    specs = [
        RunSpec(
            f"transformer-{task}",
            context.seed + i,
            replace(config.train, task=task),
            hooks=(granularity_covariances,),
        )
        for task in config.tasks
        for i in range(config.num_seeds)
    ]
    if specs:
        results = run_sweep(specs, context, config.workers)
        for name, group in group_by_variant(results).items():
            variants[name] = [r.rows for r in group]
    summary = {name: _agreements(runs) for name, runs in variants.items()}
    shift = _shift_share(prefix_rows)
    summary["prefix"]["distribution_shift"] = shift
    table = _table(summary)
    print("\n" + markdown_table(table["columns"], table["rows"]))
    print(
        f"prefix policy: the state-distribution shift is {shift['abs_share']:.1%} of the "
        f"absolute entropy change per step and {shift['cumulative_share']:.1%} of the total change"
    )
    sub_runs = [
        SubRun(f"{name}/seed{context.seed + i}", rows)
        for name, runs in variants.items()
        for i, rows in enumerate(runs)
    ]
    writer = context.writer()
    add_layout(writer.tensorboard)
    writer.add_figure("identity/granularity_scatter", figure_identity(sub_runs))
    writer.add_text("identity/table", markdown_table(table["columns"], table["rows"]))
    return ExperimentResult({"variants": summary, "tables": [table]}, _claims(summary))


def _shift_share(runs: list[list[dict]]) -> dict[str, float]:
    """How much of the exact entropy change the state-distribution shift accounts for."""
    shift = np.concatenate([[r["identity/distribution_shift_dH"] for r in rows] for rows in runs])
    per_state = np.concatenate([[r["identity/per_state_dH"] for r in rows] for rows in runs])
    total = shift + per_state
    return {
        "abs_share": float(np.abs(shift).sum() / (np.abs(shift).sum() + np.abs(per_state).sum())),
        "cumulative_share": float(shift.sum() / total.sum()),
        "steps_shift_dominates": float(np.mean(np.abs(shift) > np.abs(per_state))),
        "first_order_vs_per_state": agreement(
            np.concatenate([[r["identity/predicted_dH"] for r in rows] for rows in runs]),
            per_state,
        )["correlation"],
    }


def _table(summary: dict) -> dict:
    columns = ["policy", "predictor", "correlation", "sign agreement", "scale (slope)", "steps"]
    rows = []
    for name, stats in summary.items():
        for label, s in stats.items():
            if label in PREDICTORS.values():
                rows.append([name, label, f"{s['correlation']:.3f}", f"{s['sign_agreement']:.2f}",
                             f"{s['slope']:.3g}", s["num_points"]])  # fmt: skip
    return {"title": "Actual entropy change per optimiser step against each covariance",
            "columns": columns, "rows": rows}  # fmt: skip


def _claims(summary: dict) -> list[Claim]:
    claims: list[Claim] = []
    for name, stats in summary.items():
        labels = [label for label in PREDICTORS.values() if label in stats]
        for label in labels:
            slug = label.split(") ")[1].replace(" ", "_").replace("-", "_")
            bound = 0.9 if label.startswith("(i)") else 0.5
            claims.append(
                greater_than(
                    f"identity.{name}.{slug}.correlation",
                    f"{name}: {label} covariance tracks the actual entropy change per step "
                    "(correlation)",
                    stats[label]["correlation"],
                    bound,
                )
            )
        claims.append(
            greater_than(
                f"identity.{name}.exact_predicts_best",
                f"{name}: the exact per-state covariance predicts the change better than the "
                "coarser ones (its correlation minus the best other's)",
                stats[labels[0]]["correlation"]
                - max(stats[label]["correlation"] for label in labels[1:]),
                0.0,
            )
        )
    shift = summary["prefix"]["distribution_shift"]
    claims.append(
        less_than(
            "identity.prefix.distribution_shift_small",
            "the state-distribution shift the identity ignores is a small part of the exact "
            "entropy change (share of the absolute change per step)",
            shift["abs_share"],
            0.25,
        )
    )
    return claims
