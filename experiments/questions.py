"""questions: numbers for the questions users ask about Clip-Cov and KL-Cov (docs/questions.md).

Each part answers one public thread without the transformer trainer. ``parts`` selects them:

- ``band`` (PRIME-RL/Entropy-Mechanism-of-RL #10): Clip-Cov's covariance band
  ``(lb, ub)`` in {-inf, 0, 1} x {2, 5, +inf} and its pick among the candidates (uniform
  random, as the reference code, or the top covariance) at r = 2e-4. Exact expected updates
  (:mod:`toy_entropy.algorithms.exact_selection`) on the warm-start-like prefix policies of
  ``cure-exact`` (:func:`~toy_entropy.experiments.cure_exact.fork_profile`): entropy relative to
  GRPO's and expected reward minus GRPO's at the step where GRPO's entropy first falls below 10% of
  its start, and over ``horizon_factor`` times that many steps the largest one-step entropy rise
  (a surge) and the roughness of the entropy curve (stability).
- ``theorem`` (#5): KL-Cov's top-k selection ranked by Theorem 2's ``Cov(log pi, A)`` (the
  code's) or Theorem 1's ``Cov(log pi, pi A)``, at the same k, so at the same number of
  tokens touched; under natural-gradient (``npg``) and plain-gradient (``pg``) updates. Entropy
  held per token touched: ``(H - H_GRPO) / k`` at GRPO's 10% step.
- ``anneal`` (arXiv 2604.09676): KL-Cov with constant k, KL-Cov with k annealed linearly to 0
  at half the horizon, and entropy bonuses; the final policy's distance to the unregularised
  optimum, ``-mean_p log P(correct | p)`` = KL(pi* || pi) (nats), under GRPO's std-normalised
  advantages and under Dr. GRPO's ``R - mu``.
- ``local`` (verl-project/verl #7818 / #7829, and #20 above): selection made per micro-batch
  and per rank (:mod:`toy_entropy.algorithms.local_selection`) against the batch-global selection,
  on token batches sampled from the exact policy (``num_seeds`` batches, 95% Student-t intervals):
  the selected-count ratio, the Jaccard overlap and the recall of the global set (KL-Cov), and the
  Jaccard overlap of Clip-Cov's candidate band.
- ``units``: each codebase's ratio knob and the tokens it selects at 1e5 tokens
  (:mod:`toy_entropy.theory.units`).

The exact parts have no sampling noise, so they have no seeds and no intervals.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from toy_entropy.algorithms.advantages import compute_advantages, filter_uniform_groups
from toy_entropy.algorithms.exact_selection import expected_run, optimum_distance
from toy_entropy.algorithms.local_selection import (
    band_candidates,
    local_selection,
    selection_agreement,
)
from toy_entropy.algorithms.losses.config import PolicyLossConfig
from toy_entropy.experiments.cure import roughness
from toy_entropy.experiments.cure_exact import fork_profile
from toy_entropy.experiments.identity import _sampled_rewards
from toy_entropy.experiments.registry import ExperimentResult, RunContext, experiment
from toy_entropy.models.prefix_policy import PrefixPolicy
from toy_entropy.runs.claims import Claim, between, greater_than, less_than
from toy_entropy.runs.plots import plt
from toy_entropy.runs.report import markdown_table
from toy_entropy.theory.curve_stats import confidence_interval
from toy_entropy.theory.units import units_rows
from toy_entropy.training.config import check_choice, check_positive_int, check_range

__all__ = ["QuestionsConfig", "PARTS", "sampled_token_batch"]

PARTS = ("band", "theorem", "anneal", "local", "units")
INF = math.inf


@dataclass
class QuestionsConfig:
    parts: tuple[str, ...] = PARTS
    """which questions to answer: band, theorem, anneal, local, units"""
    num_prompts: int = 4
    """P prompts of the exact prefix policy (band, theorem, anneal)"""
    length: int = 5
    """L, the answer length of the exact prefix policy"""
    vocab_size: int = 4
    """V of the exact prefix policy (EOS included)"""
    forks: int = 1
    """forks per answer"""
    distractor_masses: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    """eps of the profiles (the first, heaviest-tailed one carries the claims)"""
    fork_correct: float = 0.6
    """warm-start probability of the correct token at a fork"""
    step_size: float = 0.1
    """eta of the natural-gradient (npg) expected updates"""
    pg_step_size: float = 10.0
    """eta of the plain-gradient (pg) expected updates (its steps are ~1/(P L) as large)"""
    max_steps: int = 400
    """most steps when looking for GRPO's 10% step"""
    horizon_factor: int = 3
    """band: the stability horizon, in multiples of GRPO's 10% step"""
    band_lower: tuple[float, ...] = (-INF, 0.0, 1.0)
    """band: Clip-Cov lower bounds lb"""
    band_upper: tuple[float, ...] = (2.0, 5.0, INF)
    """band: Clip-Cov upper bounds ub"""
    band_ratio: float = 2e-4
    """band: Clip-Cov r"""
    theorem_ratios: tuple[float, ...] = (2e-4, 2e-3, 2e-2)
    """theorem: KL-Cov k (fraction of the token weight touched)"""
    anneal_steps: int = 600
    """anneal: the horizon T (the annealed k reaches 0 at T / 2)"""
    anneal_step_size: float = 0.3
    """anneal: eta of its natural-gradient updates"""
    anneal_ratios: tuple[float, ...] = (2e-3, 2e-2)
    """anneal: KL-Cov k, each constant and annealed"""
    entropy_coeffs: tuple[float, ...] = (0.01, 0.1, 0.2)
    """anneal: entropy-bonus coefficients"""
    local_prompts: int = 256
    """local: prompts per sampled batch (x group_size responses, ~10k tokens)"""
    group_size: int = 8
    """local: responses per prompt"""
    local_ranks: tuple[int, ...] = (1, 2, 4)
    """local: data-parallel ranks"""
    local_micro_batches: tuple[int, ...] = (1, 2, 8)
    """local: micro-batches per rank"""
    local_kl_cov_ratios: tuple[float, ...] = (2e-4, 2e-3)
    """local: KL-Cov k"""
    local_clip_cov_ratio: float = 2e-4
    """local: Clip-Cov r (lb 1, ub 5)"""
    num_seeds: int = 5
    """local: sampled batches (seeds seed..seed+num_seeds-1)"""
    units_tokens: int = 100_000
    """units: the batch size of the units table"""

    def __post_init__(self) -> None:
        for part in self.parts:
            check_choice("parts", part, PARTS)
        for name in ("num_prompts", "max_steps", "horizon_factor", "anneal_steps",
                     "local_prompts", "num_seeds", "units_tokens"):  # fmt: skip
            check_positive_int(name, getattr(self, name))
        check_range("length", self.length, 2, 8)
        check_range("vocab_size", self.vocab_size, 3, 9)
        check_range("forks", self.forks, 1, (self.length + 1) // 2)
        check_range("group_size", self.group_size, 2)
        for eps in self.distractor_masses:
            check_range("distractor_masses", eps, 0, 0.5, low_inclusive=False)
        check_range("fork_correct", self.fork_correct, 0, 1, low_inclusive=False,
                    high_inclusive=False)  # fmt: skip
        for name in ("step_size", "pg_step_size", "anneal_step_size"):
            check_range(name, getattr(self, name), 0, low_inclusive=False)
        for name in ("theorem_ratios", "anneal_ratios", "local_kl_cov_ratios"):
            for ratio in getattr(self, name):
                check_range(name, ratio, 0, 1, low_inclusive=False)
        check_range("band_ratio", self.band_ratio, 0, 1, low_inclusive=False)
        check_range("local_clip_cov_ratio", self.local_clip_cov_ratio, 0, 1, low_inclusive=False)
        for coeff in self.entropy_coeffs:
            check_range("entropy_coeffs", coeff, 0, low_inclusive=False)
        for name in ("local_ranks", "local_micro_batches"):
            for value in getattr(self, name):
                check_positive_int(name, value)


def _profile(config: QuestionsConfig, eps: float) -> tuple[PrefixPolicy, torch.Tensor]:
    return fork_profile(config.num_prompts, config.vocab_size, config.length, config.forks,
                        eps, config.fork_correct, seed=0)  # fmt: skip


def _ten_percent_step(entropy: list[float], max_steps: int) -> int:
    """The first step whose entropy is below 10% of the start (``max_steps`` if none)."""
    return next((i for i, h in enumerate(entropy) if h < 0.1 * entropy[0]), max_steps)


def _log_curves(context: RunContext, name: str, curves: dict[str, list[float]]) -> None:
    """One sub-run's metrics.jsonl: entropy, reward and the exact extras per step."""
    keys = {"entropy": "entropy", "reward": "reward", "removed": "exact/removed",
            "cov_mean": "exact/cov_mean", "distance": "exact/optimum_distance"}  # fmt: skip
    writer = context.writer(name, tensorboard=False)
    for step in range(len(curves["entropy"])):
        writer.log(step, {keys[k]: v[step] for k, v in curves.items() if k in keys})


def _band_name(lower: float, upper: float) -> str:
    return f"({lower:g}, {upper:g})"


# ----- band ---------------------------------------------------------------------------------


def band_part(config: QuestionsConfig, context: RunContext) -> dict:
    """Clip-Cov band x candidate rule on every profile: ratios at GRPO's 10% step, stability."""
    profiles = []
    for index, eps in enumerate(config.distractor_masses):
        policy, rewards = _profile(config, eps)
        grpo_full = expected_run(policy, rewards, "none", 0.0, config.max_steps, config.step_size)
        stop = _ten_percent_step(grpo_full["entropy"], config.max_steps)
        horizon = config.horizon_factor * stop
        grpo = expected_run(policy, rewards, "none", 0.0, horizon, config.step_size)
        _log_curves(context, f"band/eps{index}/grpo", grpo)
        cells = []
        for lower in config.band_lower:
            for upper in config.band_upper:
                for rule in ("random", "top"):
                    curves = expected_run(
                        policy, rewards, "clip_cov", config.band_ratio, horizon,
                        config.step_size, lower=lower, upper=upper, candidates=rule,
                    )  # fmt: skip
                    name = f"lb{lower:g}_ub{upper:g}_{rule}"
                    _log_curves(context, f"band/eps{index}/{name}", curves)
                    entropy = np.asarray(curves["entropy"])
                    cells.append({
                        "lower": lower, "upper": upper, "candidates": rule,
                        "entropy_ratio": entropy[stop] / grpo["entropy"][stop],
                        "reward_gain": curves["reward"][stop] - grpo["reward"][stop],
                        "removed": float(np.mean(curves["removed"][:stop])),
                        "max_rise": float(np.max(np.diff(entropy)) / entropy[0]),
                        "roughness": roughness(entropy),
                        "curve": curves["entropy"],
                    })  # fmt: skip
        profiles.append({"eps": eps, "stop_step": stop, "horizon": horizon,
                         "grpo_curve": grpo["entropy"], "cells": cells})  # fmt: skip
    heavy = profiles[0]
    columns = ["lb", "ub", "candidates"]
    columns += [f"H / GRPO (eps {p['eps']:g})" for p in profiles]
    columns += ["dR (heaviest)", "removed (heaviest)", "largest rise / H0 (heaviest)",
                "roughness (heaviest)"]  # fmt: skip
    rows = []
    for i, cell in enumerate(heavy["cells"]):
        rows.append(
            [f"{cell['lower']:g}", f"{cell['upper']:g}", cell["candidates"]]
            + [f"{p['cells'][i]['entropy_ratio']:.3f}" for p in profiles]
            + [f"{cell['reward_gain']:+.4f}", f"{cell['removed']:.1e}",
               f"{cell['max_rise']:+.1e}", f"{cell['roughness']:.4f}"]
        )  # fmt: skip
    title = (f"Clip-Cov band x candidates, r = {config.band_ratio:g}, exact (GRPO's 10% step "
             f"{', '.join(str(p['stop_step']) for p in profiles)}; horizon x"
             f"{config.horizon_factor})")  # fmt: skip
    return {"profiles": profiles, "table": {"title": title, "columns": columns, "rows": rows}}


def _band_cell(band: dict, lower: float, upper: float, rule: str) -> dict | None:
    for cell in band["profiles"][0]["cells"]:
        if (cell["lower"], cell["upper"], cell["candidates"]) == (lower, upper, rule):
            return cell
    return None


def band_claims(band: dict, ratio: float) -> list[Claim]:
    """Claims on the heaviest-tail profile; a claim whose cells are not in the grid is left out."""
    paper, unbounded = _band_cell(band, 1.0, 5.0, "random"), _band_cell(band, 1.0, INF, "random")
    top = _band_cell(band, 1.0, 5.0, "top")
    top_unbounded = _band_cell(band, 1.0, INF, "top")
    eps = band["profiles"][0]["eps"]
    where = f"exact prefix policy, eps {eps:g}, r = {ratio:g}, at GRPO's 10% step"
    claims = []
    if paper is not None:
        claims.append(greater_than(
            "questions.band.paper_band_keeps_5x_grpo",
            f"Clip-Cov with the paper's band (1, 5) and random candidates keeps 5x GRPO's "
            f"entropy ({where})", paper["entropy_ratio"], 5.0))  # fmt: skip
    if paper is not None and unbounded is not None:
        claims.append(greater_than(
            "questions.band.upper_bound_costs_entropy",
            f"entropy with (1, +inf) over entropy with (1, 5), random candidates ({where})",
            unbounded["entropy_ratio"] / paper["entropy_ratio"], 1.0))  # fmt: skip
    if paper is not None and top is not None:
        claims.append(greater_than(
            "questions.band.top_k_keeps_more_than_random",
            f"entropy with top-covariance candidates over random ones, band (1, 5) ({where})",
            top["entropy_ratio"] / paper["entropy_ratio"], 1.0))  # fmt: skip
    if top_unbounded is not None:
        claims.append(less_than(
            "questions.band.top_k_unbounded_has_no_surge",
            f"largest one-step entropy rise of top-k with (1, +inf), as a share of the start "
            f"entropy, over the horizon (exact prefix policy, eps {eps:g})",
            top_unbounded["max_rise"], 0.05))  # fmt: skip
    return claims


# ----- theorem ------------------------------------------------------------------------------


def theorem_part(config: QuestionsConfig, context: RunContext) -> dict:
    """KL-Cov top-k by the Theorem-1 vs the Theorem-2 covariance, npg and pg updates."""
    results = []
    for index, eps in enumerate(config.distractor_masses):
        policy, rewards = _profile(config, eps)
        for rule, eta in (("npg", config.step_size), ("pg", config.pg_step_size)):
            grpo = expected_run(policy, rewards, "none", 0.0, config.max_steps, eta, rule)
            stop = _ten_percent_step(grpo["entropy"], config.max_steps)
            h_grpo = grpo["entropy"][stop]
            for k in config.theorem_ratios:
                row = {"eps": eps, "rule": rule, "k": k, "stop_step": stop}
                for score in ("natural", "vanilla"):
                    curves = expected_run(policy, rewards, "kl_cov", k, stop, eta, rule,
                                          score=score)  # fmt: skip
                    _log_curves(context, f"theorem/eps{index}/{rule}/k{k:g}/{score}", curves)
                    h = curves["entropy"][-1]
                    row[score] = {
                        "entropy_ratio": h / h_grpo,
                        "held_per_touched": (h - h_grpo) / float(np.mean(curves["removed"][:-1])),
                        "reward_gain": curves["reward"][-1] - grpo["reward"][stop],
                    }
                results.append(row)
    columns = ["eps", "update", "k (= weight touched)", "GRPO 10% step",
               "H / GRPO, Thm 2 Cov(lp, A)", "H / GRPO, Thm 1 Cov(lp, pi A)",
               "held per touched, Thm 2", "held per touched, Thm 1",
               "dR Thm 2", "dR Thm 1"]  # fmt: skip
    rows = [
        [f"{r['eps']:g}", r["rule"], f"{r['k']:g}", r["stop_step"],
         f"{r['natural']['entropy_ratio']:.3f}", f"{r['vanilla']['entropy_ratio']:.3f}",
         f"{r['natural']['held_per_touched']:.3f}", f"{r['vanilla']['held_per_touched']:.3f}",
         f"{r['natural']['reward_gain']:+.4f}", f"{r['vanilla']['reward_gain']:+.4f}"]
        for r in results
    ]  # fmt: skip
    title = ("KL-Cov (strong-penalty limit) selecting by Theorem 2 vs Theorem 1, equal k, exact; "
             "held per touched = (H - H_GRPO) / k, nats per unit of token weight")  # fmt: skip
    return {"results": results, "table": {"title": title, "columns": columns, "rows": rows}}


def theorem_claims(theorem: dict, eps: float) -> list[Claim]:
    """At the middle k of the heaviest-tail profile: each update rule prefers its own theorem."""
    rows = [r for r in theorem["results"] if r["eps"] == eps]
    ks = sorted({r["k"] for r in rows})
    k = ks[len(ks) // 2]
    claims = []
    cases = (("npg", "natural", "vanilla", "npg_prefers_theorem2"),
             ("pg", "vanilla", "natural", "pg_prefers_theorem1"))  # fmt: skip
    for rule, mine, other, slug in cases:
        row = next(r for r in rows if r["rule"] == rule and r["k"] == k)
        claims.append(greater_than(
            f"questions.theorem.{slug}",
            f"{rule} updates: entropy kept by selecting with the {mine} covariance over the "
            f"{other} one, same k = {k:g} (exact prefix policy, eps {eps:g})",
            row[mine]["entropy_ratio"] / row[other]["entropy_ratio"], 1.0))  # fmt: skip
    return claims


# ----- anneal -------------------------------------------------------------------------------


def _anneal_methods(config: QuestionsConfig) -> list[tuple[str, dict]]:
    """(name, expected_run keyword arguments) of every method of the anneal part."""
    half = config.anneal_steps / 2

    def linear(step: int) -> float:
        return max(0.0, 1.0 - step / half)

    methods = [("grpo", {"selection": "none", "ratio": 0.0})]
    for k in config.anneal_ratios:
        methods.append((f"kl-cov-{k:g}", {"selection": "kl_cov", "ratio": k}))
        methods.append((f"kl-cov-{k:g}-annealed",
                        {"selection": "kl_cov", "ratio": k, "ratio_schedule": linear}))  # fmt: skip
    for coeff in config.entropy_coeffs:
        methods.append((f"entropy-{coeff:g}",
                        {"selection": "none", "ratio": 0.0, "entropy_coeff": coeff}))  # fmt: skip
    return methods


def anneal_part(config: QuestionsConfig, context: RunContext) -> dict:
    """Distance to the unregularised optimum after ``anneal_steps`` steps, both advantages."""
    eps = config.distractor_masses[0]
    policy, rewards = _profile(config, eps)
    T = config.anneal_steps
    results = []
    for advantage in ("grpo", "dr_grpo"):
        grpo_entropy = None
        for name, kwargs in _anneal_methods(config):
            kwargs = dict(kwargs)
            selection, ratio = kwargs.pop("selection"), kwargs.pop("ratio")
            curves = expected_run(
                policy, rewards, selection, ratio, T, config.anneal_step_size,
                advantage=advantage, record=lambda p: {"distance": optimum_distance(p, rewards)},
                **kwargs,
            )  # fmt: skip
            _log_curves(context, f"anneal/{advantage}/{name}", curves)
            if grpo_entropy is None:
                grpo_entropy = curves["entropy"]
            stop = _ten_percent_step(grpo_entropy, T)
            results.append({
                "advantage": advantage, "method": name, "grpo_10pct_step": stop,
                "entropy_at_grpo_10pct": curves["entropy"][stop],
                "entropy_final": curves["entropy"][-1],
                "distance_half": curves["distance"][T // 2],
                "distance_final": curves["distance"][-1],
                "reward_final": curves["reward"][-1],
                "distance_curve": curves["distance"],
            })  # fmt: skip
    columns = ["advantages", "method", "H at GRPO's 10% step", "H at T",
               "distance at T/2 (nats)", "distance at T (nats)",
               "expected reward at T"]  # fmt: skip
    rows = [
        [r["advantage"], r["method"], f"{r['entropy_at_grpo_10pct']:.4f}",
         f"{r['entropy_final']:.2e}", f"{r['distance_half']:.2e}", f"{r['distance_final']:.2e}",
         f"{r['reward_final']:.4f}"]
        for r in results
    ]  # fmt: skip
    title = (f"Distance KL(pi* || pi) = -mean log P(correct) to the unregularised optimum, exact, "
             f"eps {eps:g}, T = {T} npg steps of {config.anneal_step_size:g}; annealed k: linear "
             f"to 0 at T/2")  # fmt: skip
    return {"eps": eps, "steps": T, "results": results,
            "table": {"title": title, "columns": columns, "rows": rows}}  # fmt: skip


def anneal_claims(anneal: dict, config: QuestionsConfig) -> list[Claim]:
    def final(advantage: str, method: str) -> dict | None:
        return next((r for r in anneal["results"]
                     if r["advantage"] == advantage and r["method"] == method), None)  # fmt: skip

    T = anneal["steps"]
    claims = []
    k = config.anneal_ratios[0]
    annealed = final("dr_grpo", f"kl-cov-{k:g}-annealed")
    constant = final("dr_grpo", f"kl-cov-{k:g}")
    if annealed is not None:
        claims.append(less_than(
            "questions.anneal.annealed_kl_cov_reaches_optimum",
            f"Dr. GRPO advantages: distance to the optimum after T = {T} steps, KL-Cov k = {k:g} "
            f"annealed to 0 at T/2 (nats)", annealed["distance_final"], 1e-3))  # fmt: skip
    if annealed is not None and constant is not None:
        claims.append(greater_than(
            "questions.anneal.constant_k_ends_farther_than_annealed",
            f"Dr. GRPO advantages: distance at T = {T}, constant k = {k:g} minus annealed (nats)",
            constant["distance_final"] - annealed["distance_final"], 0.0))  # fmt: skip
    middle = sorted(config.entropy_coeffs)[len(config.entropy_coeffs) // 2]
    bonus = final("dr_grpo", f"entropy-{middle:g}")
    if bonus is not None:
        change = abs(bonus["distance_final"] - bonus["distance_half"]) / bonus["distance_final"]
        claims.append(less_than(
            "questions.anneal.entropy_bonus_settles_off_the_optimum",
            f"Dr. GRPO advantages, entropy bonus {middle:g}: relative change of the distance "
            f"to the optimum from T/2 to T (a fixed point away from it; distance at T "
            f"{bonus['distance_final']:.2e} nats)", change, 0.01))  # fmt: skip
    if bonus is not None and annealed is not None:
        claims.append(greater_than(
            "questions.anneal.entropy_bonus_ends_farther_than_annealed",
            f"Dr. GRPO advantages: distance at T = {T}, entropy bonus {middle:g} minus KL-Cov "
            f"k = {k:g} annealed (nats)",
            bonus["distance_final"] - annealed["distance_final"], 0.0))  # fmt: skip
    bonus_grpo = final("grpo", f"entropy-{middle:g}")
    if bonus_grpo is not None:
        claims.append(less_than(
            "questions.anneal.std_normalised_bonus_keeps_no_bias",
            f"GRPO (std-normalised) advantages, entropy bonus {middle:g}: distance to the "
            f"optimum at T = {T} (nats)", bonus_grpo["distance_final"], 1e-6))  # fmt: skip
    return claims


# ----- local --------------------------------------------------------------------------------


@torch.no_grad()
def sampled_token_batch(
    policy: PrefixPolicy,
    rewards: torch.Tensor,
    num_prompts: int,
    group_size: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A GRPO token batch sampled from the exact policy, all-equal groups removed.

    ``num_prompts`` prompts are drawn uniformly from the policy's P (with replacement), each
    answered ``group_size`` times. Returns ``log_probs``, ``advantages`` (GRPO, per response,
    broadcast over its tokens) and ``response_mask``, all ``(B, L)``, B = kept groups x G.
    """
    prompts = torch.randint(policy.num_prompts, (num_prompts,), generator=generator)
    prompts = prompts.repeat_interleave(group_size)  # (N*G,)
    responses, mask, log_probs = policy.sample(prompts, generator, return_log_probs=True)
    sampled = _sampled_rewards(policy, rewards, prompts, responses, mask).view(-1, group_size)
    keep = filter_uniform_groups(sampled).repeat_interleave(group_size)  # (N*G,)
    advantages = compute_advantages("grpo", sampled).reshape(-1)  # (N*G,)
    token_advantages = advantages[:, None] * mask  # (N*G, L)
    return log_probs[keep], token_advantages[keep], mask[keep]


def local_part(config: QuestionsConfig, context: RunContext) -> dict:
    """Per-micro-batch / per-rank selection against the global one, over sampled batches."""
    eps = config.distractor_masses[0]
    policy, rewards = fork_profile(config.local_prompts, config.vocab_size, config.length,
                                   config.forks, eps, config.fork_correct, seed=0)  # fmt: skip
    rules = [(f"kl-cov {k:g}", PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=k))
             for k in config.local_kl_cov_ratios]  # fmt: skip
    clip = PolicyLossConfig(loss_mode="clip_cov", clip_cov_ratio=config.local_clip_cov_ratio)
    rules.append((f"clip-cov {config.local_clip_cov_ratio:g}", clip))
    splits = [(r, m) for r in config.local_ranks for m in config.local_micro_batches]
    values: dict[tuple, dict[str, list[float]]] = {}
    tokens = []
    for seed_index in range(config.num_seeds):
        seed = context.seed + seed_index
        generator = torch.Generator().manual_seed(seed)
        lp, adv, mask = sampled_token_batch(policy, rewards, config.local_prompts,
                                            config.group_size, generator)  # fmt: skip
        tokens.append(int(mask.sum()))
        for name, loss_config in rules:
            draw = torch.Generator().manual_seed(10_000 + seed)
            reference = local_selection(loss_config, lp, lp, adv, mask, generator=draw)
            candidates = band_candidates(lp, adv, mask, loss_config.clip_cov_lb,
                                         loss_config.clip_cov_ub)  # fmt: skip
            for ranks, micro in splits:
                selected = local_selection(loss_config, lp, lp, adv, mask, ranks, micro, draw)
                stats = {"global_count": float(reference.sum()),
                         "count_ratio": float(selected.sum() / reference.sum())}  # fmt: skip
                if loss_config.loss_mode == "kl_cov":  # a random draw has no set to recover
                    stats |= selection_agreement(selected, reference)
                else:
                    local_band = band_candidates(lp, adv, mask, loss_config.clip_cov_lb,
                                                 loss_config.clip_cov_ub, ranks, micro)  # fmt: skip
                    stats["candidate_jaccard"] = selection_agreement(local_band, candidates)[
                        "jaccard"
                    ]
                for key, value in stats.items():
                    values.setdefault((name, ranks, micro), {}).setdefault(key, []).append(value)
    cells = []
    for (name, ranks, micro), stats in values.items():
        cell = {"rule": name, "ranks": ranks, "micro_batches": micro}
        for key, samples in stats.items():
            mean, half = confidence_interval(samples)
            cell[key] = {"mean": mean, "ci95": half}
        cells.append(cell)
    columns = ["rule", "ranks", "micro-batches per rank", "global count", "count ratio",
               "Jaccard with global", "recall of global", "candidate-band Jaccard"]  # fmt: skip

    def ci(stat: dict | None, digits: int = 3) -> str:
        if stat is None:
            return "-"
        if not math.isfinite(stat["ci95"]):
            return f"{stat['mean']:.{digits}f}"
        return f"{stat['mean']:.{digits}f} ± {stat['ci95']:.{digits}f}"

    rows = [
        [c["rule"], c["ranks"], c["micro_batches"], ci(c["global_count"], 1),
         ci(c["count_ratio"], 2), ci(c.get("jaccard")), ci(c.get("recall")),
         ci(c.get("candidate_jaccard"))]
        for c in cells
    ]  # fmt: skip
    title = (f"Selection per chunk vs global, {config.num_seeds} sampled batches of "
             f"{config.local_prompts} x {config.group_size} responses "
             f"({min(tokens)}-{max(tokens)} valid tokens), eps {eps:g}; mean ± 95% interval. "
             f"Clip-Cov draws at random, so only its count and its candidate band are "
             f"compared")  # fmt: skip
    return {"eps": eps, "tokens": tokens, "cells": cells,
            "table": {"title": title, "columns": columns, "rows": rows}}  # fmt: skip


def local_claims(local: dict, config: QuestionsConfig) -> list[Claim]:
    def cell(rule: str, ranks: int, micro: int) -> dict | None:
        return next((c for c in local["cells"] if (c["rule"], c["ranks"], c["micro_batches"])
                     == (rule, ranks, micro)), None)  # fmt: skip

    claims = []
    micro = max(config.local_micro_batches)
    k_small, k_large = min(config.local_kl_cov_ratios), max(config.local_kl_cov_ratios)
    small = cell(f"kl-cov {k_small:g}", 1, micro)
    if small is not None:
        claims.append(between(
            "questions.local.kl_cov_micro_batches_keep_the_count",
            f"KL-Cov k = {k_small:g}, {micro} micro-batches on one rank: selected count over "
            f"the global count (seed mean)", small["count_ratio"]["mean"], 0.9, 1.1))  # fmt: skip
    large = cell(f"kl-cov {k_large:g}", max(config.local_ranks), micro)
    if large is not None:
        claims.append(greater_than(
            "questions.local.kl_cov_local_recovers_global_set",
            f"KL-Cov k = {k_large:g}, {max(config.local_ranks)} ranks x {micro} micro-batches: "
            f"recall of the global selected set (seed mean)",
            large["recall"]["mean"], 0.9))  # fmt: skip
    return claims


# ----- units --------------------------------------------------------------------------------


def units_part(config: QuestionsConfig) -> dict:
    rows = units_rows(config.units_tokens)
    columns = ["setting", "codebase", "knob", "value", "read as", "KL coef",
               f"tokens selected of {config.units_tokens:,}", "fraction"]  # fmt: skip
    table_rows = [
        [r["setting"], r["codebase"], f"`{r['knob']}`", f"{r['value']:g}", r["unit"],
         "-" if r["kl_coef"] is None else f"{r['kl_coef']:g}", f"{r['selected']:,}",
         f"{r['selected_fraction']:g}"]
        for r in rows
    ]  # fmt: skip
    title = "One knob, four codebases: tokens selected"
    return {"rows": rows, "table": {"title": title, "columns": columns, "rows": table_rows}}


def units_claims(units: dict) -> list[Claim]:
    def count(setting: str, codebase: str) -> int:
        return next(r["selected"] for r in units["rows"]
                    if r["setting"] == setting and r["codebase"] == codebase)  # fmt: skip

    return [between(
        "questions.units.defaults_select_alike",
        "SkyRL's default kl_cov_frac over the paper's default k_percent: ratio of tokens "
        "selected", count("default", "skyrl") / count("default", "paper"), 0.5, 2.0)]  # fmt: skip


# ----- the experiment -----------------------------------------------------------------------


def _figure(parts: dict, out_dir) -> object | None:
    panels = [p for p in ("band", "anneal", "local") if p in parts]
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for axis, part in zip(axes[0], panels):
        if part == "band":
            profile = parts["band"]["profiles"][0]
            axis.plot(profile["grpo_curve"], color="black", label="GRPO")
            for cell in profile["cells"]:
                if cell["lower"] == 1.0 and cell["upper"] in (5.0, INF):
                    style = "-" if cell["candidates"] == "random" else "--"
                    axis.plot(cell["curve"], linestyle=style,
                              label=f"{_band_name(cell['lower'], cell['upper'])} "
                                    f"{cell['candidates']}")  # fmt: skip
            axis.axvline(profile["stop_step"], color="grey", linewidth=0.5)
            axis.set_yscale("log")
            axis.set_title(f"Clip-Cov band, eps {profile['eps']:g}", fontsize=9)
            axis.set_xlabel("expected update")
            axis.set_ylabel("H(pi, D) (nats)")
        elif part == "anneal":
            for r in parts["anneal"]["results"]:
                if r["advantage"] == "dr_grpo":
                    axis.plot(np.maximum(r["distance_curve"], 1e-12), label=r["method"])
            axis.set_yscale("log")
            axis.set_title("distance to the optimum (Dr. GRPO advantages)", fontsize=9)
            axis.set_xlabel("expected update")
            axis.set_ylabel("KL(pi* || pi) (nats)")
        else:
            for rule in sorted({c["rule"] for c in parts["local"]["cells"]}):
                cells = [c for c in parts["local"]["cells"] if c["rule"] == rule]
                chunks = [c["ranks"] * c["micro_batches"] for c in cells]
                order = np.argsort(chunks, kind="stable")
                axis.plot(np.asarray(chunks)[order],
                          np.asarray([c["count_ratio"]["mean"] for c in cells])[order],
                          marker="o", label=f"{rule}: count ratio")  # fmt: skip
                if rule.startswith("kl-cov"):
                    axis.plot(np.asarray(chunks)[order],
                              np.asarray([c["recall"]["mean"] for c in cells])[order],
                              marker="s", linestyle="--", label=f"{rule}: recall")  # fmt: skip
            axis.set_xscale("log", base=2)
            axis.set_title("per-chunk vs global selection", fontsize=9)
            axis.set_xlabel("chunks = ranks x micro-batches")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out_dir / "questions.png", dpi=80)
    return figure


def _strip(value):
    """The headline without per-step curves (they are in the sub-runs' metrics.jsonl)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.endswith("curve")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


@experiment(
    "questions",
    "numbers for users' Clip-Cov / KL-Cov questions: band and top-k vs random, Theorem 1 vs 2 "
    "selection, annealed KL-Cov vs entropy bonus, per-micro-batch selection, units",
    QuestionsConfig,
    quick={
        "distractor_masses": (1e-3,),
        "theorem_ratios": (2e-4, 2e-3),
        "anneal_steps": 200,
        "anneal_ratios": (2e-3,),
        "entropy_coeffs": (0.1,),
        "local_prompts": 64,
        "local_ranks": (1, 2),
        "local_micro_batches": (1, 8),
        "num_seeds": 3,
    },
)
def run(config: QuestionsConfig, context: RunContext) -> ExperimentResult:
    parts: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    claims: list[Claim] = []
    steps = {
        "band": lambda: band_part(config, context),
        "theorem": lambda: theorem_part(config, context),
        "anneal": lambda: anneal_part(config, context),
        "local": lambda: local_part(config, context),
        "units": lambda: units_part(config),
    }
    for part in context.progress(config.parts, total=len(config.parts), desc="parts"):
        started = time.perf_counter()
        parts[part] = steps[part]()
        seconds[part] = time.perf_counter() - started
    if "band" in parts:
        claims += band_claims(parts["band"], config.band_ratio)
    if "theorem" in parts:
        claims += theorem_claims(parts["theorem"], config.distractor_masses[0])
    if "anneal" in parts:
        claims += anneal_claims(parts["anneal"], config)
    if "local" in parts:
        claims += local_claims(parts["local"], config)
    if "units" in parts:
        claims += units_claims(parts["units"])
    writer = context.writer()
    tables = []
    for part, result in parts.items():
        table = result["table"]
        text = markdown_table(table["columns"], table["rows"])
        print(f"\n{table['title']}\n{text}")
        writer.add_text(f"questions/{part}", text)
        tables.append(table)
    figure = _figure(parts, context.out_dir)
    if figure is not None:
        writer.add_figure("questions/answers", figure)
    headline = {"parts": _strip({k: {key: v for key, v in r.items() if key != "table"}
                                 for k, r in parts.items()}),
                "tables": tables, "seconds": seconds}  # fmt: skip
    return ExperimentResult(headline, claims)
