"""Produce every number the README shows, from fresh runs, into docs/readme_numbers.json.

    python docs/readme_numbers.py            # about a minute on 2 CPU cores

It runs the README's commands (`toy-entropy run sanity`, `toy-entropy run bandit-identity`)
with their default seed into a temporary directory, stores the numbers with the torch version
and prints them as the README's table rows. tests/test_readme_numbers.py reruns sanity and
checks that it gives these numbers (with the same torch) and that the README shows them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
NUMBERS = HERE / "readme_numbers.json"


def sanity_numbers(headline: dict) -> dict:
    """The README's sanity numbers from a sanity run's summary headline (3 decimals)."""
    identity, law = headline["identity"], headline["law"]
    values = {
        "initial_entropy": headline["initial_entropy"],
        "final_entropy": headline["final_entropy"],
        "initial_eval_accuracy": headline["initial_eval_accuracy"],
        "final_eval_accuracy": headline["final_eval_accuracy"],
        "initial_greedy_accuracy": headline["initial_greedy_accuracy"],
        "final_greedy_accuracy": headline["final_greedy_accuracy"],
        "identity_correlation": identity["correlation"],
        "identity_sign_agreement": identity["sign_agreement"],
        "law_a": law["a"],
        "law_b": law["b"],
        "law_r2": law["r2"],
        "law_rmse": law["rmse"],
    }
    return {key: round(float(value), 3) for key, value in values.items()}


def sanity_row(numbers: dict) -> str:
    """The README line that shows the sanity numbers."""
    n = numbers
    return (
        f"entropy {n['initial_entropy']:.3f} -> {n['final_entropy']:.3f} nats; held-out "
        f"accuracy of samples (mean@8) {n['initial_eval_accuracy']:.3f} -> "
        f"{n['final_eval_accuracy']:.3f}; identity corr(actual dH, -Cov) = "
        f"{n['identity_correlation']:.3f}; law R = -a exp(H) + b with a = {n['law_a']:.3f}, "
        f"b = {n['law_b']:.3f}, R^2 = {n['law_r2']:.3f}"
    )


def _run(name: str, out: Path) -> tuple[dict, float]:
    started = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "toy_entropy.experiments.cli",
        "run",
        name,
        "--out",
        str(out),
        "--quiet",
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    return json.loads((out / "summary.json").read_text())["headline"], seconds


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        sanity, sanity_seconds = _run("sanity", Path(tmp) / "sanity")
        identity, _ = _run("bandit-identity", Path(tmp) / "identity")
    numbers = {
        "torch": torch.__version__.split("+")[0],  # the build suffix (+cpu, +cu130) aside
        "sanity": sanity_numbers(sanity),
        "sanity_seconds": round(sanity_seconds, 1),
        "bandit_identity_rel_error_at_1e-3": {
            rule: float(f"{identity[f'{rule}.rel_error_at_eta_1e-03']:.2g}")
            for rule in ("pg", "npg")
        },
    }
    NUMBERS.write_text(json.dumps(numbers, indent=2) + "\n")
    print(sanity_row(numbers["sanity"]))
    print(json.dumps(numbers, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
