"""The report draws figures only where they mean something: no law over a sweep of a setting,
the swept setting on the x-axis, legends outside the data, seed captions only with seeds, the
law drawn over the entropies visited."""

import json

import numpy as np
import pytest

from toy_entropy.experiments.cli import main
from toy_entropy.runs.plots import plt
from toy_entropy.runs.report import (
    SubRun,
    curves_caption,
    figure_curves,
    figure_law,
    write_report,
)
from toy_entropy.runs.tb_layout import teaching_layout

KEYS = ("entropy", "reward", "eval/greedy_accuracy", "eval/mean_at_8")


def _collapse_rows(steps: int, offset: float = 0.0) -> list[dict]:
    """A made-up training run: entropy falls from 1 nat, reward follows the law."""
    rows = []
    for step in range(1, steps + 1):
        entropy = np.exp(-step / 10) + offset
        rows.append({"step": step, "entropy": entropy, "reward": 1.6 - 0.6 * np.exp(entropy)})
    return rows


def _extents_overlap(figure, legend) -> bool:
    figure.canvas.draw()
    box = legend.get_window_extent()
    return any(box.overlaps(axis.get_window_extent()) for axis in figure.axes)


def test_single_seed_caption_says_nothing_about_seeds():
    single = [SubRun(".", _collapse_rows(20))]
    assert curves_caption(single, KEYS) == "Entropy and reward per RL step"
    seeds = [SubRun(f"grpo/seed{s}", _collapse_rows(20, 0.01 * s)) for s in range(3)]
    assert (
        curves_caption(seeds, KEYS) == "Entropy and reward per RL step (mean +/- std over 3 seeds)"
    )


def test_law_is_drawn_over_the_visited_entropies_with_the_legend_outside():
    runs = [SubRun(f"m{i}/seed0", _collapse_rows(30, 0.05 * i)) for i in range(14)]
    figure = figure_law(runs)
    lowest = min(run.series("entropy")[1].min() for run in runs)
    for line in figure.axes[0].get_lines():
        assert line.get_xdata().min() == pytest.approx(lowest, abs=0.05 * 13 + 1e-9)
        assert line.get_xdata().min() > 0.04  # not extrapolated down to H = 0
    legend = figure.legends[0]
    assert len(legend.get_texts()) == 14
    assert not _extents_overlap(figure, legend)
    plt.close(figure)


def test_law_of_one_variant_names_no_run_and_fits_the_made_up_law():
    figure = figure_law([SubRun(".", _collapse_rows(40))])
    (text,) = figure.legends[0].get_texts()
    assert text.get_text() == "a=0.60, b=1.60, R2=1.00, b-a=1.00"
    plt.close(figure)


def test_curves_legend_is_outside_the_panels():
    runs = [SubRun(f"method{i}/seed{s}", _collapse_rows(20, 0.01 * (i + s))) for i in range(14)
            for s in range(2)]  # fmt: skip
    figure = figure_curves(runs, ("entropy", "reward"))
    assert [axis.get_ylabel() for axis in figure.axes] == ["entropy H [nats]", "reward [0-1]"]
    assert not _extents_overlap(figure, figure.legends[0])
    plt.close(figure)


def test_sweep_runs_have_no_law_and_the_setting_on_the_x_axis():
    rows = [
        {"step": i, "entropy": 1.0 - 0.1 * i, "reward": 0.1 * i, "identity/log10_eta": -4.0 + i}
        for i in range(5)
    ]
    sweep = [SubRun("best-likely__pg", rows)]
    assert figure_law(sweep) is None
    figure = figure_curves(sweep, ("entropy",))
    axis = figure.axes[0]
    assert axis.get_xlabel() == "step size eta (log10)"
    assert axis.get_lines()[0].get_xdata().tolist() == [-4.0, -3.0, -2.0, -1.0, 0.0]
    plt.close(figure)
    assert curves_caption(sweep, KEYS) == "Entropy and reward against the step size eta (log10)"


def test_report_of_a_bandit_identity_run_has_no_law_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("TOY_ENTROPY_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bi"
    argv = ["run", "bandit-identity", "--quiet", "--out", str(out)]
    argv += ["--set", "num_etas=5", "--set", "priors=best-likely,random"]
    assert main(argv) == 0
    report = write_report([out], tmp_path / "rep" / "report.md")
    figures = sorted(p.name for p in (tmp_path / "rep" / "report_figures").iterdir())
    assert figures == ["00_bandit-identity_curves0.png", "00_bandit-identity_identity.png"]
    text = report.read_text()
    assert "against the step size eta (log10)" in text
    assert "over seeds" not in text and "seeds)" not in text
    assert "law" not in " ".join(line for line in text.splitlines() if line.startswith("!["))


def test_report_of_a_single_seed_top_level_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"experiment": "sanity", "claims": []}))
    rows = _collapse_rows(20)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = write_report([out], tmp_path / "report.md").read_text()
    captions = [line for line in text.splitlines() if line.startswith("![")]
    assert captions[0].startswith("![Entropy and reward per RL step](")
    assert "seeds" not in text
    assert len(captions) == 2  # curves and law; no identity without identity metrics


def test_teaching_layout_keeps_only_the_charts_of_logged_tags():
    layout = teaching_layout(logged={"charts/entropy", "identity/actual_dH", "cov/mean"})
    assert {c: list(charts) for c, charts in layout.items()} == {
        "1 entropy is traded for reward": ["entropy H(pi, D) [nats]"],
        "2 the covariance drives it": ["token covariance, batch mean"],
        "3 the identity dH = -Cov(log pi, dz)": ["actual and predicted dH per step [nats]"],
    }
    assert len(teaching_layout()["2 the covariance drives it"]) == 6  # unfiltered: every chart
