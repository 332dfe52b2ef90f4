"""The questions experiment and its knobs: top-k vs random Clip-Cov candidates, the Theorem-1
covariance, the entropy bonus and annealing of the exact update, emulated local selection and
the units of each codebase, on hand-made inputs with known answers."""

import json
import math

import pytest
import torch

from toy_entropy.algorithms.exact_selection import (
    TokenTable,
    entropy_bonus_update,
    expected_run,
    keep_fraction,
    optimum_distance,
    token_table,
    with_score,
)
from toy_entropy.algorithms.local_selection import (
    band_candidates,
    local_selection,
    row_chunks,
    selection_agreement,
)
from toy_entropy.algorithms.losses.config import PolicyLossConfig
from toy_entropy.algorithms.losses.diagnostics import count_of_fraction
from toy_entropy.experiments.cli import main
from toy_entropy.experiments.cure_exact import fork_profile
from toy_entropy.experiments.questions import sampled_token_batch
from toy_entropy.models.prefix_policy import PrefixPolicy
from toy_entropy.runs.metrics_table import find_metric
from toy_entropy.theory.units import KNOBS, selected_count, units_rows


def _table(weight, cov, log_prob=None, advantage=None) -> TokenTable:
    weight = torch.tensor(weight, dtype=torch.float64)
    zeros = torch.zeros_like(weight)
    as_tensor = lambda x: zeros if x is None else torch.tensor(x, dtype=torch.float64)  # noqa: E731
    return TokenTable(torch.arange(len(weight)), weight, as_tensor(log_prob),
                      as_tensor(advantage), torch.tensor(cov, dtype=torch.float64))  # fmt: skip


# ----- Clip-Cov candidates and bands --------------------------------------------------------


def test_top_k_candidates_remove_the_largest_covariance_first():
    table = _table([0.1, 0.2, 0.3, 0.4], [6.0, 3.0, 2.0, 0.5])  # band (1, 5): atoms 1 and 2
    top = keep_fraction(table, "clip_cov", 0.1, candidates="top")  # half of atom 1's 0.2
    assert top.tolist() == pytest.approx([1.0, 0.5, 1.0, 1.0])
    top = keep_fraction(table, "clip_cov", 0.25, candidates="top")  # atom 1, then 0.05 of 0.3
    assert top.tolist() == pytest.approx([1.0, 0.0, 5 / 6, 1.0])
    # Random spreads the same removed weight over both candidates: 0.1 / 0.5 each.
    assert keep_fraction(table, "clip_cov", 0.1).tolist() == pytest.approx([1, 0.8, 0.8, 1])
    # More than the candidates hold: all of them, with either rule.
    for rule in ("random", "top"):
        kept = keep_fraction(table, "clip_cov", 0.9, candidates=rule)
        assert kept.tolist() == pytest.approx([1.0, 0.0, 0.0, 1.0])


def test_unbounded_bands():
    table = _table([0.1, 0.2, 0.3, 0.4], [6.0, 3.0, 2.0, 0.5])
    # No upper bound: atom 0 (cov 6) is a candidate and goes first under top-k.
    kept = keep_fraction(table, "clip_cov", 0.15, 1.0, math.inf, candidates="top")
    assert kept.tolist() == pytest.approx([0.0, 0.75, 1.0, 1.0])
    # No bound at all: every atom is a candidate, random removes 0.1 of each.
    kept = keep_fraction(table, "clip_cov", 0.1, -math.inf, math.inf)
    assert kept.tolist() == pytest.approx([0.9] * 4)
    # Top-k with no band at all is KL-Cov's selection.
    top = keep_fraction(table, "clip_cov", 0.25, -math.inf, math.inf, candidates="top")
    assert torch.equal(top, keep_fraction(table, "kl_cov", 0.25))
    with pytest.raises(ValueError, match="candidates"):
        keep_fraction(table, "clip_cov", 0.1, candidates="largest")
    with pytest.raises(ValueError, match="lower < upper"):
        keep_fraction(table, "clip_cov", 0.1, 5.0, 1.0)


