"""Run directories: config.json, metrics.jsonl, TensorBoard events and summary.json.

The layout is the interface users script against (docs/OUTPUTS.md):

    DIR/config.json            resolved config, seed, device, package and torch versions
    DIR/summary.json           headline numbers and claims
    DIR/metrics.jsonl          one JSON object per step: "step", "entropy", "reward", ...
    DIR/events.out.tfevents.*  TensorBoard

Metric names: a name without a slash (``entropy``, ``reward``) is a headline value; it is stored
under that name in metrics.jsonl and under ``charts/<name>`` in TensorBoard. A name with a slash
(``identity/predicted_dH``) is stored as is in both. Wall-clock measurements (``perf/...``) go
to TensorBoard only, so that metrics.jsonl is identical for the same config and seed.

Resuming: ``RunWriter(directory, resume_from_step=k)`` drops the metrics.jsonl rows after step k
and rewrites the TensorBoard event files without the events after step k (k = -1: start the
directory's logs over), so every (tag, step) appears exactly once for every TensorBoard loader,
not only for those that honour a purge marker.

Every file of a run directory gets the same permission mode (0666 less the umask).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

import toy_entropy

__all__ = [
    "RunWriter",
    "atomic_write_text",
    "atomic_write_json",
    "drop_events_after",
    "environment_info",
    "file_mode",
    "tensorboard_tag",
    "to_jsonable",
    "truncate_metrics",
    "write_run_summary",
]


def file_mode() -> int:
    """The mode ``open()`` gives a new file: 0666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half-written."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes 0600; the run's other files are 0666-umask
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except OSError as error:
        Path(tmp_name).unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from None
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def to_jsonable(value: Any) -> Any:
    """Convert tensors, numpy scalars, tuples and dataclass-like values to JSON types.

    Non-finite floats become ``None`` so that the files stay strict JSON.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return to_jsonable(value.tolist())
    return value


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(to_jsonable(data), indent=2, sort_keys=False) + "\n")


def environment_info(device: str) -> dict[str, str]:
    """Versions and device recorded with every run."""
    return {
        "toy_entropy_version": toy_entropy.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": device,
    }


def write_run_summary(
    directory: Path,
    name: str,
    seed: int,
    headline: Mapping[str, Any] | None = None,
    claims: Sequence[Any] = (),
    status: str = "finished",
    reason: str | None = None,
) -> None:
    """summary.json, one schema for every entry point: the headline numbers and claims of a
    finished run, or ``status="stopped"`` and the ``reason`` why it stopped."""
    summary: dict[str, Any] = {"experiment": name, "seed": seed, "status": status}
    if reason is not None:
        summary["reason"] = reason
    summary["headline"] = dict(headline or {})
    summary["claims"] = [claim.to_dict() for claim in claims]
    atomic_write_json(Path(directory) / "summary.json", summary)


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the metrics.jsonl rows with ``step <= last_step`` (and drop a torn last line)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill mid-write
            continue
        if row.get("step", last_step + 1) <= last_step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def drop_events_after(directory: Path, last_step: int) -> None:
    """Rewrite the TensorBoard event files of ``directory`` without events after ``last_step``.

    The kept events go to one new event file (written completely, in a temporary directory,
    before the old files are deleted); a torn last record of a killed run is dropped.
    """
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    directory = Path(directory)
    old_files = sorted(directory.glob("events.out.tfevents.*"))
    if not old_files:
        return
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=".events-rewrite."))
    try:
        if last_step >= 0:
            writer = EventFileWriter(str(staging), filename_suffix=".resumed")
            for old in old_files:
                for event in LegacyEventFileLoader(str(old)).Load():
                    if not event.HasField("file_version") and event.step <= last_step:
                        writer.add_event(event)
            writer.close()
        for new in staging.iterdir():
            os.chmod(new, file_mode())
            os.replace(new, directory / new.name)
        for old in old_files:
            old.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def tensorboard_tag(name: str) -> str:
    """The TensorBoard tag of metric ``name``: ``charts/<name>`` for a headline name."""
    return name if "/" in name else f"charts/{name}"


class RunWriter:
    """Writes one run's metrics to metrics.jsonl and TensorBoard, and its summary.json.

    Args:
        directory: the run directory; created if missing.
        tensorboard: write TensorBoard event files next to metrics.jsonl.
    """

    def __init__(
        self, directory: str | Path, tensorboard: bool = True, resume_from_step: int | None = None
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._metrics_file = None  # opened on the first row, so a run without steps has no file
        self._tb = None
        if resume_from_step is not None:
            truncate_metrics(self.directory / "metrics.jsonl", resume_from_step)
            drop_events_after(self.directory, resume_from_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.directory))

    @property
    def tensorboard(self):
        """The underlying ``torch.utils.tensorboard.SummaryWriter`` (or ``None``)."""
        return self._tb

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Append one metrics.jsonl row ``{"step": step, **metrics}`` and the TB scalars."""
        row = {"step": int(step)}
        row.update({name: to_jsonable(value) for name, value in metrics.items()})
        if self._tb is not None:
            for name, value in row.items():
                if name != "step" and isinstance(value, (int, float)) and value is not None:
                    self._tb.add_scalar(tensorboard_tag(name), value, int(step))
        row = {name: value for name, value in row.items() if not name.startswith("perf/")}
        if self._metrics_file is None:
            self._metrics_file = open(self.directory / "metrics.jsonl", "ab", buffering=0)  # noqa: SIM115
        line = (json.dumps(row) + "\n").encode("utf-8")
        start = self._metrics_file.tell()
        try:
            view = memoryview(line)
            while view:
                view = view[self._metrics_file.write(view) :]
        except OSError as error:
            self._metrics_file.truncate(start)  # never leave a torn line (e.g. a full disk)
            raise OSError(error.errno, error.strerror, self._metrics_file.name) from None

    def add_figure(self, tag: str, figure, step: int = 0) -> None:
        """Log a matplotlib figure as a TensorBoard image (and close it)."""
        if self._tb is not None:
            self._tb.add_figure(tag, figure, global_step=step, close=True)
        else:
            import matplotlib.pyplot as plt

            plt.close(figure)

    def add_text(self, tag: str, text: str, step: int = 0) -> None:
        if self._tb is not None:
            self._tb.add_text(tag, text, global_step=step)

    def add_histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        """Log a histogram of ``values``; nothing when there are none (e.g. a rollout whose
        every group the all-equal filter dropped), which TensorBoard refuses."""
        if self._tb is not None and values.numel():
            self._tb.add_histogram(tag, values.detach().float().cpu(), global_step=step)

    def write_config(self, config: Mapping[str, Any]) -> None:
        """Save the resolved config as config.json and as TensorBoard text."""
        atomic_write_json(self.directory / "config.json", config)
        body = json.dumps(to_jsonable(config), indent=2)
        self.add_text("config", "```\n" + body + "\n```")

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        atomic_write_json(self.directory / "summary.json", summary)

    def add_hparams(self, hparams: Mapping[str, Any], final_metrics: Mapping[str, float]) -> None:
        """Log the run's scalar config values and final metrics to TensorBoard's HPARAMS tab."""
        if self._tb is None:
            return
        plain = {
            k: v
            for k, v in to_jsonable(dict(hparams)).items()
            if isinstance(v, (int, float, str, bool))
        }
        finals = {f"hparams/{k.replace('/', '_')}": float(v) for k, v in final_metrics.items()}
        self._tb.add_hparams(plain, finals, run_name=".")

    def close(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
