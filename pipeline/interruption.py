"""Ctrl-C during a run: a request to stop at the next safe point, not at once.

Stopping wherever SIGINT lands can leave a checkpoint, a DVC push or a registration half-written. The CLI makes
SIGINT set a flag; the flow checks it between steps and training after each step (no file is being written
then), and stops with Interrupted, before anything is registered. A second Ctrl-C stops at once.
"""
from __future__ import annotations

import signal
import threading

from pipeline.errors import Interrupted

_requested = threading.Event()


def stop_at_safe_points() -> None:
    """SIGINT (a terminal's Ctrl-C) asks the run to stop at its next safe point. From the main thread, by the
    CLI; it also undoes a SIGINT ignored since start (a shell's background job), which would keep a run going."""
    def on_sigint(signum, frame) -> None:
        if _requested.is_set():   # the second Ctrl-C
            raise KeyboardInterrupt
        _requested.set()

    signal.signal(signal.SIGINT, on_sigint)


def requested() -> bool:
    return _requested.is_set()


def stop_if_requested(resume: str = "resume") -> None:
    """A safe point: raise Interrupted if Ctrl-C was pressed; resume says what a run started again will do."""
    if requested():
        raise Interrupted(f"interrupted; nothing registered; run again to {resume}")
