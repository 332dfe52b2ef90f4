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


# The layers, lowest first: a module may import its own layer and the layers before it, never a
# later one. envs import nothing of the library and sit beside the models; the root package
# (``toy_entropy``: the version) is below everything; train.py (python -m toy_entropy.train) is a
# CLI and sits with the experiments on top.
LAYERS = {
    "toy_entropy": 0,
    "toy_entropy.theory": 0,
    "toy_entropy.models": 1,
    "toy_entropy.envs": 1,
    "toy_entropy.algorithms": 2,
    "toy_entropy.training": 3,
    "toy_entropy.runs": 4,
    "toy_entropy.experiments": 5,
    "toy_entropy.train": 5,
}


def _layer(module: str) -> int:
    """The layer of a dotted module name: its longest prefix in LAYERS."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise AssertionError(f"{module} is in no layer")


def _modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name, from pyproject's package-dir."""
    out = {}
    for name, folder in _setuptools()["package-dir"].items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((name, *parts))] = path
    return out


def _imports(module: str, path: Path, known: set[str]) -> list[str]:
    """The toy_entropy modules ``module`` imports anywhere in its file (lazy imports too);
    ``from P import X`` counts as importing P.X when that is a module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append(sub if sub in known else base)
    return [name for name in found if name == "toy_entropy" or name.startswith("toy_entropy.")]


def test_the_layers_import_only_lower_layers():
    modules = _modules()
    assert "toy_entropy.training.trainer" in modules and "toy_entropy.theory.entropy" in modules
    violations = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, path in sorted(modules.items())
        for target in _imports(module, path, set(modules))
        if _layer(target) > _layer(module)
    ]
    assert not violations, "\n".join(violations)


def test_the_library_has_no_flat_modules_left():
    """Only the package root, the entry point and the layer subpackages sit in toy_entropy/."""
    top = {p.name for p in (ROOT / "toy_entropy").iterdir() if p.name != "__pycache__"}
    assert top == {"__init__.py", "train.py", "theory", "models", "algorithms", "training", "runs"}
