"""The toy-entropy CLI and the run directories it writes (docs/OUTPUTS.md)."""

import json
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import toy_entropy
from toy_entropy.experiments.cli import main


def test_list_names_every_experiment_with_a_description(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = [line.split("\t")[0] for line in lines]
    assert {"bandit-identity", "bandit-collapse"} <= set(names)
    assert all(len(line.split("\t")) == 2 and line.split("\t")[1] for line in lines)


def test_bandit_identity_run_directory_and_claims(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "bandit-identity", "--quick", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tensorboard --logdir" in printed and "1.0e-03" in printed
    summary = json.loads((out / "summary.json").read_text())
    claims = {c["id"]: c for c in summary["claims"]}
    for rule in ("pg", "npg"):
        claim = claims[f"identity.{rule}.rel_error_at_eta_1e-3"]
        assert claim["holds"] and claim["measured"] < 0.01
        assert 0.9 <= claims[f"identity.{rule}.error_slope"]["measured"] <= 1.1
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 0 and config["device"] == "cpu" and "torch_version" in config
    sub_run = out / "best-rare__npg"
    rows = [json.loads(line) for line in (sub_run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 9 and {"step", "entropy", "reward"} <= set(rows[0])
    # the rare best arm raises entropy: the predicted and the actual change are positive
    assert rows[0]["identity/actual_dH"] > 0 and rows[0]["identity/predicted_dH"] > 0
    events = EventAccumulator(str(sub_run))
    events.Reload()
    assert "identity/relative_error" in events.Tags()["scalars"]
    top = EventAccumulator(str(out))
    top.Reload()
    assert "identity/scatter_actual_vs_predicted" in top.Tags()["images"]
    assert "config/text_summary" in top.Tags()["tensors"]
    assert not (out / "metrics.jsonl").exists()  # the top level of a multi-run experiment


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "no-such-experiment"], "unknown experiment"),
        (["run", "bandit-identity", "--set", "num_etaz=3"], "did you mean num_etas"),
        (["run", "bandit-identity", "--set", "num_etas=two"], "num_etas"),
        (["run", "bandit-identity", "--set", "eta_min=-1"], "eta_min"),
        (["run", "bandit-identity", "--set", "priors=flat"], "priors"),
        (["run", "bandit-identity", "--set", "num_etas"], "key=value"),
        (["run", "bandit-identity", "--device", "tpu"], "--device"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, message, tmp_path, capsys):
    out = tmp_path / "never"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_existing_output_directory_is_refused_without_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("data")
    assert main(["run", "bandit-identity", "--quick", "--quiet", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "data"


def test_bandit_collapse_quick_reproduces_the_issue_claims(tmp_path):
    out = tmp_path / "collapse"
    assert main(["run", "bandit-collapse", "--quick", "--quiet", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    claims = {c["id"]: c for c in summary["claims"]}
    assert all(c["holds"] for c in claims.values()), [
        k for k, c in claims.items() if not c["holds"]
    ]
    for rule in ("pg", "npg"):
        assert claims[f"collapse.best-rare__{rule}.entropy_rises_first"]["measured"] > 0
        assert claims[f"collapse.best-likely__{rule}.entropy_falls_from_start"]["measured"] < 0
    seeds = sorted(p.name for p in (out / "best-rare__pg").iterdir())
    assert {"expected", "ode", "sampled-mean", "seed0"} <= set(seeds)


def test_list_reads_the_catalogue_without_importing_torch():
    from toy_entropy.experiments import list_experiments
    from toy_entropy.experiments.catalogue import catalogue

    assert catalogue() == [(e.name, e.description) for e in list_experiments()]
    probe = (
        "import sys; from toy_entropy.experiments.cli import main; main(['list']); "
        "assert 'torch' not in sys.modules, 'list imported torch'"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("bandit-collapse\t")


def test_run_help_lists_the_experiments_set_keys(capsys):
    assert main(["run", "collapse", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--threads" in out and "--set keys" in out
    assert "  workers = 0\n      parallel training processes" in out
    assert "  tasks = ('reverse', 'sort', 'hard_prompt'); --quick: ('reverse', 'sort')" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"toy-entropy {toy_entropy.__version__} (torch ")
