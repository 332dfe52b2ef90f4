"""The package layout: one installed package, the library below the experiments and the CLI."""

import ast
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_subpackage_is_installed_under_toy_entropy():
    config = _setuptools()
    folders = {name: ROOT / path for name, path in config["package-dir"].items()}
    expected = {
        ".".join((name, *init.parent.relative_to(folder).parts))
        for name, folder in folders.items()
        for init in folder.rglob("__init__.py")
    }
    assert set(config["packages"]) == expected
    assert all(p == "toy_entropy" or p.startswith("toy_entropy.") for p in config["packages"])


def test_the_library_does_not_import_the_experiments():
    for path in (ROOT / "toy_entropy").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not [n for n in names if "experiments" in n.split(".")], path
