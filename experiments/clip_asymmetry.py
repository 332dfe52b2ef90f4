"""clip-asymmetry: PPO's clip bounds move the entropy even when the rewards carry no signal.

arXiv 2509.26114 argues that under purely random rewards clip-low raises the entropy and
clip-high lowers it, so at eps 0.2 / 0.2 the entropy falls with nothing to learn. Here the
claim is computed exactly on a tabular prefix policy with a random warm start (one prompt):

- the rollout is the infinite-sample batch (:mod:`toy_entropy.algorithms.exact_ppo`): every response
  r with frequency pi_old(r);
- the reward function is random: each of the R responses gets reward 0 or 1 independently
  with probability 1/2. All 2^R reward functions are enumerated (each is one "prompt" of one
  batched prefix policy with identical logits), so the expectation over them is exact;
- GRPO advantages of each reward function (the all-equal ones are filtered), then K = 1..8
  plain gradient steps on the PPO surrogate of that one rollout (eps_low, eps_high; "off"
  switches a side off);
- per cell the learning rate is matched to an equal mean per-update KL (sequence-level, mean
  over the updates and the reward functions), so cells differ in where the clip cuts, not in
  how far they move.

Measured per cell: the expected entropy change after the K updates (response-mean H, mean over
the reward functions), minus the no-clip cell's at the same K. For K = 1 every ratio is 1, so
the clip cannot act: all cells are equal, and the first-order change is exactly zero (each
reward function's update is minus that of its complement). The second-order part is not zero.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
import torch

from toy_entropy.algorithms.exact_ppo import clip_config, ppo_updates, rollout_batch, sequence_kl
from toy_entropy.algorithms.exact_selection import exact_group_advantages
from toy_entropy.experiments.registry import ExperimentResult, RunContext, experiment
from toy_entropy.models.prefix_policy import PrefixPolicy
from toy_entropy.runs.claims import Claim, greater_than, less_than
from toy_entropy.runs.plots import plt
from toy_entropy.runs.report import markdown_table
from toy_entropy.theory.curve_stats import confidence_interval
from toy_entropy.training.config import ConfigError, check_positive_int, check_range

__all__ = ["AsymmetryConfig", "random_reward_policy", "cell_change"]

MAX_PATTERNS = 2**14


@dataclass
class AsymmetryConfig:
    vocab_size: int = 3
    """V, tokens (EOS included)"""
    length: int = 2
    """L, response length; R = responses, and 2^R reward functions are enumerated"""
    init_std: float = 1.0
    """standard deviation of the warm start's logits (drawn per seed)"""
    eps_lows: tuple[float, ...] = (0.1, 0.2, 0.3)
    """clip_ratio_low values of the grid (an "off" column is always added)"""
    eps_highs: tuple[float, ...] = (0.1, 0.2, 0.28)
    """clip_ratio_high values of the grid (an "off" row is always added)"""
    updates: tuple[int, ...] = (1, 2, 4, 8)
    """gradient steps per rollout"""
    target_kl: float = 1e-3
    """mean per-update KL (nats, sequence level) every cell's learning rate is matched to"""
    kl_tolerance: float = 1e-3
    """relative tolerance of the KL match"""
    num_seeds: int = 5
    """warm starts (seed, seed + 1, ...)"""

    def __post_init__(self) -> None:
        check_range("vocab_size", self.vocab_size, 2, 6)
        check_range("length", self.length, 1, 3)
        responses = sum((self.vocab_size - 1) ** t for t in range(self.length + 1))
        if 2**responses > MAX_PATTERNS:
            raise ConfigError(
                "vocab_size",
                self.vocab_size,
                f"V={self.vocab_size}, L={self.length} gives {responses} responses and 2^"
                f"{responses} reward functions; at most {MAX_PATTERNS} are enumerated",
            )
        check_range("init_std", self.init_std, 0)
        for eps in self.eps_lows:
            check_range("eps_lows", eps, 0, 1, low_inclusive=False, high_inclusive=False)
        for eps in self.eps_highs:
            check_range("eps_highs", eps, 0, low_inclusive=False)
        for k in self.updates:
            check_range("updates", k, 1, 64)
        check_range("target_kl", self.target_kl, 0, 1, low_inclusive=False)
        check_range("kl_tolerance", self.kl_tolerance, 0, 1, low_inclusive=False)
        check_positive_int("num_seeds", self.num_seeds)


