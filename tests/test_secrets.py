"""A whole run against a tracking store whose URI holds a password, with a token in the environment: neither
appears in the run's log, the store's params, tags and descriptions, any artifact or report, or the model card.
The same log is what an operator reads: no carriage-return progress bars, no library chatter."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from pipeline.governance.store import connect
from pipeline.config import load_config
from tests.conftest import assert_operator_log, make_project, scratch_database

SECRET = f"pl4nted-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def secret_run(tmp_path_factory):
    with scratch_database("tg_secrets") as database:
        project = make_project(tmp_path_factory.mktemp("secrets") / "project", gates={"min_accuracy": 0.0})
        # trust auth: the server ignores the password, so the run works and the secret travels through everything
        uri = f"postgresql://postgres:{SECRET}@127.0.0.1:5432/{database}"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "TUNEGATE_API_TOKEN": f"{SECRET}-token"}
        run = subprocess.run([sys.executable, "-m", "flows.cli", "--project-dir", str(project), "retrain"],
                             cwd=project, env=env, capture_output=True, text=True)
        yield project, uri, run


def test_the_run_succeeds_with_the_secret_in_its_store_uri(secret_run):
    _, _, run = secret_run
    assert run.returncode == 0, run.stderr[-3000:]
    assert "registered" in run.stdout


def test_no_secret_in_the_log_params_tags_descriptions_or_any_file(secret_run, monkeypatch):
    project, uri, run = secret_run
    assert SECRET not in run.stdout + run.stderr
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = load_config(project)
    client = connect(config).client
    versions = client.search_model_versions(f"name = '{config.registry.model_name}'")
    assert versions
    for version in versions:
        stored = client.get_run(version.run_id).data
        assert SECRET not in repr((stored.params, stored.tags, version.tags, version.description))
    # every file the run wrote: reports, the model card, lineage (params.yaml, dvc.lock), the logged model
    written = [path for path in project.rglob("*") if path.is_file() and ".git" not in path.parts]
    assert any(path.name == "lineage.json" for path in written) and any(path.name == "README.md" for path in written)
    leaking = [str(path) for path in written if SECRET.encode() in path.read_bytes()]
    assert leaking == []


def test_the_log_is_what_an_operator_reads(secret_run):
    _, _, run = secret_run
    # training progress as lines, and the run's summary (Prefect's own step lines are at WARNING here)
    assert_operator_log(run.stdout + run.stderr, ["loss", "audit", "data version", "registered", "decision"])
