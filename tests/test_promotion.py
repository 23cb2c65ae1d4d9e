"""Promotion against the champion measured on the candidate's data, a person's override and rollback, the alias
history in the tracking store and the promotion lock: a real MLflow store, real models, real evaluations."""
from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

from flows.cli import main
from pipeline.governance import gates, lineage
from pipeline.governance.aliases import LOCK_SUFFIX, alias_history, promotion_lock
from pipeline.governance.registration import Candidate, register_candidate
from pipeline.governance.store import connect
from pipeline.governance.versions import RegisteredVersion, champion_version
from pipeline.config import load_config
from pipeline.errors import PromotionError
from pipeline.tasks import evaluate_model
from pipeline.governance.promotion import CHAMPION_REPORTS, DECISION_RECORD, override, promote_candidate, rollback
from pipeline.data.split import read_split, write_splits
from tests.conftest import make_project

MODEL = "tunegate-sst2"
GATES = {"min_accuracy": 0.0, "champion_tolerance": 0.0, "max_forgetting": 0.5, "max_bias_gap": 0.5,
         "lock": {"lease_s": 600, "wait_s": 30, "poll_s": 0.2}}


def register(config, model_dir: Path, metrics: dict[str, float], data_version: str) -> RegisteredVersion:
    candidate = Candidate(model_dir=model_dir, params={"train": {"method": "lora"}}, metrics=metrics,
                                   tags={"data_version": data_version, "method": "lora"}, artifacts=[])
    return register_candidate(connect(config), candidate)


@pytest.fixture(scope="module")
def promoted(tmp_path_factory, tiny_models):
    """Three versions promoted by the flow's promote step:
    1  untrained head, on data version `old`, logged with a flattering accuracy of 0.99 -> champion;
    2  trained, on `new`: the champion is re-measured on `new` before the gates -> champion;
    3  untrained, on `new` too: the champion's own metrics are the baseline -> challenger."""
    # a project with small data, its splits written, and an empty registry
    project = make_project(tmp_path_factory.mktemp("promotion") / "project", parts=("sst2", "benchmarks"),
                           model={"max_length": 64}, gates=GATES)
    write_splits(load_config(project))
    config = load_config(project)
    test = read_split(config.path("data/splits/test.csv"))
    reports = project / "outputs/evaluation"
    measured = {name: evaluate_model(config, path, test, reports / name).metrics for name, path in tiny_models.items()}
    stale = {**measured["untrained"], "test_accuracy": 0.99}
    versions = [register(config, tiny_models["untrained"], stale, "old"),
                register(config, tiny_models["trained"], measured["trained"], "new"),
                register(config, tiny_models["untrained"], measured["untrained"], "new")]
    results = [promote_candidate(config, version, version.tags["data_version"], test, reports / f"v{i}/champion",
                                 "tests") for i, version in enumerate(versions, 1)]
    return config, measured, versions, results


def test_the_champion_is_remeasured_on_the_candidates_data_and_every_gate_reads_it(promoted):
    config, measured, versions, (first, second, third) = promoted
    assert (first.alias, first.baseline) == ("champion", None)
    # Compared with the 0.99 version 1 logged on other data, version 2 would fail; measured on the same test
    # split, version 1 (an untrained head) is the weaker one.
    assert second.alias == "champion" and second.baseline.remeasured
    assert second.baseline.version.version == "1"
    assert second.baseline.metrics["test_accuracy"] == pytest.approx(measured["untrained"]["test_accuracy"])
    assert measured["untrained"]["test_accuracy"] < measured["trained"]["test_accuracy"] < 0.99
    by_name = {gate.name: gate for gate in second.decision.gates}
    assert list(by_name) == ["accuracy_floor", "accuracy_vs_champion", "forgetting_stsb", "eec_gender_gap",
                             "eec_race_gap"]
    for gate in second.decision.gates:
        metric = "test_accuracy" if gate.name.startswith("accuracy") else gate.name
        assert gate.value == pytest.approx(measured["trained"][metric])
        assert gate.baseline == pytest.approx(measured["untrained"][metric], abs=1e-6)
        assert gate.passed is True
    assert by_name["accuracy_vs_champion"].threshold == pytest.approx(measured["untrained"]["test_accuracy"])
    assert by_name["forgetting_stsb"].threshold == 0.5 and by_name["eec_race_gap"].threshold == 0.5


