"""predictors: a leaderboard of per-token predictors of the entropy change, against the exact one.

On the exact batch of a prefix policy (:func:`~toy_entropy.algorithms.exact_selection.token_table`:
GRPO advantages, token-mean weights, the all-equal filter) a "token" is a (prompt, state, action)
atom with token mass ``D`` (its share of the batch's tokens). The update is the tabular
natural gradient of the PPO surrogate of one rollout: ``dz(s, a) = eta * M(s, a) / D(s, a)``
with ``M = sum_i w_i A_i r_i keep_i`` over the atom's tokens (r the importance ratio, keep = 0
where PPO's clip at ``eps`` zeroes the gradient). The exact entropy change of a token is the
change of the token-mean dataset entropy H(pi, D) (state-distribution shift included) when only
that atom's logit moves by its ``dz``. Predictors, in nats:

- ``cov``: the paper's ``-eta * sum_i w_i cov_i``, ``cov_i = (lp_i - mean lp)(A_i - mean A)``
  with batch means (THEORY.md s.4); knows neither ratio nor clip;
- ``cov_clip``: the same with ``cov_i * r_i * keep_i`` (clipping-aware);
- ``s_star``: arXiv 2602.03392's ``S* = p (H + log p)``, the derivative -dH(s)/dz(s, a):
  ``-dz0 * S* * D_s`` with ``dz0 = eta * sum_i w_i A_i / D`` (no ratio, no clip) and ``D_s``
  the state's token mass (the state's weight in the token-mean entropy);
- ``s_star_clip``: the same with the real ``dz`` (clipping-aware): the exact first-order
  per-state change of the natural-gradient step.

Two phases: the first, on-policy update of a rollout (ratio 1, no clip acts: the aware and
unaware variants coincide) and update ``off_policy_update`` of the same rollout (after that
many - 1 clipped steps). Measured per predictor: Pearson correlation and sign agreement with
the exact change over the tokens (:func:`~toy_entropy.theory.curve_stats.agreement`), relative L1
error ``sum |pred - exact| / sum |exact|``, and the share of the total |dH| in the top
0.02% / 0.2% / 2% of the token mass that the predictor ranks highest (by |pred| per token);
and the same shares ranked by the exact change itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from toy_entropy.algorithms.exact_ppo import clip_config
from toy_entropy.algorithms.exact_selection import TokenTable, token_table, top_mass
from toy_entropy.algorithms.losses.ratio import ratio_terms
from toy_entropy.experiments.registry import ExperimentResult, RunContext, experiment
from toy_entropy.experiments.sample_polarity import PolarityConfig, polarity_task
from toy_entropy.models.prefix_policy import PrefixPolicy
from toy_entropy.runs.claims import Claim, greater_than
from toy_entropy.runs.report import markdown_table
from toy_entropy.theory.curve_stats import agreement, confidence_interval
from toy_entropy.training.config import check_positive_int, check_range

__all__ = ["PredictorsConfig", "token_predictions", "PREDICTORS", "TOP_FRACTIONS"]

PREDICTORS = ("cov", "cov_clip", "s_star", "s_star_clip")
TOP_FRACTIONS = (2e-4, 2e-3, 2e-2)


@dataclass
class PredictorsConfig:
    num_prompts: int = 8
    """P prompts of the task (as sample-polarity's: shared warm start, random correct set)"""
    vocab_size: int = 5
    """V, tokens (EOS included)"""
    length: int = 4
    """L, longest response"""
    num_correct: int = 3
    """correct responses per prompt"""
    step_size: float = 0.05
    """eta of the natural-gradient step"""
    eps: float = 0.2
    """PPO clip (low = high) of the rollout's updates"""
    off_policy_update: int = 4
    """the update of the rollout scored as the off-policy phase (>= 2)"""
    num_seeds: int = 5
    """tasks (seed, seed + 1, ...)"""

    def __post_init__(self) -> None:
        self.task()  # validates the task fields
        check_range("step_size", self.step_size, 0, low_inclusive=False)
        check_range("eps", self.eps, 0, 1, low_inclusive=False, high_inclusive=False)
        check_range("off_policy_update", self.off_policy_update, 2, 64)
        check_positive_int("num_seeds", self.num_seeds)

    def task(self) -> PolarityConfig:
        return PolarityConfig(
            num_prompts=self.num_prompts,
            vocab_size=self.vocab_size,
            length=self.length,
            num_correct=self.num_correct,
        )


def _atom_sums(table: TokenTable, size: int, *values: torch.Tensor) -> list[torch.Tensor]:
    """Per-atom sums ``(P*S*V,)`` of per-token ``values`` ``(n,)``."""
    return [torch.zeros(size, dtype=v.dtype).index_add_(0, table.atom, v) for v in values]


@torch.no_grad()
def _token_mean_entropy_parts(policy: PrefixPolicy, logits: torch.Tensor):
    """Per prompt ``(sum_s d(p, s) H(p, s), sum_s d(p, s))``, each ``(P,)``."""
    reach = policy.reach_probs(logits)  # (P, S)
    return (reach * policy.state_entropy(logits)).sum(1), reach.sum(1)


@torch.no_grad()
def token_predictions(
    policy: PrefixPolicy, rewards: torch.Tensor, logits: torch.Tensor, eps: float, step_size: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every predictor, the exact change and the token masses at the current ``logits``.

    Args:
        policy: the rollout policy (its logits made the batch).
        rewards: ``(P, R)``.
        logits: ``(P, S, V)`` the current policy (the rollout's own for the on-policy phase).
        eps: PPO's clip.
        step_size: eta.

    Returns:
        ``(predictions, exact, mass, step)``: ``{name: (m,)}`` in nats, the ``(m,)`` exact
        token-mean entropy changes and ``(m,)`` token masses of the m atoms with tokens, and
        the full ``(P, S, V)`` natural-gradient step of the batch.
    """
    P, S, V = logits.shape
    size = P * S * V
    old = token_table(policy, rewards)
    now = token_table(policy, rewards, current_logits=logits)
    terms = ratio_terms(now.log_prob, old.log_prob, old.advantage, clip_config(eps, eps))
    keep = (terms.pg2 <= terms.pg1).to(old.weight.dtype)  # (n,) 0 where the clip acts
    w, adv, ratio = old.weight, old.advantage, terms.ratio
    mass, plain, aware, cov, cov_aware = _atom_sums(
        old, size, w, w * adv, w * adv * ratio * keep, w * now.cov, w * now.cov * ratio * keep
    )
    step = torch.where(mass > 0, step_size * aware / mass.clamp(min=1e-300), 0.0)  # (P*S*V,)
    step_plain = torch.where(mass > 0, step_size * plain / mass.clamp(min=1e-300), 0.0)
    atoms = (mass > 0).nonzero().squeeze(1)  # (m,)
    prompt, state, action = atoms // (S * V), (atoms // V) % S, atoms % V

    probs = torch.softmax(logits, dim=-1)  # (P, S, V)
    log_probs = torch.log_softmax(logits, dim=-1)
    entropy = policy.state_entropy(logits)  # (P, S)
    p_atom = probs[prompt, state, action]
    s_star = p_atom * (entropy[prompt, state] + log_probs[prompt, state, action])  # (m,)
    state_mass = mass.view(P, S, V).sum(-1)[prompt, state]  # (m,) D_s
    predictions = {
        "cov": -step_size * cov[atoms],
        "cov_clip": -step_size * cov_aware[atoms],
        "s_star": -step_plain[atoms] * s_star * state_mass,
        "s_star_clip": -step[atoms] * s_star * state_mass,
    }

    # Exact: each atom's own step applied alone; token-mean H over all prompts.
    numerators, denominators = _token_mean_entropy_parts(policy, logits)  # (P,), (P,)
    moved = logits[prompt].clone()  # (m, S, V)
    moved[torch.arange(atoms.numel()), state, action] += step[atoms]
    single = PrefixPolicy(atoms.numel(), policy.vocab_size, policy.max_length, policy.eos_id)
    new_num, new_den = _token_mean_entropy_parts(single, moved)  # (m,)
    before = numerators.sum() / denominators.sum()
    after = (numerators.sum() - numerators[prompt] + new_num) / (
        denominators.sum() - denominators[prompt] + new_den
    )
    return predictions, after - before, mass[atoms], step.view(P, S, V)


def _shares(key: torch.Tensor, exact: torch.Tensor, mass: torch.Tensor) -> dict[str, float]:
    """Share of sum |exact| in the top fractions of the token mass ranked by ``key`` / mass."""
    zeros = torch.zeros_like(mass)
    table = TokenTable(torch.arange(mass.numel()), mass, zeros, zeros, key.abs() / mass)
    total = exact.abs().sum()
    return {
        f"top_{100 * q:g}%": float((top_mass(table, q) * exact.abs()).sum() / total)
        for q in TOP_FRACTIONS
    }


def score(predictions: dict, exact: torch.Tensor, mass: torch.Tensor) -> dict[str, dict]:
    """The leaderboard metrics of every predictor (module docstring)."""
    scores = {}
    for name, predicted in predictions.items():
        fit = agreement(predicted.numpy(), exact.numpy())
        scores[name] = {
            "correlation": fit["correlation"],
            "sign_agreement": fit["sign_agreement"],
            "relative_error": float((predicted - exact).abs().sum() / exact.abs().sum()),
            "captured": _shares(predicted, exact, mass),
        }
    return scores


def seed_scores(config: PredictorsConfig, seed: int) -> dict[str, dict]:
    """Both phases of one task: ``{phase: {"scores": ..., "exact_shares": ..., "tokens": m}}``."""
    policy, rewards = polarity_task(config.task(), seed)
    logits = policy.logits.detach().clone()
    phases = {}
    for update in range(1, config.off_policy_update + 1):
        predictions, exact, mass, step = token_predictions(
            policy, rewards, logits, config.eps, config.step_size
        )
        if update in (1, config.off_policy_update):
            phase = "on_policy" if update == 1 else "off_policy"
            phases[phase] = {
                "scores": score(predictions, exact, mass),
                "exact_shares": _shares(exact, exact, mass),
                "tokens": int(mass.numel()),
                "entropy": float(policy.entropy(logits=logits)),
                "reward": float(policy.expected_reward(rewards, logits)),
                "total_exact_dH": float(exact.sum()),
            }
        logits = logits + step
    return phases


@experiment(
    "predictors",
    "leaderboard of per-token predictors of the entropy change (the paper's covariance, "
    "S* = p (H + log p), clipping-aware variants) against the exact change, on- and off-policy",
    PredictorsConfig,
    quick={"num_prompts": 4, "vocab_size": 4, "length": 3, "num_seeds": 2},
)
def run(config: PredictorsConfig, context: RunContext) -> ExperimentResult:
    started = time.perf_counter()
    seeds = [context.seed + i for i in range(config.num_seeds)]
    per_seed = [seed_scores(config, s) for s in context.progress(seeds, len(seeds), "seeds")]
    summary: dict[str, dict] = {}
    writer = context.writer()
    for phase in ("on_policy", "off_policy"):
        runs = [r[phase] for r in per_seed]
        board = {}
        for name in PREDICTORS:
            entry = {}
            for metric in ("correlation", "sign_agreement", "relative_error"):
                mean, ci = confidence_interval([r["scores"][name][metric] for r in runs])
                entry[metric] = {"mean": mean, "ci95": ci}
            for q in runs[0]["scores"][name]["captured"]:
                values = [r["scores"][name]["captured"][q] for r in runs]
                mean, ci = confidence_interval(values)
                entry[f"captured_{q}"] = {"mean": mean, "ci95": ci}
            board[name] = entry
        exact = {}
        for q in runs[0]["exact_shares"]:
            mean, ci = confidence_interval([r["exact_shares"][q] for r in runs])
            exact[q] = {"mean": mean, "ci95": ci}
        summary[phase] = {
            "predictors": board,
            "exact_shares": exact,
            "tokens": [r["tokens"] for r in runs],
        }
        step = 1 if phase == "on_policy" else config.off_policy_update
        row = {f"predictors/{n}_correlation": board[n]["correlation"]["mean"] for n in PREDICTORS}
        entropy, reward = (float(np.mean([r[k] for r in runs])) for k in ("entropy", "reward"))
        writer.log(step, {"entropy": entropy, "reward": reward, **row})
    tables = _tables(summary, config)
    text = "\n\n".join(f"{t['title']}\n{markdown_table(t['columns'], t['rows'])}" for t in tables)
    print("\n" + text)
    writer.add_text("predictors/leaderboard", text)
    headline = summary | {"tables": tables, "seconds": time.perf_counter() - started}
    return ExperimentResult(headline, _claims(summary))


def _fmt(entry: dict) -> str:
    return f"{entry['mean']:.3f} ± {entry['ci95']:.3f}"


def _tables(summary: dict, config: PredictorsConfig) -> list[dict]:
    tables = []
    for phase, title in (
        ("on_policy", "update 1 of the rollout (on-policy)"),
        ("off_policy", f"update {config.off_policy_update} of the rollout (eps {config.eps:g})"),
    ):
        board = summary[phase]["predictors"]
        columns = ["predictor", "correlation", "sign agreement", "relative L1 error",
                   "captured top 0.02%", "captured top 0.2%", "captured top 2%"]  # fmt: skip
        rows = [
            [name] + [_fmt(board[name][m]) for m in ("correlation", "sign_agreement",
             "relative_error", "captured_top_0.02%", "captured_top_0.2%", "captured_top_2%")]
            for name in PREDICTORS
        ]  # fmt: skip
        shares = summary[phase]["exact_shares"]
        rows.append(["(exact ranking)", "", "", ""] + [_fmt(shares[q]) for q in shares])
        tables.append({
            "title": f"{title}: mean ± 95% CI over {config.num_seeds} tasks",
            "columns": columns, "rows": rows,
        })  # fmt: skip
    return tables


def _claims(summary: dict) -> list[Claim]:
    on, off = summary["on_policy"], summary["off_policy"]
    return [
        greater_than(
            "predictors.s_star_clip.off_policy_correlation",
            "S* with the real (clipped) step: correlation with the exact change, off-policy",
            off["predictors"]["s_star_clip"]["correlation"]["mean"],
            0.9,
        ),
        greater_than(
            "predictors.cov.on_policy_sign_agreement",
            "the paper's token covariance: share of tokens whose entropy change it signs "
            "right, on-policy",
            on["predictors"]["cov"]["sign_agreement"]["mean"],
            0.9,
        ),
        greater_than(
            "predictors.clip_aware_helps_off_policy",
            "off-policy: correlation of S* with the clipped step minus S* without",
            off["predictors"]["s_star_clip"]["correlation"]["mean"]
            - off["predictors"]["s_star"]["correlation"]["mean"],
            0.0,
        ),
        greater_than(
            "predictors.top_2%_carry_half",
            "on-policy: share of the total |dH| carried by the top 2% of tokens",
            on["exact_shares"]["top_2%"]["mean"],
            0.5,
        ),
    ]
