"""The README's numbers are what a newcomer gets: a fresh sanity run reproduces them."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from toy_entropy.experiments.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _numbers_module():
    spec = importlib.util.spec_from_file_location(
        "readme_numbers", ROOT / "docs" / "readme_numbers.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_shows_the_recorded_numbers():
    numbers = _numbers_module()
    recorded = json.loads(numbers.NUMBERS.read_text())
    readme = (ROOT / "README.md").read_text()
    assert numbers.sanity_row(recorded["sanity"]) in readme
    assert f"torch {recorded['torch']}" in readme


def test_a_fresh_sanity_run_gives_the_readme_numbers(tmp_path, monkeypatch):
    numbers = _numbers_module()
    recorded = json.loads(numbers.NUMBERS.read_text())
    if recorded["torch"] != torch.__version__.split("+")[0]:
        pytest.skip(f"numbers recorded with torch {recorded['torch']}, not {torch.__version__}")
    monkeypatch.setenv("TOY_ENTROPY_CACHE", str(tmp_path / "cache"))  # a cold cache, as new
    assert main(["run", "sanity", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    headline = json.loads((tmp_path / "run" / "summary.json").read_text())["headline"]
    assert numbers.sanity_numbers(headline) == recorded["sanity"]
