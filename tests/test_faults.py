"""Faults: nothing lost, nothing mixed, nothing hung (run directories, guard, signals, disks)."""

import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from toy_entropy.algorithms.losses import PolicyLossConfig, policy_loss
from toy_entropy.experiments.cli import main
from toy_entropy.train import main as train_main

TINY = ["--quiet", "--set", "train.warmstart.steps=40", "--set", "train.eval_prompts=8",
        "--set", "train.probe_states=4", "--set", "train.num_prompts=8"]  # fmt: skip
SANITY = ["run", "sanity", *TINY, "--set", "train.total_steps=6", "--set", "train.eval_every=3"]
SWEEP = ["run", "collapse", "--quick", "--quiet", "--set", "tasks=reverse",
         "--set", "num_seeds=2", "--set", "train.total_steps=12", "--set", "train.num_prompts=4",
         "--set", "train.eval_every=6", "--set", "bandit_steps=12", "--set", "bandit_seeds=2",
         "--set", "workers=2"]  # fmt: skip
TRAIN = ["--quiet", "--set", "warmstart.steps=40", "--set", "eval_prompts=8",
         "--set", "probe_states=4", "--set", "num_prompts=8", "--set", "total_steps=2"]  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _cache_env(cache, monkeypatch):
    monkeypatch.setenv("TOY_ENTROPY_CACHE", str(cache))


