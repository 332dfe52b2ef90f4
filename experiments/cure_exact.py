"""cure-exact: why Clip-Cov and KL-Cov work when the token covariance is heavy-tailed, noise-free.

An exact tabular prefix policy (:mod:`toy_entropy.models.prefix_policy`) with an LLM-like warm-start
profile: every prompt has one correct response of length L; at scaffold positions the policy
puts ``1 - eps`` on the determined token and spreads ``eps`` over the other V - 1 tokens
(distractors, EOS included); at fork positions the correct token has ``fork_correct``, a decoy
the rest but ``eps``, which the others share. Reward 1 for the correct response.
The expected dynamics (:func:`toy_entropy.algorithms.exact_selection.expected_run`, natural-gradient
steps on the exact token batch, GRPO advantages, the all-equal filter) of GRPO, Clip-Cov and
KL-Cov run from the same start without any sampling noise; with U updates per rollout GRPO is
clipped at PPO eps ``clip_ratio`` (0.2), Clip-Cov at ``clip_cov_clip_ratio`` (also 0.2 by
default; the paper's recipe uses 1), KL-Cov not at all (its reference loss), and "KL-Cov +
clip" is KL-Cov under GRPO's clip.

The map: for every cell of updates per rollout x distractor mass x fork count x vocabulary
size, the step-0 tail
ratio of the token covariance (top-0.02% mean / mean, as the paper's Table 1) and the entropy
of Clip-Cov and KL-Cov relative to GRPO's, and their expected reward minus GRPO's, at the step
where GRPO's entropy first falls below 10% of its start (counted in rollouts). Claims, for each
number of updates per rollout: the entropy ratio grows with the tail ratio (rank correlation),
and the heaviest-tail cell keeps at least 5x GRPO's entropy.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
import torch

from toy_entropy.algorithms.exact_selection import expected_run, tail_statistics, token_table
from toy_entropy.experiments.registry import ExperimentResult, RunContext, experiment
from toy_entropy.models.prefix_policy import PrefixPolicy
from toy_entropy.runs.claims import Claim, greater_than
from toy_entropy.runs.plots import plt
from toy_entropy.runs.report import markdown_table
from toy_entropy.theory.curve_stats import rank_correlation
from toy_entropy.training.config import check_positive_int, check_range

__all__ = ["ExactConfig", "fork_profile", "map_cell"]

SELECTION_METHODS = {
    "clip-cov": ("clip_cov", "clip_cov_ratio", "clip_cov_clip_ratio"),
    "kl-cov": ("kl_cov", "kl_cov_ratio", None),
    "kl-cov-clip": ("kl_cov", "kl_cov_ratio", "clip_ratio"),
}
"""Method -> (selection rule, the ExactConfig field of its ratio, the field of its PPO clip eps
or None for no clip). KL-Cov's reference loss has no clip; ``kl-cov-clip`` is KL-Cov under
GRPO's clip (the trainer's ``kl_cov_ppo_clip``), which tells the selection's effect from the
clip's when U > 1."""