def random_reward_policy(config: AsymmetryConfig, seed: int) -> tuple[PrefixPolicy, torch.Tensor]:
    """One warm start copied to all 2^R reward functions: the policy (2^R prompts) and the
    ``(2^R, R)`` rewards, row i the bits of i."""
    base = PrefixPolicy(1, config.vocab_size, config.length)
    n = 2**base.num_responses
    policy = PrefixPolicy(n, config.vocab_size, config.length)
    generator = torch.Generator().manual_seed(seed)
    start = config.init_std * torch.randn(policy.logits.shape[1:], generator=generator)
    with torch.no_grad():
        policy.logits.copy_(start.to(policy.logits.dtype).expand_as(policy.logits))
    bits = torch.arange(base.num_responses)
    rewards = ((torch.arange(n)[:, None] >> bits) & 1).to(policy.logits.dtype)  # (2^R, R)
    return policy, rewards


def _run_cell(policy, batch, config, step_size: float, updates: int) -> dict[str, float]:
    """Expected entropy change after ``updates`` steps and the mean per-update KL."""
    path = [policy.logits.detach()] + ppo_updates(policy, batch, config, step_size, updates)
    kls = [float(sequence_kl(policy, a, b).mean()) for a, b in itertools.pairwise(path)]
    return {
        "dH": float(policy.entropy(logits=path[-1]) - policy.entropy(logits=path[0])),
        "kl": float(np.mean(kls)),
    }


def cell_change(
    policy: PrefixPolicy,
    rewards: torch.Tensor,
    eps_low: float | None,
    eps_high: float | None,
    updates: int,
    target_kl: float,
    tolerance: float = 1e-3,
) -> dict[str, float]:
    """One cell: the learning rate with mean per-update KL ``target_kl`` and, at it, the
    expected entropy change ``dH`` (nats) after ``updates`` steps; also ``kl`` (achieved),
    ``step_size`` and ``iterations`` of the match (KL ~ eta^2: eta <- eta sqrt(target / KL))."""
    advantages, kept = exact_group_advantages(policy.response_probs().detach(), rewards)
    batch = rollout_batch(policy, advantages * kept)
    loss = clip_config(eps_low, eps_high)
    step_size = 1.0
    result = _run_cell(policy, batch, loss, step_size, updates)
    iterations = 1
    while abs(result["kl"] / target_kl - 1) >= tolerance and iterations < 30:
        step_size *= (target_kl / result["kl"]) ** 0.5
        result = _run_cell(policy, batch, loss, step_size, updates)
        iterations += 1
    return result | {"step_size": step_size, "iterations": iterations}


def first_order_change(policy: PrefixPolicy, rewards: torch.Tensor, step_size: float) -> float:
    """The expected first-order entropy change of one on-policy update (nats)."""
    advantages, kept = exact_group_advantages(policy.response_probs().detach(), rewards)
    batch = rollout_batch(policy, advantages * kept)
    new = ppo_updates(policy, batch, clip_config(None, None), step_size, 1)[0]
    return policy.entropy_change_split(new - policy.logits.detach()).first_order


def _label(eps: float | None) -> str:
    return "off" if eps is None else f"{eps:g}"