def _tree(directory: Path) -> dict[str, str]:
    """Every file below ``directory`` with the hash of its bytes."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def _cli(args: list[str], cache: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "TOY_ENTROPY_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "toy_entropy.experiments.cli", *args], env=env, **kwargs
    )


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for_rows(path: Path, rows: int, process: subprocess.Popen, timeout: float = 240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= rows:
            return
        assert process.poll() is None, "the run ended before it was interrupted"
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {rows} rows")


# ---- run directories: --overwrite, --resume, refused starts -----------------------------


def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    thesis = tmp_path / "work" / "sub" / "thesis.tex"
    thesis.parent.mkdir(parents=True)
    thesis.write_text("years of work")
    assert main(["run", "bandit-identity", "--out", str(tmp_path / "work"), "--overwrite"]) == 2
    _one_line_error(capsys, "not a toy-entropy run directory", "nothing was deleted")
    assert thesis.read_text() == "years of work"


def test_overwrite_never_touches_the_working_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("keep")
    for out in (".", "..", str(tmp_path)):
        assert main(["run", "bandit-identity", "--out", out, "--overwrite"]) == 2
        _one_line_error(capsys, "working directory")
    with pytest.raises(SystemExit) as exit_info:  # what --out "$UNSET" gives
        main(["run", "bandit-identity", "--out", "", "--overwrite"])
    assert exit_info.value.code == 2
    assert "--out is empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_overwrite_replaces_a_run_and_resume_refuses_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "bandit-identity", "--quick", "--quiet", "--out", str(out)]
    assert main(args) == 0
    (out / "stale.txt").write_text("from the old run")
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "stale.txt").exists() and (out / "summary.json").exists()
    capsys.readouterr()
    assert main(["run", "bandit-identity", "--resume", str(out), "--overwrite"]) == 2
    _one_line_error(capsys, "--resume and --overwrite")


def test_train_refuses_an_existing_run_and_a_file(tmp_path, capsys):
    out = tmp_path / "train"
    assert train_main(["--out", str(out), *TRAIN]) == 0
    before = _tree(out)
    capsys.readouterr()
    assert train_main(["--out", str(out), *TRAIN]) == 2
    _one_line_error(capsys, "already holds files", "--resume", "--overwrite")
    assert _tree(out) == before
    afile = tmp_path / "afile"
    afile.write_text("keep")
    assert train_main(["--out", str(afile), *TRAIN]) == 2
    _one_line_error(capsys, "not a directory")
    assert train_main(["--out", str(out), "--resume", "--overwrite", *TRAIN]) == 2
    _one_line_error(capsys, "--resume and --overwrite")
    assert afile.read_text() == "keep" and _tree(out) == before


@pytest.fixture(scope="module")
def unfinished_run(tmp_path_factory, cache) -> Path:
    """A sanity run with checkpoints whose summary.json is gone (as if killed at the end)."""
    os.environ["TOY_ENTROPY_CACHE"] = str(cache)
    out = tmp_path_factory.mktemp("unfinished") / "run"
    assert main([*SANITY, "--set", "train.checkpoint_every=2", "--out", str(out)]) == 0
    (out / "summary.json").unlink()
    (out / "checkpoints" / "step_000006.pt").unlink()
    return out


def test_refused_resume_leaves_the_run_byte_identical(unfinished_run, capsys):
    out = unfinished_run
    before = _tree(out)
    changed = ["--set", "train.learning_rate=1e-2"]
    assert main(["run", "sanity", "--resume", str(out), *TINY, *changed]) == 2
    _one_line_error(capsys, "differ from the run's config")
    assert _tree(out) == before
    # config.json edited by hand: the checkpoint refuses it before any log is touched.
    record = json.loads((out / "config.json").read_text())
    original = (out / "config.json").read_text()
    record["config"]["train"]["learning_rate"] = 1e-2
    (out / "config.json").write_text(json.dumps(record))
    edited = _tree(out)
    try:
        assert main(["run", "sanity", "--resume", str(out), "--quiet"]) == 2
        _one_line_error(capsys, "different config")
        assert _tree(out) == edited
    finally:
        (out / "config.json").write_text(original)


@pytest.mark.parametrize(
    "record, message",
    [
        ([1, 2, 3], "holds a list"),
        ({"experiment": "sanity", "seed": 0, "toy_entropy_version": "0.1.0"}, "lacks config"),
        (
            {"experiment": "sanity", "seed": "zero", "config": {}, "toy_entropy_version": "0"},
            "seed",
        ),
    ],
)
def test_resume_of_a_malformed_config_json(tmp_path, capsys, record, message):
    (tmp_path / "config.json").write_text(json.dumps(record))
    assert main(["run", "sanity", "--resume", str(tmp_path)]) == 2
    _one_line_error(capsys, message)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seed", str(2**64)], "--seed"),
        (["--set", "train.learning_rate=inf"], "learning_rate"),
        (["--set", "train.learning_rate=1e400"], "learning_rate"),
        (["--set", "train.temperature=inf"], "temperature"),
        (["--set", "train.num_prompts=1000000000"], "num_prompts"),
    ],
)
def test_refused_start_leaves_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "deep" / "run"
    assert main(["run", "sanity", *TINY, "--out", str(out), *extra]) == 2
    _one_line_error(capsys, message)
    assert not (tmp_path / "deep").exists()


def test_cache_that_is_a_file_is_refused(tmp_path, monkeypatch, capsys):
    afile = tmp_path / "cache-file"
    afile.write_text("")
    monkeypatch.setenv("TOY_ENTROPY_CACHE", str(afile))
    assert main(["run", "sanity", *TINY, "--out", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, "TOY_ENTROPY_CACHE", "not a directory")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("steps", [1, 2])
def test_runs_too_short_for_the_law_still_finish(tmp_path, steps):
    out = tmp_path / "run"
    steps_set = ["--set", f"train.total_steps={steps}"]
    assert main(["run", "sanity", *TINY, *steps_set, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["headline"]["law"]["note"].startswith("too few steps")


def test_report_bad_inputs(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("[1, 2]")
    assert main(["report", str(run)]) == 2
    _one_line_error(capsys, "holds a list")
    (run / "summary.json").write_text(json.dumps({"experiment": "x", "claims": []}))
    (tmp_path / "dir.md").mkdir()
    assert main(["report", str(run), "--out", str(tmp_path / "dir.md")]) == 2
    _one_line_error(capsys, "is a directory")
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    assert main(["report", str(run), "--out", str(blocker / "report.md")]) == 2
    _one_line_error(capsys, "cannot write the report")


# ---- the non-finite guard ---------------------------------------------------------------


def test_destructive_learning_rate_rolls_back_then_stops_with_a_summary(tmp_path, capsys):
    out = tmp_path / "run"
    sets = ["--set", "train.learning_rate=1e6", "--set", "train.warmstart.steps=150"]  # rewards > 0
    with pytest.warns(RuntimeWarning, match="rolled back to the last good state"):
        code = main([*SANITY, *sets, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert code == 1 and summary["status"] == "stopped"
    assert "3 roll-backs in a row, nonfinite_max_consecutive=3" in summary["reason"]
    assert err[-1].startswith("toy-entropy: stopped: non-finite")
    # Steps 1 and 2 were rolled back and logged as such; the third roll-back stopped the run.
    assert [row["guard/skipped_updates"] for row in rows[1:]] == [1, 2]
    assert all(row["guard/nonfinite"] == 1 for row in rows[1:])
    # The checkpoint holds the last good state, whose outputs were finite.
    checkpoint = torch.load(sorted((out / "checkpoints").glob("step_*.pt"))[-1])
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values())


# ---- signals: interrupts, orphans, frozen ranks ------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted_sweep(tmp_path_factory, cache) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "whole"
    assert _cli([*SWEEP, "--out", str(out)], cache).wait(timeout=400) == 0
    return out


def test_sigint_stops_a_sweep_cleanly_and_it_resumes_to_the_same_result(
    tmp_path, cache, uninterrupted_sweep
):
    out = tmp_path / "interrupted"
    run = _cli([*SWEEP, "--out", str(out)], cache, stderr=subprocess.PIPE, text=True)
    _wait_for_rows(out / "reverse" / "seed0" / "metrics.jsonl", 4, run)
    workers = _children(run.pid)
    assert workers, "the sweep has no worker processes"
    started = time.time()
    run.send_signal(signal.SIGINT)
    code = run.wait(timeout=30)
    err = run.stderr.read().strip()
    assert code == 130 and time.time() - started < 10
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"--resume {out}" in err
    time.sleep(0.5)
    assert not [pid for pid in workers if _alive(pid)]
    assert _cli(["run", "collapse", "--resume", str(out), "--quiet"], cache).wait(300) == 0
    for seed in ("seed0", "seed1"):
        ours = (out / "reverse" / seed / "metrics.jsonl").read_text()
        assert ours == (uninterrupted_sweep / "reverse" / seed / "metrics.jsonl").read_text()
    summary = json.loads((out / "summary.json").read_text())
    expected = json.loads((uninterrupted_sweep / "summary.json").read_text())
    assert summary["claims"] == expected["claims"]
    _assert_each_step_once(out / "reverse" / "seed0")


def test_sigkill_of_a_sweep_parent_leaves_no_worker_and_it_resumes(
    tmp_path, cache, uninterrupted_sweep
):
    out = tmp_path / "killed"
    run = _cli([*SWEEP, "--out", str(out)], cache, stderr=subprocess.DEVNULL)
    _wait_for_rows(out / "reverse" / "seed0" / "metrics.jsonl", 2, run)
    workers = _children(run.pid)
    assert workers
    run.send_signal(signal.SIGKILL)
    run.wait()
    deadline = time.time() + 10
    while time.time() < deadline and [pid for pid in workers if _alive(pid)]:
        time.sleep(0.1)
    assert not [pid for pid in workers if _alive(pid)]
    # No checkpoint was written (checkpoint_every=0): the killed runs start over on --resume.
    assert _cli(["run", "collapse", "--resume", str(out), "--quiet"], cache).wait(300) == 0
    for seed in ("seed0", "seed1"):
        ours = (out / "reverse" / seed / "metrics.jsonl").read_text()
        assert ours == (uninterrupted_sweep / "reverse" / seed / "metrics.jsonl").read_text()
    _assert_each_step_once(out / "reverse" / "seed0")


def test_sigterm_checkpoints_a_single_run_and_it_resumes_to_the_same_result(tmp_path, cache):
    args = [*SANITY, "--set", "train.total_steps=10"]
    assert _cli([*args, "--out", str(tmp_path / "whole")], cache).wait(timeout=300) == 0
    out = tmp_path / "stopped"
    run = _cli([*args, "--out", str(out)], cache, stderr=subprocess.PIPE, text=True)
    _wait_for_rows(out / "metrics.jsonl", 4, run)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=30) == 143
    err = run.stderr.read().strip()
    assert len(err.splitlines()) == 1 and "checkpointed" in err, err
    assert not (out / "summary.json").exists() and list((out / "checkpoints").glob("step_*"))
    assert _cli(["run", "sanity", "--resume", str(out), "--quiet"], cache).wait(300) == 0
    whole = (tmp_path / "whole" / "metrics.jsonl").read_text()
    assert (out / "metrics.jsonl").read_text() == whole
    _assert_each_step_once(out)


def _assert_each_step_once(run_dir: Path) -> None:
    """Every (tag, step) of the run's event files appears once, for any TensorBoard loader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    seen: dict[tuple[str, int], int] = {}
    for path in run_dir.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                key = (value.tag, event.step)
                seen[key] = seen.get(key, 0) + 1
    assert seen and max(seen.values()) == 1, [k for k, n in seen.items() if n > 1][:5]
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    steps = [event.step for event in accumulator.Scalars("charts/entropy")]
    assert steps == sorted(set(steps)) and len(steps) >= 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_a_frozen_rank_ends_the_job_within_the_timeout(tmp_path, cache):
    out = tmp_path / "frozen"
    env = {**os.environ, "TOY_ENTROPY_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", str(_free_port()), "-m", "toy_entropy.train", "--out", str(out),
            "--dist-timeout", "5", *TRAIN[:-1], "total_steps=50"]  # fmt: skip
    job = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ranks = []
    try:
        _wait_for_rows(out / "metrics.jsonl", 2, job)
        ranks = [pid for pid in _children(job.pid) if _alive(pid)]
        assert len(ranks) == 2
        frozen = next(p for p in ranks if "RANK=1" in Path(f"/proc/{p}/environ").read_text())
        os.kill(frozen, signal.SIGSTOP)
        started = time.time()
        code = job.wait(timeout=120)
        waited = time.time() - started
        err = job.stderr.read().decode()
        assert code != 0 and "a collective timed out after 5 s" in err
        assert waited < 5 + 60  # the timeout, then torchrun's teardown of the frozen rank
    finally:
        for pid in ranks:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if job.poll() is None:
            job.kill()


