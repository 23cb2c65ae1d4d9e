"""One run at a time in a project folder: the lock that a run holds while it reads and writes the project.

Two runs at once would race on DVC's split (DVC's own lock fails one of them with an unclear error), train into
the same output folder and register the same version twice. A second run refuses to start, naming the PID of the
run that holds the lock; the kernel releases it when that process ends, however it ends (SIGKILL included).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from pipeline.errors import ProjectBusy

LOCK_FILE = ".tunegate.lock"   # in the project folder; git-ignored


@contextmanager
def project_lock(project_dir: Path) -> Iterator[None]:
    """Hold the project's lock; ProjectBusy if another process holds it. Reentrant within a process (the CLI
    takes it before Prefect starts, the flow again for runs that a schedule starts)."""
    path = Path(project_dir).resolve() / LOCK_FILE
    lock = FileLock(path, is_singleton=True, thread_local=False)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise ProjectBusy(f"Another tunegate run (PID {_holder(path)}) is running in {path.parent}: wait for it to "
                          f"finish, or stop it, then run again.") from None
    try:
        if lock.lock_counter == 1:
            path.write_text(f"{os.getpid()}\n", encoding="utf-8")   # for the message of a run refused
        yield
    finally:
        lock.release()


def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"