# ----- Theorem 1 covariance -----------------------------------------------------------------


def test_theorem1_score_is_the_covariance_of_log_prob_with_pi_times_advantage():
    lp = [math.log(0.5), math.log(0.25)]
    table = _table([0.5, 0.5], [0.0, 0.0], log_prob=lp, advantage=[1.0, -1.0])
    vanilla = with_score(table, "vanilla")
    # E lp = (log .5 + log .25) / 2, so lp - E lp = +-log(2) / 2; p A = (0.5, -0.25), mean
    # 0.125, so p A - mean = (0.375, -0.375).
    expected = math.log(2) / 2 * 0.375
    assert vanilla.cov.tolist() == pytest.approx([expected, expected])
    assert with_score(table, "natural") is table
    with pytest.raises(ValueError, match="score"):
        with_score(table, "fisher")


def test_each_update_rule_keeps_most_entropy_when_selecting_by_its_own_theorem():
    policy, rewards = fork_profile(4, 4, 5, 1, 1e-3, 0.6, seed=0)
    ratios = {}
    for rule, eta in (("npg", 0.1), ("pg", 10.0)):
        final = {
            score: expected_run(policy, rewards, "kl_cov", 2e-3, 13, eta, rule, score=score)[
                "entropy"
            ][-1]
            for score in ("natural", "vanilla")
        }
        ratios[rule] = final["natural"] / final["vanilla"]
    assert ratios["npg"] > 1.0 > ratios["pg"]


# ----- entropy bonus, annealing, distance ---------------------------------------------------


def test_entropy_bonus_is_the_gradient_of_the_visited_entropy():
    policy, rewards = fork_profile(2, 3, 3, 1, 0.05, 0.6, seed=1)
    table = token_table(policy, rewards)
    P, S, V = policy.logits.shape
    state_weight = torch.zeros(P * S, dtype=torch.float64).index_add_(
        0, table.atom // V, table.weight
    )  # (P*S,)
    logits = policy.logits.detach().clone().requires_grad_()
    log_pi = torch.log_softmax(logits, dim=-1)
    entropy = -(log_pi.exp() * log_pi).sum(-1).reshape(-1)  # (P*S,)
    (grad,) = torch.autograd.grad((state_weight * entropy).sum(), logits)
    pg = entropy_bonus_update(policy, table, step_size=2.0, coeff=0.5, rule="pg")
    assert torch.allclose(pg, grad, atol=1e-12)  # eta * coeff = 1
    # The natural step solves D(s) (diag pi - pi pi^T) x = gradient at every visited state.
    npg = entropy_bonus_update(policy, table, step_size=2.0, coeff=0.5, rule="npg")
    pi = log_pi.detach().exp()  # (P, S, V)
    fisher_x = pi * (npg - (pi * npg).sum(-1, keepdim=True))  # (P, S, V)
    assert torch.allclose(state_weight.view(P, S, 1) * fisher_x, grad, atol=1e-12)


def test_optimum_distance_of_a_uniform_policy():
    policy = PrefixPolicy(num_prompts=1, vocab_size=2, max_length=1)  # responses: EOS, token 1
    rewards = torch.tensor([[0.0, 1.0]])
    assert optimum_distance(policy, rewards) == pytest.approx(math.log(2))
    with torch.no_grad():
        policy.logits[0, 0] = torch.tensor([-50.0, 50.0])
    assert optimum_distance(policy, rewards) == 0.0


