"""Processes a run starts (its Prefect server, torchrun and its ranks) end with the process that started them.

Linux's parent-death signal: the kernel sends SIGTERM to the child when its parent ends, however it ends (SIGKILL
included), so nothing of a killed run is left running, adopted by init. Elsewhere, the run's own clean-up must do.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1   # prctl(2), linux/prctl.h


def die_with_parent(parent: int | None = None) -> None:
    """In a child process before it runs its program (a Popen preexec_fn): SIGTERM when the parent ends. With
    parent (the pid that started it): exit at once if it has ended already, before the signal was set."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent is not None and os.getppid() != parent:
        os._exit(1)