def test_the_decision_record_and_the_champions_reports_are_in_the_candidates_run(promoted):
    config, measured, versions, (_, second, _) = promoted
    client = connect(config).client
    run = client.get_run(versions[1].run_id)
    for name in ("test_accuracy", "forgetting_stsb", "eec_gender_gap", "eec_race_gap"):
        assert run.data.metrics[f"champion_{name}"] == pytest.approx(second.baseline.metrics[name])
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, DECISION_RECORD)).read_text())
    assert logged == json.loads(json.dumps(second.as_record()))
    assert logged["verdict"] == "promote" and logged["alias"] == "champion"
    assert logged["champion"] == {"version": "1", "data_version": "old", "remeasured": True}
    assert logged["gates"][1] == {"name": "accuracy_vs_champion", "value": second.decision.gates[1].value,
                                  "threshold": second.decision.gates[1].threshold,
                                  "baseline": second.decision.gates[1].baseline, "passed": True,
                                  "reason": second.decision.reasons[1]}
    reports = {Path(f.path).name for f in client.list_artifacts(run.info.run_id, CHAMPION_REPORTS)}
    assert {"evaluation.json", "evaluation.html"} <= reports


def test_same_data_version_reuses_the_champions_own_metrics(promoted):
    config, measured, versions, (_, _, third) = promoted
    assert third.alias == "challenger" and not third.baseline.remeasured and third.baseline.artifacts == []
    assert third.baseline.metrics["test_accuracy"] == measured["trained"]["test_accuracy"]
    assert not third.decision.promote
    assert f"accuracy {measured['untrained']['test_accuracy']:.4f} < champion's" in third.decision.summary
    client = connect(config).client
    assert client.list_artifacts(versions[2].run_id, CHAMPION_REPORTS) == []
    # version 2's run also holds the champion_* numbers it was compared with: as a baseline, only its own count
    assert not [name for name in third.baseline.metrics if gates.logged_by_promotion(name)]
    logged = client.get_run(versions[2].run_id).data.metrics
    assert [name for name in logged if name.startswith("champion_champion_")] == []
    assert logged["champion_test_accuracy"] == measured["trained"]["test_accuracy"]


