"""bench/gpu_check.py: the CPU --tiny run records every part with an outcome and finite training
metrics, so the GPU run does not fail on a typo; a failing part is recorded and the rest runs."""

import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"
TRAINING_PARTS = ("train-bf16", "train-fp32", "train-compile", "torchrun-1")
MAY_SKIP = {"torchrun-2", "cure"}  # need 2 GPUs / an experiment not yet merged


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


gpu_check = _load()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One CPU --tiny run of every part (2 parts at a time); its results and run directories."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    out, work = tmp / "RESULTS_gpu.md", tmp / "work"
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--jobs", "2"]
    command += ["--out", str(out), "--workdir", str(work)]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(out.with_suffix(".json").read_text())
    return {"md": out.read_text(), "data": data, "work": work, "seconds": seconds}


def test_every_part_has_an_outcome(tiny_run):
    data, md = tiny_run["data"], tiny_run["md"]
    parts = {p["name"]: p for p in data["parts"]}
    assert list(parts) == [p.name for p in gpu_check.PARTS]
    for name, part in parts.items():
        assert part["outcome"] in ("ok", "failed", "skipped"), name
        expected = ("ok", "skipped") if name in MAY_SKIP else ("ok",)
        assert part["outcome"] in expected, (name, part["detail"], part.get("output_tail"))
        if part["outcome"] == "skipped":
            assert part["detail"], f"{name} is skipped without a reason"
        assert f"| {name} | {part['outcome']} |" in md
    assert "needs 2 CUDA devices" in parts["torchrun-2"]["detail"]
    env = data["environment"]
    assert env["device"] == "cpu" and env["tiny"] and env["torch"] == torch.__version__
    assert env["date_utc"] and env["device_name"]


def test_training_parts_have_finite_metrics(tiny_run):
    parts = {p["name"]: p for p in tiny_run["data"]["parts"]}
    for name in TRAINING_PARTS:
        measured = parts[name]["measured"]
        assert measured["all_finite"] and measured["steps"] >= 2, name
        # Read metrics.jsonl again here, independently of the script's own check.
        rows = (tiny_run["work"] / name / "metrics.jsonl").read_text().splitlines()
        values = [v for row in map(json.loads, rows) for v in row.values()]
        numbers = [v for v in values if isinstance(v, (int, float))]
        assert numbers and all(math.isfinite(v) for v in numbers), name
    assert parts["train-compile"]["measured"]["compile_backend"] == "aot_eager"
    assert parts["torchrun-1"]["measured"]["world_size"] == 1


def test_benchmark_parts_measured_numbers(tiny_run):
    parts = {p["name"]: p.get("measured") for p in tiny_run["data"]["parts"]}
    losses = parts["losses"]
    for ms in losses["ms"].values():
        assert set(ms) == set(losses["modes"]) and all(v > 0 for v in ms.values())
    for name in ("scale-gpu-small", "scale-gpu-large"):
        variants = parts[name]["variants"]
        assert set(variants) == {"chunked", "full-logits"}
        assert all(v["update_tokens_per_s"] > 0 for v in variants.values())
    assert set(parts["memory"]["variants"]) == {"reference", "chunked-logits", "chunked"}
    nccl = parts["nccl"]
    assert nccl["backend"] == "gloo" and nccl["world_size"] == 1
    assert all(mode["equal"] for mode in nccl["modes"].values())


def test_a_failing_part_is_recorded_and_the_rest_runs(tmp_path, monkeypatch):
    def broken(ctx):
        gpu_check.run_command(ctx, [sys.executable, "-c", "raise ValueError('bad value 7')"])

    def buggy(ctx):
        raise KeyError("variants")

    def fine(ctx):
        return {"value": 1.0}

    monkeypatch.setattr(
        gpu_check,
        "PARTS",
        [
            gpu_check.Part("a", 30, 30, broken, "fails"),
            gpu_check.Part("b", 30, 30, buggy, "bug"),
            gpu_check.Part("c", 30, 30, fine, "works"),
        ],
    )
    out = tmp_path / "r.md"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(out)]) == 1
    parts = json.loads(out.with_suffix(".json").read_text())["parts"]
    assert [p["outcome"] for p in parts] == ["failed", "failed", "ok"]
    assert parts[0]["detail"] == "exit 1: ValueError: bad value 7"
    assert parts[1]["detail"] == "KeyError: 'variants'"
    assert "| a | failed |" in out.read_text()


def test_a_command_over_budget_is_killed(tmp_path):
    ctx = gpu_check.Context(gpu_check.argparse.Namespace(device="cpu", tiny=True), tmp_path)
    ctx.deadline = time.monotonic() + 2
    started = time.monotonic()
    with pytest.raises(gpu_check.PartFailed, match="timed out"):
        gpu_check.run_command(ctx, [sys.executable, "-c", "import time; time.sleep(60)"])
    assert time.monotonic() - started < 20


def test_nonfinite_metrics_are_named(tmp_path):
    rows = [{"step": 1, "reward": 0.5}, {"step": 2, "reward": 0.5, "loss/total": float("nan")}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(gpu_check.PartFailed, match="loss/total = nan at step 2"):
        gpu_check.check_run_dir(tmp_path, 2)
    with pytest.raises(gpu_check.PartFailed, match="expected 1..3"):
        gpu_check.check_run_dir(tmp_path, 3)


def test_bad_part_name_and_missing_cuda(tmp_path):
    with pytest.raises(SystemExit, match="unknown part"):
        gpu_check.main(["--device", "cpu", "--parts", "losses,lossez", "--out", str(tmp_path)])
    if not torch.cuda.is_available():
        assert gpu_check.main(["--out", str(tmp_path / "r.md")]) == 2


def test_last_error_line_finds_the_cause():
    torchrun = (
        '  File "x.py", line 3, in <module>\n'
        "RuntimeError: called a synchronizing CUDA operationTraceback (most recent call last):\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
        "  error_file: <N/A>\n"
    )
    assert gpu_check.last_error_line(torchrun) == (
        "RuntimeError: called a synchronizing CUDA operation"
    )
    cli = "step 1\ntoy_entropy.train: error: preset='gpu-huge' is invalid\n"
    assert (
        gpu_check.last_error_line(cli) == "toy_entropy.train: error: preset='gpu-huge' is invalid"
    )
    assert gpu_check.last_error_line("") == "(no output)"
