"""Clean stops on SIGINT / SIGTERM: finish the current step, checkpoint it, exit 130 / 143.

A training loop calls :func:`check` between steps. After :func:`install`, the first SIGINT or
SIGTERM only records the request, so the step in flight completes and the loop can save a
consistent checkpoint before :func:`check` raises :class:`Interrupted`. In the main process a
second signal aborts at once (``KeyboardInterrupt``); worker processes ignore repeats, since a
terminal's Ctrl-C reaches them directly and again through the parent's forwarding.

Worker processes of a sweep are tied to their parent: :func:`die_with_parent` makes the kernel
kill them when the parent dies, whatever the signal (SIGKILL included), and a watchdog thread
does the same where ``prctl`` is unavailable.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable

__all__ = [
    "Interrupted",
    "install",
    "restore_defaults",
    "check",
    "requested",
    "forward_to",
    "die_with_parent",
    "exit_code",
]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_requested: int | None = None
_forward: Callable[[], Iterable[int]] | None = None
_abort_on_repeat = True


class Interrupted(Exception):
    """A stop was requested by a signal; raised between steps by :func:`check`.

    Attributes:
        signum: the signal number (SIGINT or SIGTERM).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"interrupted by {signal.Signals(self.signum).name}"


def exit_code(signum: int) -> int:
    """The shell's exit status for a process ended by ``signum``: 130 for SIGINT, 143 SIGTERM."""
    return 128 + int(signum)


def _handle(signum: int, frame) -> None:
    global _requested
    if _requested is not None:
        if _abort_on_repeat:
            raise KeyboardInterrupt
        return
    _requested = signum
    if _forward is not None:
        for pid in list(_forward()):
            try:
                os.kill(pid, signum)
            except (ProcessLookupError, PermissionError):
                pass


def install(abort_on_repeat: bool = True) -> None:
    """Turn SIGINT and SIGTERM into stop requests (main thread only); clears an old request."""
    global _requested, _abort_on_repeat
    _requested, _abort_on_repeat = None, abort_on_repeat
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    for signum in _SIGNALS:
        signal.signal(signum, _handle)


def restore_defaults() -> None:
    """Give SIGINT and SIGTERM back their default handlers and forget any request."""
    global _requested
    _requested = None
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def requested() -> int | None:
    """The signal of a pending stop request, or None."""
    return _requested


def check() -> None:
    """Raise :class:`Interrupted` if a stop was requested (call it between steps)."""
    if _requested is not None:
        raise Interrupted(_requested)


def forward_to(pids: Callable[[], Iterable[int]] | None) -> None:
    """Pass the first stop signal on to the processes ``pids()`` lists (a sweep's workers)."""
    global _forward
    _forward = pids


def die_with_parent(poll_seconds: float = 0.5) -> None:
    """End this process when its parent dies (for worker processes; call it at their start)."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
