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
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

__all__ = [
    "ConfigError",
    "apply_overrides",
    "config_to_dict",
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


def config_fields_help(config_cls: type) -> list[tuple[str, Any, str]]:
    """``(name, default, help)`` of every field of dataclass ``config_cls``, in field order.

    The help is the field's docstring (the string literal under it in the class body, the
    project's convention), looked up in the class and its bases.
    """
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
    defaults = config_cls()
    return [
        (f.name, getattr(defaults, f.name), docs.get(f.name, ""))
        for f in dataclasses.fields(config_cls)
        if f.repr
    ]


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as a plain dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


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


def apply_overrides(config: T, overrides: Sequence[str]) -> T:
    """Return a copy of dataclass ``config`` with ``key=value`` overrides applied and validated.

    Values are parsed by the field's type hint (``int``, ``float``, ``bool``, ``str``, optional
    and tuple/list of those, written ``a,b,c``). An unknown key raises :class:`ConfigError`
    naming the closest valid keys. A ``preset`` override (``TrainConfig``'s scale preset) is
    applied before the others, which then override the preset's values.
    """
    hints = typing.get_type_hints(type(config))
    names = [f.name for f in dataclasses.fields(config)]
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("--set", item, "expected key=value")
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
            hint = (
                f"did you mean {', '.join(close)}?" if close else "valid keys: " + ", ".join(names)
            )
            raise ConfigError(key, text, f"unknown key; {hint}")
        changes[key] = _parse_value(key, text, hints[key])
    if "preset" in changes and len(changes) > 1:  # first, so that the others override it
        config = dataclasses.replace(config, preset=changes.pop("preset"))
    return dataclasses.replace(config, **changes)