@experiment(
    "clip-asymmetry",
    "exact expected entropy change of PPO under purely random rewards over an (eps_low, "
    "eps_high) grid and 1-8 updates per rollout, learning rate matched to equal per-update KL",
    AsymmetryConfig,
    quick={
        "vocab_size": 4,
        "length": 1,
        "eps_lows": (0.2,),
        "eps_highs": (0.2,),
        "updates": (1, 8),
        "num_seeds": 2,
    },  # fmt: skip
)
def run(config: AsymmetryConfig, context: RunContext) -> ExperimentResult:
    started = time.perf_counter()
    lows, highs = (*config.eps_lows, None), (*config.eps_highs, None)
    grid = list(itertools.product(config.updates, lows, highs))
    results: dict[tuple, list[dict]] = {cell: [] for cell in grid}
    first_order = []
    seeds = [context.seed + i for i in range(config.num_seeds)]
    for seed in context.progress(seeds, total=len(seeds), desc="seeds"):
        policy, rewards = random_reward_policy(config, seed)
        for cell in grid:
            k, low, high = cell
            results[cell].append(
                cell_change(policy, rewards, low, high, k, config.target_kl, config.kl_tolerance)
            )
        one = results[(1, None, None)] if 1 in config.updates else None
        if one is not None:
            first_order.append(first_order_change(policy, rewards, one[-1]["step_size"]))
    cells = []
    for (k, low, high), runs in results.items():
        off = results[(k, None, None)]
        effect = [r["dH"] - o["dH"] for r, o in zip(runs, off, strict=True)]
        mean, ci = confidence_interval([r["dH"] for r in runs])
        effect_mean, effect_ci = confidence_interval(effect)
        cells.append({
            "updates": k, "eps_low": _label(low), "eps_high": _label(high),
            "dH": mean, "dH_ci95": ci, "clip_effect": effect_mean, "clip_effect_ci95": effect_ci,
            "kl": float(np.mean([r["kl"] for r in runs])),
            "step_size": float(np.mean([r["step_size"] for r in runs])),
            "seeds": [r["dH"] for r in runs],
        })  # fmt: skip
    writer = context.writer()
    for k in config.updates:
        row = {
            f"clip_asymmetry/dH_low{c['eps_low']}_high{c['eps_high']}": c["dH"]
            for c in cells
            if c["updates"] == k
        }
        reference = next(c for c in cells if c["updates"] == k and c["eps_low"] == "off"
                         and c["eps_high"] == "off")  # fmt: skip
        writer.log(k, {"entropy": reference["dH"], "reward": 0.5, **row})
    tables = []
    for k in config.updates:
        columns = ["eps_low \\ eps_high"] + [_label(h) for h in highs]
        rows = []
        for low in lows:
            row = [_label(low)]
            for high in highs:
                c = next(c for c in cells if (c["updates"], c["eps_low"], c["eps_high"])
                         == (k, _label(low), _label(high)))  # fmt: skip
                row.append(f"{c['dH']:+.2e} ± {c['dH_ci95']:.1e}")
            rows.append(row)
        tables.append({
            "title": f"E[dH] (nats) after {k} update(s) per rollout, mean ± 95% CI over seeds",
            "columns": columns, "rows": rows,
        })  # fmt: skip
    k_max = max(config.updates)
    effect_rows = [
        [_label(low)]
        + [
            f"{c['clip_effect']:+.2e} ± {c['clip_effect_ci95']:.1e}"
            for c in (_cell(cells, k_max, _label(low), _label(high)) for high in highs)
        ]
        for low in lows
    ]
    tables.append({
        "title": f"clip effect E[dH] - E[dH | no clip] (nats) after {k_max} updates, paired "
                 "over seeds, mean ± 95% CI",
        "columns": tables[-1]["columns"], "rows": effect_rows,
    })  # fmt: skip
    text = "\n\n".join(f"{t['title']}\n{markdown_table(t['columns'], t['rows'])}" for t in tables)
    print("\n" + text)
    writer.add_text("clip_asymmetry/tables", text)
    writer.add_figure("clip_asymmetry/effect", _figure(cells, config, context.out_dir))
    claims = _claims(cells, config, first_order)
    headline = {
        "cells": cells,
        "tables": tables,
        "first_order_one_update": first_order,
        "seconds": time.perf_counter() - started,
    }
    return ExperimentResult(headline, claims)


