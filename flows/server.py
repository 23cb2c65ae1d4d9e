"""The temporary Prefect server of a `tunegate` run, owned by the run.

Without PREFECT_API_URL, Prefect starts a temporary API server as a subprocess of the run (its ephemeral mode) and
stops it when the run exits normally. Two ways it outlives the run or dies before it: a terminal's Ctrl-C goes to
the whole process group, server included, which dies while the run still reports to it; and a run killed with
SIGKILL leaves the server running, adopted by init. The run's own server starts here instead, before the flow: in
a session of its own (a Ctrl-C reaches the run only), and with Linux's parent-death signal, so that the kernel
ends it when the run ends, however it ends. Prefect's clients find and use it (one temporary server a process).
"""
from __future__ import annotations

import functools
import os
import subprocess
from types import SimpleNamespace

from prefect.server.api import server as prefect_server
from prefect.settings import PREFECT_API_URL

from pipeline.processes import die_with_parent


class _RunOwnedServer(prefect_server.SubprocessASGIServer):
    def _run_uvicorn_command(self) -> subprocess.Popen:
        # Prefect's own command and environment, started with two more options (its module's subprocess only)
        popen = functools.partial(subprocess.Popen, start_new_session=True,
                                  preexec_fn=functools.partial(die_with_parent, os.getpid()))
        prefect_server.subprocess = SimpleNamespace(Popen=popen)
        try:
            return super()._run_uvicorn_command()
        finally:
            prefect_server.subprocess = subprocess


def start_temporary_server() -> None:
    """Start the run's temporary Prefect server now, from the main thread (the parent-death signal follows the
    thread that started the process), unless PREFECT_API_URL names a server to use."""
    if not PREFECT_API_URL.value():
        _RunOwnedServer().start()
