"""Runs of the tunegate command line that a test kills with SIGKILL at a point it picks: when a function is first
called (`before`) or has first returned (`after`). Only where the process dies is chosen; every system runs for real.

`python -m tests.kill_at` reads one run a line from stdin, as JSON: {"args": [...], "log": path, "target":
"module:name" or "module:Class.method" or null, "when": "before" | "after"}, and answers each with its exit code
({"returncode": -9} when killed). Each run is a process forked from this one, which has imported tunegate once and
runs nothing itself: a run starts as a fresh `tunegate` process would, without its 15 s of imports.
"""
from __future__ import annotations

import functools
import importlib
import json
import os
import signal
import sys
import traceback

import flows.continual  # noqa: F401  (imported once here, for every run)
import flows.retrain  # noqa: F401
from flows.cli import main

KILLED_AT = "kill_at: SIGKILL at"   # the run's last line, so that a test sees it died where it chose


def kill_at(target: str, when: str) -> None:
    module, _, path = target.partition(":")
    owner = importlib.import_module(module)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)

    def die() -> None:
        print(f"{KILLED_AT} {target} ({when})", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    @functools.wraps(original)
    def killing(*args, **kwargs):
        if when == "before":
            die()
        original(*args, **kwargs)
        die()

    setattr(owner, name, killing)


def run(request: dict) -> int:
    pid = os.fork()
    if pid:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, sys.stdout.fileno())
    os.dup2(log, sys.stderr.fileno())
    code = 1
    try:
        if request.get("target"):
            kill_at(request["target"], request["when"])
        code = main(request["args"])
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)   # not this process's exit handlers: they belong to the parent


if __name__ == "__main__":
    for line in sys.stdin:
        print(json.dumps({"returncode": run(json.loads(line))}), flush=True)
