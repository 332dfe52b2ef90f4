"""Scale presets of the sequence trainer: one field moves a run from the CPU toy to GPU sizes.

``TrainConfig(scale="gpu-small")`` (on the command line ``--set scale=gpu-small``) sets the
vocabulary (task tokens plus distractors), the task's answer length, the model, the batch, the
memory knobs and bf16 autocast together. The code path is the same for every preset: only
sizes and knobs change.

Resolution rule (:func:`apply_scale_preset`, run first in ``TrainConfig.__post_init__``): a
field *follows* the preset while it holds the value that the preset the config was last
resolved from gave it (``scale_resolved``; for a fresh config, the class default); choosing a
preset moves the fields that follow to the new preset's values, and every other field keeps its
value. So explicit values win, in the Python API (``TrainConfig(scale="gpu-small",
num_prompts=64)``) as on the command line, where ``--set scale=...`` is applied before the
other ``--set`` overrides (:func:`toy_entropy.training.config.apply_overrides`):
``--set scale=gpu-small --set num_mini_batches=1`` runs gpu-small with one mini-batch. The
one exception: in a single constructor call, a field given its class default explicitly next to
the preset is indistinguishable from an unset one and takes the preset's value.

Sizes (vocabulary V, answer length T incl. ``<eos>``, parameters with tied embeddings):

==============  ======  =====  ========  =======  ===========================
preset          V       T      model     params   batch (prompts x responses)
==============  ======  =====  ========  =======  ===========================
``cpu``         14      6      cpu-nano  26k      16 x 8
``gpu-small``   8192    256    gpu-10m   10.2M    256 x 8
``gpu-medium``  16384   512    gpu-30m   34.1M    256 x 8
``gpu-large``   32768   1024   gpu-100m  111.8M   256 x 8
==============  ======  =====  ========  =======  ===========================

The GPU tasks are ``reverse`` with lists of ``T - 1`` values out of 1000-4000 value tokens.
Learning rates of the GPU presets are starting points scaled down for larger models, not tuned.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from toy_entropy.training.config import get_path, replace_paths

__all__ = ["SCALE_PRESETS", "apply_scale_preset", "parse_task_kwargs"]

_GPU_COMMON: dict[str, Any] = dict(
    task="reverse",
    num_prompts=256,
    num_generations=8,
    chunked_log_probs=True,
    bf16=True,
    eval_prompts=64,
    eval_samples=8,
    **{"warmstart.learning_rate": 1e-3},
)

SCALE_PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "gpu-small": dict(
        _GPU_COMMON,
        task_kwargs="list_length=255,num_values=1000",
        extra_tokens=8192 - 1004,  # 1000 values, '=', pad, bos, eos
        model_size="gpu-10m",
        learning_rate=3e-4,
        num_mini_batches=4,
        micro_batch_size=64,
        rollout_micro_batch_size=512,
        probe_states=16,
    ),
    "gpu-medium": dict(
        _GPU_COMMON,
        task_kwargs="list_length=511,num_values=2000",
        extra_tokens=16384 - 2004,
        model_size="gpu-30m",
        learning_rate=1e-4,
        num_mini_batches=8,
        micro_batch_size=32,
        rollout_micro_batch_size=512,
        probe_states=8,
    ),
    "gpu-large": dict(
        _GPU_COMMON,
        task_kwargs="list_length=1023,num_values=4000",
        extra_tokens=32768 - 4004,
        model_size="gpu-100m",
        learning_rate=3e-5,
        num_mini_batches=16,
        micro_batch_size=8,
        rollout_micro_batch_size=256,
        probe_states=4,
    ),
}
"""Field values of each preset by dotted path (``warmstart.learning_rate``); ``cpu`` is the
TrainConfig defaults."""


def _class_default(config_cls: type, path: str) -> Any:
    """The value at dotted ``path`` of a default-constructed ``config_cls``, read from the field
    defaults (``config_cls()`` itself would resolve a preset)."""
    head, _, rest = path.partition(".")
    field = next(f for f in dataclasses.fields(config_cls) if f.name == head)
    value = field.default_factory() if field.default is dataclasses.MISSING else field.default
    return get_path(value, rest) if rest else value


def apply_scale_preset(config: Any) -> None:
    """Move the fields that follow the scale preset to ``config.scale``'s values, in place.

    A field follows the preset while it equals the value that ``config.scale_resolved`` (the
    preset the config was last resolved from) gives it, the class default where that preset
    names no value; afterwards ``scale_resolved`` is ``scale``.

    Args:
        config: a ``TrainConfig`` (or subclass) instance with ``scale`` and
            ``scale_resolved`` among :data:`SCALE_PRESETS`.

    Raises:
        ValueError: unknown preset name.
    """
    for field in ("scale", "scale_resolved"):
        if getattr(config, field) not in SCALE_PRESETS:
            raise ValueError(
                f"{field}={getattr(config, field)!r} is invalid: expected one of "
                + ", ".join(map(repr, SCALE_PRESETS))
            )
    old, new = SCALE_PRESETS[config.scale_resolved], SCALE_PRESETS[config.scale]
    moves = {}
    for path in {**old, **new}:
        default = _class_default(type(config), path)
        if get_path(config, path) == old.get(path, default):
            moves[path] = new.get(path, default)
    for path, value in moves.items():  # in place: replacing config would resolve it again
        head, _, rest = path.partition(".")
        setattr(
            config, head, replace_paths(getattr(config, head), {rest: value}) if rest else value
        )
    config.scale_resolved = config.scale


def _parse_value(text: str) -> Any:
    """``"12"`` -> 12, ``"0.5"`` -> 0.5, ``"none"`` -> None, ``"true"`` -> True, else the text."""
    lowered = text.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_task_kwargs(text: str) -> dict[str, Any]:
    """Task keyword arguments from ``"list_length=255,num_values=1000"``.

    Args:
        text: comma-separated ``key=value`` pairs (empty: no arguments). Values are read as
            int, float, bool (true/false), None (none) or else kept as text.

    Returns:
        ``{key: value}`` for ``envs.sequence.make_task``.

    Raises:
        ValueError: a pair without ``=``, an empty or repeated key, or ``extra_tokens`` (a
            TrainConfig field of its own).
    """
    kwargs: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise ValueError(f"task_kwargs={text!r} is invalid: {item!r} is not key=value")
        if key in kwargs or key == "extra_tokens":
            why = "is repeated" if key in kwargs else "is a field of its own (extra_tokens=...)"
            raise ValueError(f"task_kwargs={text!r} is invalid: {key!r} {why}")
        kwargs[key] = _parse_value(value)
    return kwargs