def test_annealing_to_zero_and_entropy_bonus_in_expected_run():
    policy, rewards = fork_profile(2, 4, 3, 1, 1e-2, 0.6, seed=0)
    grpo = expected_run(policy, rewards, "none", 0.0, 5, 0.1)
    off = expected_run(policy, rewards, "kl_cov", 2e-3, 5, 0.1, ratio_schedule=lambda t: 0.0)
    assert off["entropy"] == pytest.approx(grpo["entropy"])
    assert off["removed"] == [0.0] * 6
    halves = expected_run(policy, rewards, "kl_cov", 2e-3, 5, 0.1, ratio_schedule=lambda t: 0.5)
    assert halves["removed"][:5] == pytest.approx([1e-3] * 5)
    bonus = expected_run(policy, rewards, "none", 0.0, 5, 0.1, entropy_coeff=0.2,
                         record=lambda p: {"distance": optimum_distance(p, rewards)})  # fmt: skip
    assert bonus["entropy"][-1] > grpo["entropy"][-1]
    assert len(bonus["distance"]) == 6
    assert bonus["distance"][0] == pytest.approx(optimum_distance(policy, rewards))


# ----- emulated local selection -------------------------------------------------------------


def _hand_batch():
    """Row 0: a failed response (A = -1) with one rare token (lp -4); row 1: a solved one.

    Global means: lp -0.5, A 0, so cov = (-0.5, -0.5, -0.5, 3.5 | 0.5, 0.5, 0.5, 0.5). Within
    either row alone the advantage is constant, so every chunk-centred covariance is 0.
    """
    lp = torch.tensor([[0.0, 0.0, 0.0, -4.0], [0.0, 0.0, 0.0, 0.0]])
    adv = torch.tensor([[-1.0] * 4, [1.0] * 4])
    return lp, adv, torch.ones(2, 4, dtype=torch.bool)


def test_per_micro_batch_kl_cov_on_a_hand_made_batch():
    lp, adv, mask = _hand_batch()
    config = PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.25)  # n = 2 of 8, 1 of 4
    reference = local_selection(config, lp, lp, adv, mask)
    # The rare token (cov 3.5), then the first of the tied 0.5s (lowest index).
    assert reference.nonzero().tolist() == [[0, 3], [1, 0]]
    local = local_selection(config, lp, lp, adv, mask, micro_batches=2)
    assert local.nonzero().tolist() == [[0, 0], [1, 0]]  # all zeros: the first token of each
    assert torch.equal(local, local_selection(config, lp, lp, adv, mask, ranks=2))
    agreement = selection_agreement(local, reference)
    assert agreement == pytest.approx({"count_ratio": 1.0, "jaccard": 1 / 3, "recall": 0.5})
    # Clip-Cov's band (1, 5) holds the rare token globally and nothing per row.
    assert band_candidates(lp, adv, mask, 1.0, 5.0).nonzero().tolist() == [[0, 3]]
    assert not band_candidates(lp, adv, mask, 1.0, 5.0, micro_batches=2).any()


def test_floor_of_one_token_per_chunk():
    lp, adv, mask = _hand_batch()
    config = PolicyLossConfig(loss_mode="clip_cov", clip_cov_ratio=0.01, clip_cov_lb=-10.0)
    draw = torch.Generator().manual_seed(0)
    assert int(local_selection(config, lp, lp, adv, mask, generator=draw).sum()) == 1
    assert int(local_selection(config, lp, lp, adv, mask, 2, 1, draw).sum()) == 2