def _cell(cells: list[dict], k: int, low: str, high: str) -> dict:
    return next(c for c in cells if (c["updates"], c["eps_low"], c["eps_high"]) == (k, low, high))


def _figure(cells: list[dict], config: AsymmetryConfig, out_dir):
    k_max = max(config.updates)
    lows = [_label(e) for e in (*config.eps_lows, None)]
    highs = [_label(e) for e in (*config.eps_highs, None)]
    grid = np.array([[_cell(cells, k_max, lo, hi)["clip_effect"] for hi in highs] for lo in lows])
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    bound = float(np.abs(grid).max()) or 1.0
    image = axes[0].imshow(grid, cmap="coolwarm", vmin=-bound, vmax=bound)
    axes[0].set_xticks(range(len(highs)), highs)
    axes[0].set_yticks(range(len(lows)), lows)
    axes[0].set_xlabel("eps_high")
    axes[0].set_ylabel("eps_low")
    axes[0].set_title(f"E[dH] - E[dH | no clip], {k_max} updates (nats)", fontsize=9)
    figure.colorbar(image, ax=axes[0])
    for low, high in ((lows[0], "off"), ("off", highs[0]), (lows[0], highs[0]), ("off", "off")):
        axes[1].plot(
            config.updates,
            [_cell(cells, k, low, high)["dH"] for k in config.updates],
            marker="o",
            label=f"low {low}, high {high}",
        )
    axes[1].axhline(0.0, color="grey", lw=0.5)
    axes[1].set_xlabel("updates per rollout")
    axes[1].set_ylabel("E[dH] (nats)")
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out_dir / "clip_asymmetry.png", dpi=80)
    return figure


def _claims(cells: list[dict], config: AsymmetryConfig, first_order: list[float]) -> list[Claim]:
    claims = []
    if 1 in config.updates:
        ones = [c for c in cells if c["updates"] == 1]
        off = _cell(cells, 1, "off", "off")
        spread = max(
            abs(a - b) for c in ones for a, b in zip(c["seeds"], off["seeds"], strict=True)
        )
        claims += [
            less_than(
                "clip_asymmetry.one_update.clip_inactive",
                "one on-policy update: every clip cell has the no-clip cell's entropy change "
                "(max |difference| over cells and seeds, nats)",
                spread,
                1e-12,
            ),
            less_than(
                "clip_asymmetry.one_update.first_order_zero",
                "one on-policy update: the expected first-order entropy change (max |.| over "
                "seeds, nats)",
                max(abs(v) for v in first_order),
                1e-12,
            ),
            less_than(
                "clip_asymmetry.one_update.expected_change_zero",
                "one on-policy update: |expected exact entropy change| (mean over seeds, "
                f"nats) at per-update KL {config.target_kl:g}",
                abs(off["dH"]),
                1e-6,
            ),
        ]
    k = max(config.updates)
    if k > 1:
        low, high = f"{min(config.eps_lows):g}", f"{min(config.eps_highs):g}"
        claims += [
            greater_than(
                "clip_asymmetry.clip_low_raises",
                f"{k} updates: E[dH] with clip-low {low} only minus without clip (nats)",
                _cell(cells, k, low, "off")["clip_effect"],
                0.0,
            ),
            less_than(
                "clip_asymmetry.clip_high_lowers",
                f"{k} updates: E[dH] with clip-high {high} only minus without clip (nats)",
                _cell(cells, k, "off", high)["clip_effect"],
                0.0,
            ),
        ]
        if 0.2 in config.eps_lows and 0.2 in config.eps_highs:
            claims.append(
                less_than(
                    "clip_asymmetry.symmetric_0.2_lowers_entropy",
                    f"{k} updates: E[dH] at eps 0.2 / 0.2 under random rewards (nats)",
                    _cell(cells, k, "0.2", "0.2")["dH"],
                    0.0,
                )
            )
    return claims
