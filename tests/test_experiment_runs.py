"""The sequence experiments end to end on tiny settings: run directories, claims, TensorBoard
layout and bands, the parallel sweep path, and the report written from a run."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from toy_entropy.experiments.cli import main

# Shared by every tiny run: the warm start of reverse at the trainer defaults (cached per test
# session), few steps, small batches.
TINY_COLLAPSE = [
    "tasks=reverse", "num_seeds=2", "train.total_steps=12", "train.num_prompts=4",
    "train.eval_every=6", "bandit_steps=24", "bandit_seeds=2", "workers=1",
]  # fmt: skip
TINY_METHODS = [
    "train.task=reverse", "train.warmstart.steps=300", "train.warmstart.noise=0.6",
    "methods=grpo,kl-cov-1e-2", "num_seeds=2", "train.total_steps=4", "train.num_prompts=4",
    "train.num_mini_batches=2", "train.eval_every=2", "train.eval_prompts=8", "workers=2",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TOY_ENTROPY_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _run(name, overrides, out):
    argv = ["run", name, "--quiet", "--out", str(out)]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 0
    return json.loads((out / "summary.json").read_text())


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def collapse_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("collapse") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TOY_ENTROPY_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        summary = _run("collapse", TINY_COLLAPSE, out)
    return out, summary


def test_collapse_run_directory_holds_the_numbers(collapse_run):
    out, summary = collapse_run
    settings = summary["headline"]["settings"]
    assert set(settings) == {"reverse", "bandit-best-likely-pg", "bandit-best-likely-npg",
                             "bandit-best-rare-pg", "bandit-best-rare-npg"}  # fmt: skip
    reverse = settings["reverse"]
    for curve in ("entropy_share", "reward_share"):
        for mark in ("1_12", "1_3"):
            share = reverse[curve][mark]
            assert set(share) == {"mean", "std", "pooled"}
            assert share["mean"] == share["mean"]  # finite, not NaN
    assert 0.0 <= reverse["cov_positive_frac"] <= 1.0
    assert set(reverse["cov_by_accuracy"]) == {"hard", "medium", "easy"}
    claims = {c["id"]: c for c in summary["claims"]}
    assert "collapse.reverse.entropy_share_by_1_12" in claims
    assert claims["collapse.reverse.entropy_share_by_1_12"]["expected"] == "in [0.58, 0.88]"
    assert "collapse.bandit-best-likely-pg.covariance_positive" in claims
    assert not any(key.startswith("collapse.bandit-best-rare") for key in claims)
    rows = _rows(out / "reverse" / "seed0" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(13))  # step 0: initial evaluation
    assert {"cov_by_accuracy/easy", "cov_by_accuracy/hard_groups", "cov/mean"} <= set(rows[1])
    band = _rows(out / "reverse" / "seeds-mean" / "metrics.jsonl")
    assert band[1]["band/entropy_low"] <= band[1]["entropy"] <= band[1]["band/entropy_high"]
    top = EventAccumulator(str(out))
    top.Reload()
    assert "custom_scalars__config__" in top.Tags()["tensors"]
    assert "collapse/entropy_reward_covariance" in top.Tags()["images"]


def test_report_of_a_tiny_run_has_claims_tables_and_figures(collapse_run, tmp_path):
    out, summary = collapse_run
    report = tmp_path / "rep" / "report.md"
    assert main(["report", str(out), "--out", str(report)]) == 0
    text = report.read_text()
    assert "## collapse" in text and "### Claims" in text
    assert "`collapse.reverse.entropy_share_by_1_12`" in text
    assert "| paper (11 runs, 2400 steps) |" in text  # the experiment's headline table
    held = sum(c["holds"] for c in summary["claims"])
    assert f"{held} of {len(summary['claims'])} claims hold" in text
    figures = sorted(p.name for p in (tmp_path / "rep" / "report_figures").iterdir())
    assert "00_collapse_law.png" in figures and "00_collapse_identity.png" in figures
    assert sum(name.startswith("00_collapse_curves") for name in figures) == 2  # 12 vs 24 steps
    for name in figures:
        assert f"report_figures/{name}" in text


@pytest.mark.parametrize(
    "make_dir, message",
    [
        (False, "is not a directory"),
        (True, "no summary.json"),
    ],
)
def test_report_user_errors_exit_2_with_one_line(make_dir, message, tmp_path, capsys):
    target = tmp_path / "run"
    if make_dir:
        target.mkdir()
    assert main(["report", str(target)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0]


def test_methods_in_two_worker_processes(tmp_path):
    out = tmp_path / "methods"
    summary = _run("methods", TINY_METHODS, out)
    methods = summary["headline"]["methods"]
    assert set(methods) == {"grpo", "kl-cov-1e-2"}
    assert len(methods["grpo"]["final_entropy"]["seeds"]) == 2
    assert methods["grpo"]["touched"]["mean"] == 0.0
    assert methods["kl-cov-1e-2"]["touched"]["mean"] > 0.0  # at least one token per batch
    table = summary["headline"]["tables"][0]
    assert [row[0] for row in table["rows"]] == ["grpo", "kl-cov-1e-2"]
    ids = {c["id"] for c in summary["claims"]}
    assert "methods.kl_cov.touches_few_tokens" in ids
    for run in ("grpo/seed0", "grpo/seed1", "kl-cov-1e-2/seed0", "kl-cov-1e-2/seed1"):
        rows = _rows(out / run / "metrics.jsonl")
        assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
        assert (out / run / "checkpoints").is_dir()
    events = EventAccumulator(str(out / "kl-cov-1e-2" / "seeds-mean"))
    events.Reload()
    assert {"charts/entropy", "band/entropy_low", "band/select_frac_high"} <= set(
        events.Tags()["scalars"]
    )
