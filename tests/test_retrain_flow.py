"""The whole flow on a small real slice: real model, real Great Expectations, DVC, MLflow and Prefect."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows.retrain import retrain
from pipeline.governance.aliases import alias_history
from pipeline.governance.store import connect
from pipeline.governance.versions import champion_version, list_versions
from pipeline.config import load_config
from pipeline.errors import AuditFailed, DataError
from tests.conftest import load_registered, make_project


@pytest.fixture(scope="module")
def trained_project(tmp_path_factory):
    """One project, retrained twice: a first run, then one whose gate it cannot pass."""
    project = make_project(tmp_path_factory.mktemp("flow") / "project", gates={"min_accuracy": 0.0})
    first = retrain(str(project))
    second = retrain(str(project), ["gates.min_accuracy=1.0", "train.seed=7"])
    return project, first, second


def test_first_run_registers_a_champion_with_lineage(trained_project):
    project, first, _ = trained_project
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert first.data_version == lock["stages"]["split"]["outs"][0]["md5"]
    assert (first.version, first.alias) == ("1", "champion")
    assert "no current champion" in first.reason

    config = load_config(project)
    client = connect(config).client
    version = client.get_model_version(config.registry.model_name, "1")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    assert version.tags["git_commit"].startswith(head)
    assert version.tags["data_version"] == first.data_version
    assert version.tags["params_hash"] == config.params_hash()
    assert version.tags["promotion_decision"] == "champion"
    run = client.get_run(version.run_id)
    reports = {a.path for a in client.list_artifacts(run.info.run_id, "reports")}
    assert {"reports/audit.json", "reports/audit.html", "reports/evaluation.json",
            "reports/evaluation.html", "reports/confusion_matrix.png"} <= reports
    assert run.data.params["train.method"] == "lora"
    assert run.data.metrics["test_accuracy"] == pytest.approx(first.metrics["test_accuracy"])
    assert 0 < run.data.metrics["trainable_params"] < run.data.metrics["total_params"]


def test_summary_prints_the_audit_verdict_and_its_warnings(trained_project):
    project, first, _ = trained_project
    lines = str(first).splitlines()
    assert lines[0].split(None, 1) == ["audit", first.audit] and first.audit.startswith("passed, ")
    assert first.audit_failures and all(line.startswith("warning: data/raw/sst2/") for line in first.audit_failures)
    assert lines[1:1 + len(first.audit_failures)] == [f"  {line}" for line in first.audit_failures]


def test_champion_loads_and_predicts_label_names(trained_project):
    project, first, _ = trained_project
    config = load_config(project)
    model = load_registered(config, f"models:/{config.registry.model_name}@champion")
    predictions = model.predict(pd.DataFrame({"text": ["a moving, funny film", "a dull mess", "fine"]}))
    assert len(predictions) == 3
    assert set(predictions["label"]) <= {"negative", "positive"}
    assert predictions["score"].between(0.5, 1.0).all()
    as_list = model.predict(["a moving, funny film", "a dull mess", "fine"])
    pd.testing.assert_frame_equal(as_list, predictions)


def test_second_run_that_fails_a_gate_is_challenger_and_says_why(trained_project):
    project, first, second = trained_project
    assert second.data_version == first.data_version          # same data: dvc repro was a no-op
    assert (second.version, second.alias) == ("2", "challenger")
    assert "< floor 1.0000" in second.reason
    config = load_config(project)
    champion = champion_version(connect(config))
    assert champion.version == "1"
    rows = {row.version: row for row in list_versions(connect(config))}
    assert rows["2"].aliases == ["challenger"] and rows["1"].aliases == ["champion"]
    assert rows["2"].tags["promotion_reason"] == second.reason


def test_models_command_prints_versions_aliases_and_metrics(trained_project):
    project, first, _ = trained_project
    result = subprocess.run([sys.executable, "-m", "flows.cli", "--project-dir", str(project), "models"],
                            capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["version", "aliases", "created", "test_accuracy"]
    assert lines[2].split()[:2] == ["1", "champion"]
    assert f"{first.metrics['test_accuracy']:.4f}" in lines[2]


def _rewrite(change):
    def rewrite(path):
        change(pd.read_csv(path, sep="\t", dtype=str)).to_csv(path, sep="\t", index=False)
    return rewrite


def _latin1(path):
    path.write_bytes(path.read_bytes() + "caf\u00e9 cr\u00e8me\t1\n".encode("latin-1"))


@pytest.mark.parametrize("break_file, error, message", [
    (_rewrite(lambda f: f.drop(columns=["sentence"])), AuditFailed, "column 'sentence' is missing"),
    (_rewrite(lambda f: f.assign(label=["positive"] + list(f["label"][1:]))), AuditFailed,
     "error: data/raw/sst2/train.tsv: label_type (label): 1 row(s) (0.25%) are not integers; e.g. row 1: 'positive'"
     "\n  error: data/raw/sst2/train.tsv: label_in_set (label): 1 row(s) (0.25%) are outside the label set "
     "['0', '1']; e.g. row 1: 'positive'"),
    (_latin1, DataError, "train.tsv: not UTF-8 text: byte 0xe9 at line 402, column 4"),
])
def test_bad_data_stops_the_run_at_the_audit_and_registers_nothing(tmp_path, break_file, error, message):
    project = make_project(tmp_path / "project")
    break_file(project / "data/raw/sst2/train.tsv")
    with pytest.raises(error) as info:
        retrain(str(project))
    assert message in str(info.value)
    assert not (project / "dvc.lock").exists()
    assert list_versions(connect(load_config(project))) == []


def test_cli_exits_non_zero_with_the_message_on_bad_data(tmp_path):
    project = make_project(tmp_path / "project")
    train = project / "data/raw/sst2/train.tsv"
    pd.read_csv(train, sep="\t", dtype=str).drop(columns=["label"]).to_csv(train, sep="\t", index=False)
    result = subprocess.run([sys.executable, "-m", "flows.cli", "--project-dir", str(project), "retrain"],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "tunegate: error: Data audit failed" in result.stderr
    assert "column 'label' is missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_run_logs_the_evaluation_report_and_its_key_numbers(trained_project):
    project, first, second = trained_project
    config = load_config(project)
    client = connect(config).client
    run = client.get_run(client.get_model_version(config.registry.model_name, "1").run_id)
    for name in ("test_f1_macro", "test_ece", "general_stsb_spearman", "forgetting_stsb", "retained_stsb",
                 "eec_gender_gap", "eec_race_gap", "eec_race_p_value"):
        assert run.data.metrics[name] == pytest.approx(first.metrics[name], nan_ok=True)
    logged = {f.path for f in client.list_artifacts(run.info.run_id, "reports")}
    assert {"reports/evaluation.json", "reports/evaluation.html", "reports/confusion_matrix.png",
            "reports/general_base_vs_candidate.png", "reports/counterfactual_groups.png"} <= logged
    # Every gate is said in words, the forgetting and bias gates too.
    assert "forgetting stsb" in first.reason and "eec gender gap" in first.reason and "eec race gap" in first.reason


def test_evaluate_command_scores_a_registered_version_as_the_flow_did(trained_project):
    project, first, _ = trained_project
    result = subprocess.run([sys.executable, "-m", "flows.cli", "--project-dir", str(project), "evaluate",
                             "models:/tunegate-sst2/1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    printed = dict(line.split(maxsplit=1) for line in result.stdout.splitlines())
    assert float(printed["test_accuracy"]) == pytest.approx(first.metrics["test_accuracy"], abs=1e-4)
    assert float(printed["forgetting_stsb"]) == pytest.approx(first.metrics["forgetting_stsb"], abs=1e-4)
    assert printed["report"].endswith("models-tunegate-sst2-1/evaluation.json")
    assert json.loads(Path(printed["report"]).read_text())["metrics"]["test_accuracy"] == pytest.approx(
        first.metrics["test_accuracy"])


def test_evaluate_command_says_what_is_wrong_with_a_bad_uri(trained_project):
    project, _, _ = trained_project
    result = subprocess.run([sys.executable, "-m", "flows.cli", "--project-dir", str(project), "evaluate",
                             "models:/tunegate-sst2/99"], capture_output=True, text=True)
    assert result.returncode == 1
    assert "tunegate: error: No models:/tunegate-sst2/99 in the registry" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_decision_is_logged_and_printed_with_each_gates_numbers(trained_project):
    project, first, second = trained_project
    assert second.decision["verdict"] == "reject" and second.decision["alias"] == "challenger"
    assert second.decision["champion"] == {"version": "1", "data_version": first.data_version, "remeasured": False}
    floor = second.decision["gates"][0]
    assert (floor["name"], floor["threshold"], floor["passed"]) == ("accuracy_floor", 1.0, False)
    assert floor["baseline"] == pytest.approx(first.metrics["test_accuracy"])
    lines = str(second).splitlines()
    assert "champion version 1, its own metrics, same data version" in lines[lines.index(
        next(line for line in lines if line.startswith("decision"))) + 1]
    assert any(line.split()[0] == "accuracy_floor" and line.endswith("FAIL") for line in lines)
    config = load_config(project)
    client = connect(config).client
    run_id = client.get_model_version(config.registry.model_name, "2").run_id
    assert json.loads(Path(client.download_artifacts(run_id, "decision.json")).read_text()) == second.decision
    assert client.get_run(run_id).data.metrics["champion_test_accuracy"] == pytest.approx(
        first.metrics["test_accuracy"])
    history = alias_history(connect(config))
    assert [(m.alias, m.to_version) for m in history] == [("champion", "1"), ("challenger", "2")]
