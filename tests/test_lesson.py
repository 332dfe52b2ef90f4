"""The lesson end to end on tiny settings: one TensorBoard directory with few runs, each carrying
the layout; the four figures, the claims table, hparams of what varies; seed runs without
events."""

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from toy_entropy.experiments.cli import main
from toy_entropy.experiments.lesson import LessonConfig, lesson_layout, varying_fields

TINY = [
    "num_seeds=2", "train.total_steps=4", "train.num_prompts=4", "train.eval_every=4",
    "train.eval_prompts=8", "train.warmstart.steps=20", "workers=1",
]  # fmt: skip
METHODS = ("grpo", "clip-cov-1e-2", "kl-cov-1e-2")
TB_RUNS = {".", "identity-dH/actual", "identity-dH/predicted"} | {
    f"{m}/seeds-mean" for m in METHODS
}


@pytest.fixture(scope="module")
def lesson_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lesson") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a loaded 2-core machine take 4x longer
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("TOY_ENTROPY_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
            argv = ["run", "lesson", "--quiet", "--out", str(out)]
            for item in TINY:
                argv += ["--set", item]
            assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def _events(path):
    events = EventAccumulator(str(path))
    events.Reload()
    return events


def test_few_tensorboard_runs_each_with_the_layout(lesson_run):
    runs = {
        p.parent.relative_to(lesson_run).as_posix()
        for p in lesson_run.rglob("events.out.tfevents.*")
    }
    assert runs == TB_RUNS
    for run in runs:
        assert "custom_scalars__config__" in _events(lesson_run / run).Tags()["tensors"]
    for method in METHODS:
        for seed in (0, 1):
            seed_run = lesson_run / method / f"seed{seed}"
            rows = [json.loads(line) for line in (seed_run / "metrics.jsonl").open()]
            assert [row["step"] for row in rows] == [0, 1, 2, 3, 4]
            assert not list(seed_run.glob("events.out.tfevents.*"))


def test_top_level_run_holds_the_figures_and_the_claims_table(lesson_run):
    top = _events(lesson_run)
    images = set(top.Tags()["images"])
    assert images == {f"0_lesson/{name}" for name in ("a1_collapse_entropy", "a2_collapse_reward",
                      "b_law", "c_identity", "d1_cure_entropy", "d2_cure_accuracy")}  # fmt: skip
    claims = top.Tensors("claims/table/text_summary")[0].tensor_proto.string_val[0].decode()
    assert claims.startswith("| holds | claim | measured | expected | statement |")
    summary = json.loads((lesson_run / "summary.json").read_text())
    ids = [c["id"] for c in summary["claims"]]
    assert ids == [
        "lesson.grpo.entropy_collapses", "lesson.grpo.reward_rises", "lesson.law.fits",
        "lesson.identity.correlation", "lesson.cure.clip-cov-1e-2.holds_entropy",
        "lesson.cure.kl-cov-1e-2.holds_entropy",
    ]  # fmt: skip
    for claim in summary["claims"]:
        assert f"| `{claim['id']}` |" in claims
    identity = summary["headline"]["identity"]
    assert identity["num_updates"] == 2 * 4 * 2  # seeds x steps x mini-batches


def test_band_and_identity_runs_hold_the_curves(lesson_run):
    grpo = _events(lesson_run / "grpo" / "seeds-mean")
    tags = set(grpo.Tags()["scalars"])
    assert {"charts/entropy", "band/entropy_low", "band/entropy_high", "charts/reward",
            "eval/mean_at_8", "band/eval_mean_at_8_high"} <= tags  # fmt: skip
    assert [e.step for e in grpo.Scalars("charts/entropy")] == [1, 2, 3, 4]
    actual = _events(lesson_run / "identity-dH" / "actual").Scalars("identity/dH_per_step")
    predicted = _events(lesson_run / "identity-dH" / "predicted").Scalars("identity/dH_per_step")
    assert [e.step for e in actual] == [e.step for e in predicted] == [1, 2, 3, 4]
    rows = [json.loads(line) for line in (lesson_run / "grpo/seed0/metrics.jsonl").open()]
    seed1 = [json.loads(line) for line in (lesson_run / "grpo/seed1/metrics.jsonl").open()]
    mean = (rows[1]["identity/actual_dH"] + seed1[1]["identity/actual_dH"]) / 2
    assert actual[0].value == pytest.approx(mean, rel=1e-6)


def test_hparams_hold_only_what_differs_between_methods(lesson_run):
    events = _events(lesson_run / "kl-cov-1e-2" / "seeds-mean")
    content = events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert set(hparams) == {
        "loss.loss_mode", "loss.clip_ratio_low", "loss.clip_ratio_high", "loss.clip_cov_ratio",
        "loss.kl_cov_ratio",
    }  # fmt: skip
    assert hparams["loss.loss_mode"].string_value == "kl_cov"
    assert hparams["loss.kl_cov_ratio"].number_value == pytest.approx(1e-2)


def test_config_checks_and_helpers():
    with pytest.raises(ValueError, match="the first method must be grpo"):
        LessonConfig(methods=("kl-cov-1e-2", "grpo"))
    with pytest.raises(ValueError, match="a method repeats"):
        LessonConfig(methods=("grpo", "grpo"))
    configs = {"a": {"x": 1, "y": 2, "z": 3}, "b": {"x": 1, "y": 5, "z": 3}}
    assert varying_fields(configs) == ["y"]
    layout = lesson_layout(("entropy",))
    (chart,) = layout["1 entropy is traded for reward (every method)"].values()
    assert chart == ["Margin", ["charts/entropy", "band/entropy_low", "band/entropy_high"]]


def test_the_quickstart_run_opens_on_a_layout_of_its_own_charts(tmp_path, monkeypatch):
    monkeypatch.setenv("TOY_ENTROPY_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "sanity"
    argv = ["run", "sanity", "--quiet", "--out", str(out), "--set", "train.warmstart.steps=20"]
    for item in (
        "train.eval_prompts=8",
        "train.probe_states=4",
        "train.num_prompts=4",
        "train.total_steps=2",
    ):
        argv += ["--set", item]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    events = _events(out)
    content = events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0]
    layout = layout_pb2.Layout.FromString(content)
    charts = {chart.title for category in layout.category for chart in category.chart}
    assert "entropy H(pi, D) [nats]" in charts
    assert "actual and predicted dH per step [nats]" in charts
    # sanity runs GRPO: no Clip-Cov / KL-Cov selection, no prompt-difficulty split
    assert "tokens touched by Clip-Cov / KL-Cov" not in charts
    assert "covariance by prompt difficulty" not in charts
