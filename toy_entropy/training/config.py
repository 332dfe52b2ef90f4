"""Typed configs: ``--set key=value`` overrides, validation helpers and clear config errors.

Every experiment config is a dataclass whose ``__post_init__`` validates its fields with the
helpers below, so a bad value is caught before any work starts, with a message that names the
field, the value and what is allowed.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import json
import math
import textwrap
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

__all__ = [
    "ConfigError",
    "apply_overrides",
    "config_paths",
    "get_path",
    "replace_paths",
    "config_from_dict",
    "config_to_dict",
    "flat_config",
    "config_fields_help",
    "check_choice",
    "check_range",
    "check_positive_int",
    "check_fraction",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config field has a value that is not allowed."""

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}={value!r} is invalid: {allowed}")

    def __reduce__(self):  # picklable, so that it crosses from a sweep's worker processes
        return type(self), (self.field, self.value, self.allowed)


def check_choice(field: str, value: Any, choices: Iterable[Any]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(field, value, "expected one of " + ", ".join(map(repr, choices)))


def check_range(
    field: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number inside the interval
    (``inf`` is refused too: no field of this project means anything at infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ConfigError(field, value, "expected a number")
    if not math.isfinite(value):
        raise ConfigError(field, value, "expected a finite number")
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        left = "(-inf" if low is None else ("[" if low_inclusive else "(") + f"{low:g}"
        right = "inf)" if high is None else f"{high:g}" + ("]" if high_inclusive else ")")
        raise ConfigError(field, value, f"expected a value in {left}, {right}")


def check_positive_int(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(field, value, "expected an integer >= 1")


def check_fraction(field: str, value: float) -> None:
    """A ratio given as a fraction in [0, 1] (not a percent)."""
    check_range(field, value, 0.0, 1.0)


def _field_docs(config_cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body, the project's
    convention), looked up in the class and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(config_cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for statement, following in zip(body, body[1:]):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


def config_fields_help(config: Any) -> list[tuple[str, Any, str]]:
    """``(dotted path, value, help)`` of every settable leaf of the dataclass instance
    ``config`` (see :func:`config_paths`), in field order, sub-configs expanded in place."""
    docs = _field_docs(type(config))
    rows: list[tuple[str, Any, str]] = []
    for f in dataclasses.fields(config):
        if not f.repr:
            continue
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            rows += [(f"{f.name}.{path}", v, text) for path, v, text in config_fields_help(value)]
        else:
            rows.append((f.name, value, docs.get(f.name, "")))
    return rows


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as a plain dict (tuples become lists, sub-configs nested dicts)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def flat_config(config: Any) -> dict[str, Any]:
    """A dataclass config as ``{dotted path: value}`` (the keys ``--set`` takes), JSON values."""

    def flatten(record: dict[str, Any], prefix: str) -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for key, value in record.items():
            if isinstance(value, dict):
                flat.update(flatten(value, f"{prefix}{key}."))
            else:
                flat[prefix + key] = value
        return flat

    return flatten(config_to_dict(config), "")


def config_from_dict(config_cls: type[T], record: Mapping[str, Any]) -> T:
    """The dataclass config that :func:`config_to_dict` wrote as ``record`` (sub-configs
    rebuilt, lists back to tuples where the field is a tuple), validated.

    Raises:
        ValueError: a key that is not a field of ``config_cls`` (a record of another version).
    """
    hints = typing.get_type_hints(config_cls)
    names = {f.name for f in dataclasses.fields(config_cls)}
    values: dict[str, Any] = {}
    for name, value in record.items():
        if name not in names:
            raise ValueError(f"{name!r} is not a field of {config_cls.__name__}")
        hint, _ = _strip_optional(hints[name])
        if _is_config(hint) and isinstance(value, Mapping):
            value = config_from_dict(hint, value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return config_cls(**values)


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _parse_scalar(field: str, text: str, hint: Any) -> Any:
    if hint is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(field, text, "expected a boolean (true/false)")
    if hint is int:
        try:
            number = float(text)
        except ValueError:
            raise ConfigError(field, text, "expected an integer") from None
        if not number.is_integer():
            raise ConfigError(field, text, "expected an integer")
        return int(number)
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(field, text, "expected a number") from None
    if hint is str:
        return text
    raise ConfigError(field, text, f"cannot be set from the command line (type {hint})")


def _parse_value(field: str, text: str, hint: Any) -> Any:
    hint, optional = _strip_optional(hint)
    if optional and text.strip().lower() in ("none", "null"):
        return None
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        item_hint = args[0] if args else str
        items = [part for part in text.strip("[]() ").split(",") if part.strip()]
        values = [_parse_scalar(field, part.strip(), item_hint) for part in items]
        return tuple(values) if origin is tuple else values
    return _parse_scalar(field, text, hint)


def _is_config(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def config_paths(config_cls: type, prefix: str = "") -> dict[str, Any]:
    """Every settable leaf of dataclass ``config_cls`` as ``{dotted path: type hint}``.

    A field whose type is itself a dataclass (a sub-config, e.g. ``TrainConfig.loss``) is not a
    leaf: its fields are, as ``loss.clip_cov_ratio``. Fields declared with ``repr=False``
    (bookkeeping, not settings) are left out.
    """
    hints = typing.get_type_hints(config_cls)
    paths: dict[str, Any] = {}
    for f in dataclasses.fields(config_cls):
        if not f.repr:
            continue
        hint = hints[f.name]
        if _is_config(hint):
            paths.update(config_paths(hint, f"{prefix}{f.name}."))
        else:
            paths[prefix + f.name] = hint
    return paths


def get_path(config: Any, path: str) -> Any:
    """The value at dotted ``path`` of a (nested) dataclass config."""
    for name in path.split("."):
        config = getattr(config, name)
    return config


def replace_paths(config: T, changes: Mapping[str, Any]) -> T:
    """A copy of dataclass ``config`` with ``{dotted path: value}`` changes, sub-configs
    rebuilt (and so validated) through ``dataclasses.replace``."""
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path, value in changes.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, sub_changes in nested.items():
        direct[head] = replace_paths(direct.get(head, getattr(config, head)), sub_changes)
    return dataclasses.replace(config, **direct)


def _unknown_key(key: str, paths: Sequence[str]) -> str:
    """The did-you-mean part of an unknown-key error: close paths, or the paths that end in
    ``key`` (``temperature`` -> ``train.temperature``)."""
    leaf = key.rpartition(".")[2]
    close = [p for p in paths if p.rpartition(".")[2] == leaf]
    close += difflib.get_close_matches(key, [p for p in paths if p not in close], n=3, cutoff=0.5)
    if close:
        return f"unknown key; did you mean {', '.join(close[:3])}?"
    return "unknown key; valid keys: " + ", ".join(paths)


def apply_overrides(config: T, overrides: Sequence[str]) -> T:
    """Return a copy of dataclass ``config`` with ``key=value`` overrides applied and validated.

    Keys are dotted paths into sub-configs (``loss.clip_cov_ratio=1e-3``; in an experiment
    config ``train.temperature=0.8``). Values are parsed by the field's type hint (``int``,
    ``float``, ``bool``, ``str``, optional and tuple/list of those, written ``a,b,c``). An
    unknown key raises :class:`ConfigError` naming the closest valid keys. A ``scale``
    override (``TrainConfig``'s scale preset, :mod:`toy_entropy.training.scale_presets`) is applied
    before the others, which then override the scale's values.
    """
    paths = config_paths(type(config))
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("--set", item, "expected key=value")
        if key not in paths:
            raise ConfigError(key, text, _unknown_key(key, list(paths)))
        changes[key] = _parse_value(key, text, paths[key])
    scales = {k: v for k, v in changes.items() if k.rpartition(".")[2] == "scale"}
    if scales and len(changes) > len(scales):  # first, so that the others override it
        config = replace_paths(config, scales)
        changes = {k: v for k, v in changes.items() if k not in scales}
    return replace_paths(config, changes)