def test_models_lists_each_versions_own_gated_metrics(promoted, capsys):
    config = promoted[0]
    assert main(["--project-dir", str(config.project_dir), "models"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert {"test_accuracy", "forgetting_stsb", "eec_gender_gap", "eec_race_gap"} <= set(header)
    assert [column for column in header if column.startswith("champion_")] == []


def test_forgetting_and_bias_gates_fail_on_their_limits_with_the_remeasured_baseline(promoted):
    config, measured, _, (_, second, _) = promoted
    strict = config.gates.model_copy(update={"max_forgetting": -1.0, "max_bias_gap": 0.0})
    decision = gates.decide(measured["trained"], second.baseline.metrics, strict)
    failed = {gate.name: gate for gate in decision.gates if gate.passed is False}
    assert not decision.promote and {"forgetting_stsb", "eec_gender_gap", "eec_race_gap"} <= set(failed)
    assert failed["forgetting_stsb"].baseline == second.baseline.metrics["forgetting_stsb"]
    assert failed["forgetting_stsb"].threshold == -1.0


def test_override_and_rollbacks_move_the_champion_and_the_history_says_who_and_why(promoted):
    config = promoted[0]
    assert champion_version(connect(config)).version == "2"
    moved = override(config, f"models:/{MODEL}/3", "hotfix: version 2 mislabels refunds", "alice")
    assert (moved.from_version, moved.to_version, moved.by) == ("2", "3", "alice")
    assert champion_version(connect(config)).version == "3"
    assert rollback(config, "the hotfix made it worse", "bob").to_version == "2"
    assert rollback(config, "back to the first", "bob").to_version == "1"
    with pytest.raises(PromotionError, match="no earlier champion to roll back to"):
        rollback(config, "once more", "bob")
    history = [(m.action, m.alias, m.from_version, m.to_version, m.by) for m in alias_history(connect(config))]
    assert history == [("flow decision", "champion", None, "1", "tests"),
                       ("flow decision", "champion", "1", "2", "tests"),
                       ("flow decision", "challenger", None, "3", "tests"),
                       ("override", "champion", "2", "3", "alice"),
                       ("rollback", "champion", "3", "2", "bob"),
                       ("rollback", "champion", "2", "1", "bob")]
    assert alias_history(connect(config))[3].reason == "hotfix: version 2 mislabels refunds"

    printed = subprocess.run([sys.executable, "-m", "flows.cli", "--project-dir", str(config.project_dir), "models",
                              "--history"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert printed[0].split() == ["time", "action", "alias", "from", "to", "by", "reason"]
    assert [line.split()[1:3] for line in printed[1:]] == [["flow", "decision"]] * 3 + [
        ["override", "champion"], ["rollback", "champion"], ["rollback", "champion"]]
    assert printed[4].split()[3:7] == ["2", "3", "alice", "hotfix:"]


def _model_files(config, version: str) -> Path:
    client = connect(config).client
    model_id = client.get_model_version(MODEL, version).source.removeprefix("models:/")
    return Path(urlparse(client.get_logged_model(model_id).artifact_location).path)


def _artifacts_gone(config, version: str) -> None:
    shutil.rmtree(_model_files(config, version))


def _weights_gone(config, version: str) -> None:
    (_model_files(config, version) / "artifacts/model/model.safetensors").unlink()


def _weights_changed(config, version: str) -> None:
    """One byte of the weights flipped: the same size, another sha256."""
    weights = _model_files(config, version) / "artifacts/model/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))


DAMAGE = {"4": _artifacts_gone, "5": _weights_gone, "6": _weights_changed}   # versions registered by the test below


def test_a_version_records_the_size_and_sha256_of_its_weights(promoted, tiny_models):
    config, _, versions, _ = promoted
    weights = tiny_models["trained"] / "model.safetensors"
    tags = connect(config).client.get_model_version(MODEL, versions[1].version).tags
    assert lineage.recorded_weights(tags) == {"model.safetensors": {
        "size": str(weights.stat().st_size), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}}


@pytest.mark.parametrize("argv, message", [
    (["promote", f"models:/{MODEL}/99", "--reason", "x"], f"No models:/{MODEL}/99 in the registry"),
    (["promote", f"models:/{MODEL}@nosuch", "--reason", "x"], f"No models:/{MODEL}@nosuch in the registry"),
    (["promote", "models:/other-model/1", "--reason", "x"], f"is not a version of {MODEL}"),
    (["promote", f"models:/{MODEL}/2"], "needs --reason"),
    (["rollback", "--reason", " "], "needs --reason"),
    (["promote", f"models:/{MODEL}/4", "--reason", "x"], "its model files are gone"),
    (["promote", f"models:/{MODEL}/5", "--reason", "x"], "model.safetensors is missing. Nothing was moved"),
    (["promote", f"models:/{MODEL}/6", "--reason", "x"], "bytes), registered "),
])
def test_bad_input_is_one_line_a_non_zero_exit_and_nothing_moved(promoted, tiny_models, capsys, argv, message):
    config = promoted[0]
    damage = DAMAGE.get(argv[1].rpartition("/")[2])
    if damage:
        register(config, tiny_models["untrained"], {"test_accuracy": 0.5}, "new")
        damage(config, argv[1].rpartition("/")[2])
        capsys.readouterr()   # the registration's own output
    before = (champion_version(connect(config)).version, len(alias_history(connect(config))))
    assert main(["--project-dir", str(config.project_dir), *argv]) == 1
    error = capsys.readouterr().err
    assert error.startswith("tunegate: error: ") and message in error and error.count("\n") == 1
    assert (champion_version(connect(config)).version, len(alias_history(connect(config)))) == before


def test_rollback_without_a_champion_is_an_error(promoted):
    unregistered = load_config(promoted[0].project_dir, ["registry.model_name=never-registered"])
    with pytest.raises(PromotionError, match="never-registered has no champion: nothing to roll back"):
        rollback(unregistered, "undo", "tests")


def test_a_held_lock_makes_a_promotion_wait_and_a_stale_one_is_taken_over(promoted):
    project = promoted[0].project_dir
    config = load_config(project, ["gates.lock.wait_s=0.5", "gates.lock.poll_s=0.1"])
    client = connect(config).client
    client.create_registered_model(f"{MODEL}{LOCK_SUFFIX}", tags={"token": "x", "holder": "crashed run"})
    with pytest.raises(PromotionError, match="held by crashed run since .* did not let go within gates.lock.wait_s"):
        with promotion_lock(connect(config), "tests"):
            pass
    expired = load_config(project, ["gates.lock.lease_s=0.01", "gates.lock.poll_s=0.1"])
    with promotion_lock(connect(expired), "tests") as lock:
        assert client.get_registered_model(lock.name).tags["holder"] == "tests"
    assert client.search_registered_models(f"name = '{MODEL}{LOCK_SUFFIX}'") == []


def test_a_lock_left_by_a_killed_process_on_this_machine_is_taken_over_at_once(promoted):
    config = load_config(promoted[0].project_dir, ["gates.lock.wait_s=5", "gates.lock.poll_s=0.1"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    client = connect(config).client
    client.create_registered_model(f"{MODEL}{LOCK_SUFFIX}", tags={
        "token": "x", "holder": "killed run", "host": socket.gethostname(), "pid": dead.stdout.strip()})
    with promotion_lock(connect(config), "tests") as lock:   # lease_s is 600: only the dead pid lets it through
        assert client.get_registered_model(lock.name).tags["holder"] == "tests"