@dataclass
class ExactConfig:
    num_prompts: int = 4
    """P prompts (each with its own correct response)"""
    length: int = 5
    """L, response length (every correct response has L tokens, no EOS)"""
    vocab_sizes: tuple[int, ...] = (4, 6)
    """V values of the map (EOS included)"""
    fork_counts: tuple[int, ...] = (1, 2)
    """forks per response in the map (placed at positions 0, 2, 4, ...)"""
    distractor_masses: tuple[float, ...] = (1e-1, 1e-2, 1e-3)
    """eps values of the map: probability mass on the non-determined tokens of a state"""
    updates_per_rollout: tuple[int, ...] = (1, 8)
    """U values of the map: updates on each rollout's batch (the paper: 8)"""
    clip_ratio: float = 0.2
    """PPO clip eps of GRPO (and of KL-Cov + clip) on a rollout's later updates"""
    clip_cov_clip_ratio: float = 0.2
    """PPO clip eps of Clip-Cov; GRPO's by default, so the map compares the selections. The
    paper's recipe uses 1, which clips no negative-advantage token: at U > 1 their exact
    natural-gradient steps, which grow like sqrt(p / (1 - p)) as a prompt's success rate p
    nears 1, then drive the policy to determinism (docs/cure.md)."""
    fork_correct: float = 0.6
    """warm-start probability of the correct token at a fork (below ~0.5 the rare correct fork
    makes the mean covariance negative: entropy first rises, and the tail ratio is negative)"""
    clip_cov_ratio: float = 2e-4
    """Clip-Cov r (lb 1, ub 5)"""
    kl_cov_ratio: float = 2e-3
    """KL-Cov k (strong-penalty limit)"""
    step_size: float = 0.1
    """eta of the natural-gradient steps"""
    max_steps: int = 400
    """most steps; GRPO normally falls below 10% of its entropy much earlier"""
    seed: int = 0
    """draws the correct and decoy tokens"""

    def __post_init__(self) -> None:
        check_positive_int("num_prompts", self.num_prompts)
        check_range("length", self.length, 2, 8)
        for v in self.vocab_sizes:
            check_range("vocab_sizes", v, 3, 9)
        for f in self.fork_counts:
            check_range("fork_counts", f, 1, (self.length + 1) // 2)
        for eps in self.distractor_masses:
            check_range("distractor_masses", eps, 0, 0.5, low_inclusive=False)
        for updates in self.updates_per_rollout:
            check_range("updates_per_rollout", updates, 1, 64)
        check_range("clip_ratio", self.clip_ratio, 0, 1, low_inclusive=False)
        check_range("clip_cov_clip_ratio", self.clip_cov_clip_ratio, 0, 1, low_inclusive=False)
        check_range(
            "fork_correct", self.fork_correct, 0, 1, low_inclusive=False, high_inclusive=False
        )
        check_range("clip_cov_ratio", self.clip_cov_ratio, 0, 1)
        check_range("kl_cov_ratio", self.kl_cov_ratio, 0, 1)
        check_range("step_size", self.step_size, 0, low_inclusive=False)
        check_positive_int("max_steps", self.max_steps)


def fork_profile(
    num_prompts: int,
    vocab_size: int,
    length: int,
    forks: int,
    eps: float,
    fork_correct: float,
    seed: int,
) -> tuple[PrefixPolicy, torch.Tensor]:
    """The warm-start-like prefix policy and its rewards (P, R); see the module docstring.

    Forks sit at positions 0, 2, 4, ...; token 0 is EOS. Every state at depth t of prompt p
    prefers the correct token c(p, t) (a scaffold position) or the decoy d(p, t) (a fork),
    whatever the prefix, so after a mistake the policy goes on as it would have.
    """
    generator = torch.Generator().manual_seed(seed)
    policy = PrefixPolicy(num_prompts, vocab_size, length, eos_id=0)
    choices = torch.stack(
        [
            torch.randperm(vocab_size - 1, generator=generator)[:2] + 1
            for _ in range(num_prompts * length)
        ]
    ).view(num_prompts, length, 2)  # (P, L, 2): correct and decoy token, never EOS
    fork_positions = set(range(0, 2 * forks, 2))
    depth = policy.state_depth  # (S,)
    probs = torch.empty(policy.logits.shape, dtype=torch.float64)  # (P, S, V)
    for p in range(num_prompts):
        for t in range(length):
            correct, decoy = choices[p, t].tolist()
            row = torch.empty(vocab_size, dtype=torch.float64)
            if t in fork_positions:
                row.fill_(eps / (vocab_size - 2))
                row[correct], row[decoy] = fork_correct, 1.0 - fork_correct - eps
            else:
                row.fill_(eps / (vocab_size - 1))
                row[correct] = 1.0 - eps
            probs[p, depth == t] = row
    with torch.no_grad():
        policy.logits.copy_(probs.log())
    targets = [tuple(choices[p, :, 0].tolist()) for p in range(num_prompts)]
    rewards = policy.reward_table(lambda p, tokens: float(tokens == targets[p]))
    return policy, rewards


def map_cell(
    config: ExactConfig, vocab_size: int, forks: int, eps: float, updates: int = 1
) -> dict:
    """Tail statistics at step 0 and the three methods' expected runs for one cell, with
    ``updates`` updates per rollout (each method clipped as :data:`SELECTION_METHODS` says)."""
    policy, rewards = fork_profile(
        config.num_prompts, vocab_size, config.length, forks, eps, config.fork_correct, config.seed
    )
    tail = tail_statistics(token_table(policy, rewards))
    grpo = expected_run(
        policy, rewards, "none", 0.0, config.max_steps, config.step_size,
        updates_per_rollout=updates, clip_ratio=config.clip_ratio, stop_below=0.1,
    )  # fmt: skip
    stop = len(grpo["entropy"]) - 1
    runs = {"grpo": grpo}
    for method, (selection, ratio_field, clip_field) in SELECTION_METHODS.items():
        runs[method] = expected_run(
            policy, rewards, selection, getattr(config, ratio_field), stop, config.step_size,
            updates_per_rollout=updates,
            clip_ratio=getattr(config, clip_field) if clip_field else None,
        )  # fmt: skip
    cell = {
        "vocab_size": vocab_size,
        "forks": forks,
        "fork_density": forks / config.length,
        "eps": eps,
        "updates_per_rollout": updates,
        "tail": tail,
        "stop_step": stop,
        "grpo_collapsed": grpo["entropy"][-1] < 0.1 * grpo["entropy"][0],
        "curves": runs,
    }
    for method in SELECTION_METHODS:
        cell[f"{method}_entropy_ratio"] = runs[method]["entropy"][-1] / runs["grpo"]["entropy"][-1]
        cell[f"{method}_reward_gain"] = runs[method]["reward"][-1] - runs["grpo"]["reward"][-1]
        cell[f"{method}_removed"] = float(np.mean(runs[method]["removed"][:-1]))
    return cell


def _figures(cells: list[dict], out_dir) -> list:
    """The heaviest-tail cell's curves at the fewest and the most updates per rollout, and the
    map (entropy ratio against tail ratio, one colour per U)."""
    updates = sorted({c["updates_per_rollout"] for c in cells})
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for axis, u in ((axes[0], updates[0]), (axes[1], updates[-1])):
        cell = max(
            (c for c in cells if c["updates_per_rollout"] == u),
            key=lambda c: c["tail"]["tail_ratio"],
        )
        for method, curves in cell["curves"].items():
            axis.plot(curves["entropy"], label=method)
        axis.set_title(
            f"heaviest tail ({cell['tail']['tail_ratio']:.0f}), U = {u} updates per rollout\n"
            f"V={cell['vocab_size']}, forks={cell['forks']}, eps={cell['eps']:g}",
            fontsize=9,
        )
        axis.set_xlabel("rollout")
        axis.set_ylabel("H(pi, D) (nats)")
        axis.legend(fontsize=8)
    for u, colour in zip(updates, ("C0", "C3", "C2", "C4"), strict=False):
        group = [c for c in cells if c["updates_per_rollout"] == u]
        for method, marker in (("clip-cov", "o"), ("kl-cov", "s"), ("kl-cov-clip", "^")):
            axes[2].scatter(
                [c["tail"]["tail_ratio"] for c in group],
                [c[f"{method}_entropy_ratio"] for c in group],
                marker=marker,
                color=colour,
                facecolors="none" if method == "clip-cov" else colour,
                label=f"{method}, U={u}",
            )
    axes[2].set_xscale("log")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("step-0 tail ratio (top-0.02% mean / mean)")
    axes[2].set_ylabel("entropy / GRPO's at GRPO's 10% point")
    axes[2].legend(fontsize=7)
    axes[2].set_title("the map: every cell", fontsize=9)
    figure.tight_layout()
    figure.savefig(out_dir / "cure_exact.png", dpi=80)
    return [figure]


@experiment(
    "cure-exact",
    "noise-free Clip-Cov / KL-Cov on an exact prefix policy: heavy covariance tail -> entropy "
    "kept; the map of entropy ratio and reward gain against tail ratio, forks, V",
    ExactConfig,
    quick={
        "vocab_sizes": (4,),
        "distractor_masses": (1e-1, 1e-3),
        "updates_per_rollout": (1, 4),
        "max_steps": 200,
    },
)
def run(config: ExactConfig, context: RunContext) -> ExperimentResult:
    started = time.perf_counter()
    cells = []
    grid = list(
        itertools.product(
            config.updates_per_rollout, config.vocab_sizes, config.fork_counts,
            config.distractor_masses,
        )
    )  # fmt: skip
    for updates, vocab_size, forks, eps in context.progress(grid, total=len(grid), desc="cells"):
        cells.append(map_cell(config, vocab_size, forks, eps, updates))
    writer = context.writer()
    for index, cell in enumerate(cells):
        for step, h in enumerate(cell["curves"]["grpo"]["entropy"]):
            row = {f"{m}/entropy": cell["curves"][m]["entropy"][step] for m in cell["curves"]}
            row |= {f"{m}/reward": cell["curves"][m]["reward"][step] for m in cell["curves"]}
            context.writer(f"cell{index}").log(
                step, {"entropy": h, "reward": row["grpo/reward"], **row}
            )
    labels = {"clip-cov": "Clip-Cov", "kl-cov": "KL-Cov", "kl-cov-clip": "KL-Cov + clip"}
    columns = ["U", "V", "forks (density)", "eps", "tail ratio", "share top 0.2%", "GRPO 10% step"]
    columns += [f"{labels[m]} H / GRPO" for m in SELECTION_METHODS]
    columns += [f"{labels[m]} dR" for m in SELECTION_METHODS]
    columns += [f"{labels[m]} removed" for m in SELECTION_METHODS]
    rows = [
        [
            c["updates_per_rollout"], c["vocab_size"],
            f"{c['forks']} ({c['fork_density']:.1f})", f"{c['eps']:g}",
            f"{c['tail']['tail_ratio']:.1f}", f"{c['tail']['top_0.2%_share']:.3f}",
            c["stop_step"] if c["grpo_collapsed"] else f">{c['stop_step']}",
            *(f"{c[f'{m}_entropy_ratio']:.2f}" for m in SELECTION_METHODS),
            *(f"{c[f'{m}_reward_gain']:+.3f}" for m in SELECTION_METHODS),
            *(f"{c[f'{m}_removed']:.1e}" for m in SELECTION_METHODS),
        ]
        for c in cells
    ]  # fmt: skip
    table = {"title": "The map (exact, noise-free)", "columns": columns, "rows": rows}
    text = markdown_table(columns, rows)
    print(f"\n{table['title']}\n{text}")
    writer.add_text("cure_exact/map", text)
    for figure in _figures(cells, context.out_dir):
        writer.add_figure("cure_exact/mechanism_and_map", figure)
    summary_cells = [{k: v for k, v in c.items() if k != "curves"} for c in cells]
    headline = {"cells": summary_cells, "tables": [table],
                "seconds": time.perf_counter() - started}  # fmt: skip
    return ExperimentResult(headline, _claims(cells))


def _claims(cells: list[dict]) -> list[Claim]:
    """Per number of updates per rollout U (ids end in ``.u<U>``): the entropy ratio grows
    with the tail ratio over the cells, and the heaviest-tail cell keeps 5x GRPO's entropy."""
    claims = []
    for u in sorted({c["updates_per_rollout"] for c in cells}):
        group = [c for c in cells if c["updates_per_rollout"] == u]
        tails = [c["tail"]["tail_ratio"] for c in group]
        heaviest = group[int(np.argmax(tails))]
        for method in SELECTION_METHODS:
            slug = method.replace("-", "_")
            ratios = [c[f"{method}_entropy_ratio"] for c in group]
            if len(group) > 2:
                claims.append(
                    greater_than(
                        f"cure_exact.{slug}.entropy_ratio_grows_with_tail_ratio.u{u}",
                        f"{method}, {u} update(s) per rollout: rank correlation over the cells "
                        "of the step-0 tail ratio with the entropy relative to GRPO's",
                        rank_correlation(tails, ratios),
                        0.5,
                    )
                )
            claims.append(
                greater_than(
                    f"cure_exact.{slug}.heaviest_tail_keeps_5x_entropy.u{u}",
                    f"{method}, {u} update(s) per rollout: entropy relative to GRPO's in the "
                    f"heaviest-tail cell (tail ratio {heaviest['tail']['tail_ratio']:.0f})",
                    heaviest[f"{method}_entropy_ratio"],
                    5.0,
                )
            )
    return claims