# ---- full disks, permissions, masked values ----------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if mounted.returncode != 0 or not shutil.which("umount"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_gives_one_line_and_leaves_no_temporary_file(tiny_disk, capsys):
    out = tiny_disk / "run"
    code = main([*SANITY, "--set", "train.checkpoint_every=1", "--out", str(out)])
    assert code == 1
    _one_line_error(capsys, "no space left on device while writing", str(out))
    assert not [p for p in tiny_disk.rglob("*") if p.name.endswith(".tmp")]
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # no torn line


def test_run_files_share_one_permission_mode(unfinished_run):
    modes = {stat.S_IMODE((unfinished_run / name).stat().st_mode)
             for name in ("config.json", "metrics.jsonl")}  # fmt: skip
    modes.add(stat.S_IMODE(next(unfinished_run.glob("events.out.tfevents.*")).stat().st_mode))
    assert len(modes) == 1


def test_values_at_masked_positions_are_ignored():
    torch.manual_seed(0)
    log_probs = (-torch.rand(3, 5)).requires_grad_()
    old, advantages = -torch.rand(3, 5), torch.randn(3, 5)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[:, -2:] = False
    config = PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.2)
    clean, _ = policy_loss(config, log_probs, old, advantages, mask)
    (clean_grad,) = torch.autograd.grad(clean, log_probs)
    nan = torch.tensor(float("nan"))
    dirty_lp = torch.where(mask, log_probs, nan)
    loss, _ = policy_loss(
        config, dirty_lp, torch.where(mask, old, nan), torch.where(mask, advantages, nan), mask
    )
    (grad,) = torch.autograd.grad(loss, log_probs)
    assert torch.equal(loss, clean) and torch.equal(grad, clean_grad)
    assert torch.equal(grad[~mask], torch.zeros(6))


def test_resume_without_a_checkpoint_is_refused(unfinished_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(unfinished_run, copy)
    shutil.rmtree(copy / "checkpoints")  # killed before its first checkpoint
    before = _tree(copy)
    assert main(["run", "sanity", "--resume", str(copy), "--quiet"]) == 2
    _one_line_error(capsys, "no checkpoint", "--overwrite")
    assert _tree(copy) == before