def test_row_chunks_and_agreement_edge_cases():
    assert [c.tolist() for c in row_chunks(8, 2, 2)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [c.tolist() for c in row_chunks(5, 2)] == [[0, 1, 2], [3, 4]]
    with pytest.raises(ValueError, match="cannot fill"):
        row_chunks(3, 2, 2)
    with pytest.raises(ValueError, match="ranks"):
        row_chunks(3, 0)
    empty = torch.zeros(3, dtype=torch.bool)
    assert all(math.isnan(v) for v in selection_agreement(empty, empty).values())
    with pytest.raises(ValueError, match="shapes"):
        selection_agreement(empty, torch.zeros(4, dtype=torch.bool))


def test_sampled_token_batch_drops_uniform_groups():
    policy, rewards = fork_profile(8, 4, 5, 1, 1e-2, 0.6, seed=0)
    lp, adv, mask = sampled_token_batch(policy, rewards, 16, 4, torch.Generator().manual_seed(2))
    assert lp.shape == adv.shape == mask.shape and lp.shape[0] % 4 == 0 and lp.shape[1] == 5
    first = adv[:, 0].view(-1, 4)  # (groups, G): each kept group has a non-constant reward
    assert bool((first.amax(1) > first.amin(1)).all())
    assert first.sum(1).abs().max().item() < 1e-5  # GRPO advantages are zero-mean
    assert bool((lp[mask] < 0).all()) and bool((lp[~mask] == 0).all())


# ----- units --------------------------------------------------------------------------------


def test_units_of_each_codebase_at_1e5_tokens():
    assert selected_count("percent", 0.2, 100_000) == 200  # the paper's k_percent = 0.2
    assert selected_count("fraction", 2e-4, 100_000) == 20  # verl's default kl_cov_ratio
    assert selected_count("fraction", 0.2, 100_000) == 20_000  # SkyRL's default kl_cov_frac
    assert selected_count("percent", 2e-3, 100_000) == 2  # a fraction typed into k_percent
    assert selected_count("fraction", 1e-6, 100_000) == 1  # the floor of one token
    with pytest.raises(ValueError, match="unit"):
        selected_count("permille", 0.2, 100)
    rows = {(r["setting"], r["codebase"]): r for r in units_rows(100_000)}
    assert rows[("default", "skyrl")]["selected"] == 100 * rows[("default", "paper")]["selected"]
    assert {r["selected"] for s, r in rows.items() if s[0].startswith("paper 7B")} == {200}
    # This project's count rule is the fraction rule.
    for knob in KNOBS:
        if knob.codebase == "here":
            n = count_of_fraction(knob.value, torch.tensor(100_000.0))
            assert int(n) == selected_count("fraction", knob.value, 100_000)


# ----- end to end ---------------------------------------------------------------------------


def test_questions_run_end_to_end(tmp_path):
    out = tmp_path / "run"
    overrides = [
        "parts=band,local,units", "distractor_masses=0.001", "band_lower=1.0",
        "band_upper=5.0,inf", "local_prompts=32", "num_seeds=2", "local_ranks=1",
        "local_micro_batches=1,8", "local_kl_cov_ratios=0.0002",
    ]  # fmt: skip
    argv = ["run", "questions", "--quiet", "--out", str(out)]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    claims = {c["id"]: c for c in summary["claims"]}
    assert claims["questions.units.defaults_select_alike"]["measured"] == 100.0
    assert not claims["questions.units.defaults_select_alike"]["holds"]
    # ~1,280 tokens: KL-Cov 2e-4 selects the floor of 1 globally and 1 in each of 8 chunks.
    micro = claims["questions.local.kl_cov_micro_batches_keep_the_count"]
    assert micro["measured"] == 8.0 and not micro["holds"]
    # The exact numbers of the heaviest-tail profile (eps 1e-3, r = 2e-4).
    band = claims["questions.band.upper_bound_costs_entropy"]
    assert band["measured"] == pytest.approx(1.117, abs=2e-3) and band["holds"]
    assert claims["questions.band.paper_band_keeps_5x_grpo"]["measured"] == pytest.approx(
        1.016, abs=2e-3
    )
    titles = [t["title"] for t in summary["headline"]["tables"]]
    assert len(titles) == 3 and titles[2].startswith("One knob")
    rows = [json.loads(line) for line in (out / "band/eps0/lb1_ub5_top/metrics.jsonl").open()]
    assert rows[0]["step"] == 0 and {"entropy", "reward", "exact/removed"} <= set(rows[0])
    assert all(find_metric(key) is not None for key in rows[0] if key != "step")
    assert (out / "questions.png").exists()
