"""The continual step on small real data: a champion on an SST-2 slice, then batches of electronics reviews.

Real MLflow, DVC, Great Expectations, Prefect and a real tiny training run; one champion shared by the tests.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from prefect_dask import DaskTaskRunner

from flows.continual import continual_flow, task_runner
from flows.retrain import retrain
from pipeline.data import batches
from pipeline.governance import lineage
from pipeline.governance.store import connect
from pipeline.governance.versions import VersionRow, champion_version, list_versions
from pipeline.config import load_config
from pipeline.data.split import LABEL, TEXT, read_split, split_paths, write_splits
from pipeline.errors import AuditFailed, DriftFailed
from tests.conftest import REPO, assert_operator_log, free_port, healthy, make_project, wait_for

BATCH_ROWS = 160   # electronics reviews per batch, half of each label
SMALL_BATCH_ROWS = 80   # where the batch only has to be learned, not measured


def electronics_rows(rows: int, skip: int = 0) -> pd.DataFrame:
    frame = pd.read_csv(REPO / "data/raw/amazon-electronics/reviews.tsv", sep="\t", keep_default_na=False, dtype=str)
    return pd.concat([group.iloc[skip:skip + rows // 2] for _, group in frame.groupby("label")])


def drop_batch(project: Path, name: str, frame: pd.DataFrame) -> Path:
    incoming = project / "data/incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    path = incoming / f"{name}.tsv"
    frame.to_csv(path, sep="\t", index=False)
    return path


@pytest.fixture(scope="module")
def champion_project(tmp_path_factory) -> Path:
    """A project whose champion (version 1) was trained on the SST-2 slice; copied per test."""
    project = make_project(tmp_path_factory.mktemp("continual") / "project", model={"max_length": 64},
                           train={"init": "champion"},
                           gates={"min_accuracy": 0.0, "max_forgetting": None, "max_bias_gap": None})
    assert retrain(str(project)).alias == "champion"
    return project


@pytest.fixture
def project(champion_project, tmp_path) -> Path:
    copy = tmp_path / "project"
    shutil.copytree(champion_project, copy, symlinks=True)
    return copy


@pytest.fixture(scope="module")
def stepped(champion_project, tmp_path_factory):
    """The champion project after one continual step on an electronics batch, and a second, unchanged run."""
    project = tmp_path_factory.mktemp("stepped") / "project"
    shutil.copytree(champion_project, project, symlinks=True)
    drop_batch(project, "electronics", electronics_rows(BATCH_ROWS))
    first = continual_flow(str(project))
    second = continual_flow(str(project))
    return project, first, second


def versions(project: Path) -> dict[str, VersionRow]:
    return {row.version: row for row in list_versions(connect(load_config(project)))}


def test_a_step_warm_starts_from_the_champion_and_records_its_lineage(stepped):
    project, first, _ = stepped
    assert first.batch == "electronics" and first.parent == "models:/tunegate-sst2/1"
    assert first.tasks == ["sst2"]
    (candidate,) = first.candidates
    tags = versions(project)[candidate.version].tags
    assert tags[lineage.PARENT_TAG] == "models:/tunegate-sst2/1"
    assert tags[batches.TASKS_TAG] == "sst2,electronics"
    assert tags[batches.BATCH_TAG] == "electronics"
    assert tags["data_version"] == first.data_version != versions(project)["1"].tags["data_version"]
    # the pool is DVC-versioned: the batch's splits are outputs of the split stage
    assert (project / "data/splits/batches/electronics/test.csv").is_file()
    # evaluated on the batch's test split, on the earlier task's and the general suite; forgetting per task
    metrics = candidate.metrics
    assert {"test_accuracy", "earlier_sst2_accuracy", "forgetting_stsb", "task_forgetting_sst2"} <= set(metrics)
    assert metrics["task_forgetting_sst2"] == pytest.approx(
        first.champion_metrics["earlier_sst2_accuracy"] - metrics["earlier_sst2_accuracy"])
    assert "forgetting of sst2" in candidate.reason
    assert candidate.alias in ("champion", "challenger")


def test_a_used_batch_is_not_used_again(stepped):
    project, first, second = stepped
    assert second.batch is None and second.candidates == []
    assert "No new batch" in second.message
    assert len(versions(project)) == 2


def rejections(project: Path) -> dict[str, dict[str, str]]:
    """The tracking store's record of each rejected batch: its name -> its run's tags."""
    store = connect(load_config(project))
    runs = store.client.search_runs([store.experiment_id], f"tags.{batches.REJECTED_TAG} != ''")
    return {run.data.tags[batches.BATCH_TAG]: run.data.tags for run in runs}


def test_a_rejected_batch_is_quarantined_with_why_and_the_next_step_takes_the_next_batch(project):
    bad = electronics_rows(BATCH_ROWS)
    bad.iloc[0, bad.columns.get_loc("label")] = "7"
    drop_batch(project, "broken", bad)
    drop_batch(project, "electronics", electronics_rows(BATCH_ROWS, skip=BATCH_ROWS))
    with pytest.raises(AuditFailed, match=r"(?s)Audit of batch 'broken' failed.*Batch 'broken' was moved to "
                                          r".*data/quarantine/broken-\w{8} .*the next step takes the next batch"):
        continual_flow(str(project))
    (quarantined,) = (project / "data/quarantine").iterdir()
    assert sorted(p.name for p in quarantined.iterdir()) == ["broken.tsv", batches.REJECTION_RECORD]
    record = json.loads((quarantined / batches.REJECTION_RECORD).read_text())
    assert record["step"] == "audit" and "label_in_set" in record["reason"]
    assert sorted(p.name for p in (project / "data/incoming").iterdir()) == ["electronics.tsv"]
    assert rejections(project)["broken"][batches.REJECTED_TAG] == "audit"
    # the next step takes the next batch; drifted past an error threshold, it is quarantined in turn
    with pytest.raises(DriftFailed, match=r"(?s)Batch 'electronics' drifted.*text_content.*Batch 'electronics' was "
                                          r"moved to"):
        continual_flow(str(project), ["continual.drift.text_content={severity: error, max_score: 0.8}"])
    assert rejections(project)["electronics"][batches.REJECTED_TAG] == "drift"
    assert "No new batch" in continual_flow(str(project)).message
    assert list(versions(project)) == ["1"]
    assert not (project / "data/raw/batches").exists()


def test_two_candidates_train_on_dask_and_the_better_passing_one_is_promoted(project):
    drop_batch(project, "electronics", electronics_rows(SMALL_BATCH_ROWS))
    candidates = "continual.candidates=[[train.learning_rate.lora=1.0e-3], [train.learning_rate.lora=1.0e-6]]"
    overrides = [candidates, "gates.champion_tolerance=1.0", "gates.max_task_forgetting=null"]
    team_cluster = task_runner(load_config(project, [*overrides, "continual.dask_address=tcp://10.0.0.1:8786"]))
    assert isinstance(team_cluster, DaskTaskRunner) and team_cluster.address == "tcp://10.0.0.1:8786"
    summary = continual_flow(str(project), overrides)
    assert [c.overrides for c in summary.candidates] == [["train.learning_rate.lora=1.0e-3"],
                                                         ["train.learning_rate.lora=1.0e-6"]]
    best = max(summary.candidates, key=lambda c: c.metrics["test_accuracy"])
    other = next(c for c in summary.candidates if c is not best)
    assert (best.alias, other.alias) == ("champion", "challenger")
    assert f"passed, but version {best.version} scored higher" in other.reason
    assert champion_version(connect(load_config(project))).version == best.version
    rows = versions(project)
    assert {rows[c.version].tags[lineage.PARENT_TAG] for c in summary.candidates} == {"models:/tunegate-sst2/1"}


# --- the batch's audit against the pool: every split of the data and of earlier batches (no training) -----------

def test_a_batch_of_rows_already_in_the_pool_fails_the_audit_and_a_new_one_passes(tmp_path):
    project = make_project(tmp_path / "project", parts=("sst2",), audit={"checks": {"rows_per_class": {"min_rows": 5}}})
    config = load_config(project)
    write_splits(config)
    # the champion's own training rows, sent again as a batch: they would land in the batch's test split too
    train = read_split(split_paths(config).train).head(60)
    leaked = drop_batch(project, "leaked", train.rename(columns={TEXT: "sentence", LABEL: "label"}))
    with pytest.raises(AuditFailed, match=r"pool_leakage \(sentence\): 60 row\(s\) \(100%\) also appear in an "
                                          r"earlier split of the pool \(ignoring case and spacing\)"):
        batches.audit_batch(config, batches.incoming_batches(config)[0])
    leaked.unlink()
    # a batch already pooled (by a step killed before it finished) is not leakage of its own rows
    drop_batch(project, "electronics", electronics_rows(SMALL_BATCH_ROWS))
    (new,) = batches.incoming_batches(config)
    batches.add_to_pool(config, new)
    write_splits(config)
    report = batches.audit_batch(config, new)
    assert [(c.check, c.status) for c in report.checks if c.check == "pool_leakage"] == [("pool_leakage", "passed")]


# --- the cache of the retraining flow (on the shared champion project: nothing new may be registered) ----------

def test_an_unchanged_rerun_reads_training_and_evaluation_from_the_cache_and_registers_nothing(champion_project):
    again = retrain(str(champion_project))
    assert again.unchanged and again.version == "1"
    assert "no new version registered; training and evaluation read from the cache" in again.reason
    assert "unchanged" in str(again) and "registered" not in str(again).replace("no new version registered", "")
    assert list(versions(champion_project)) == ["1"]


def test_a_cache_entry_whose_model_is_gone_is_a_miss_not_an_error(champion_project):
    (model_dir,) = (champion_project / "outputs/train").glob("*/model")
    shutil.rmtree(model_dir)
    again = retrain(str(champion_project))
    assert model_dir.is_dir()                          # trained again (from its last checkpoint)
    assert again.unchanged and "training and evaluation read from the cache" not in again.reason
    assert list(versions(champion_project)) == ["1"]


# --- the schedule: a Prefect server, the deployment served, a batch dropped in, a scheduled run learns it --------

def test_a_scheduled_run_of_the_served_deployment_learns_a_dropped_batch(project, tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2", "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    served, log = None, tmp_path / "schedule.log"
    try:
        wait_for(lambda: healthy(f"{api}/health"), 120, "Prefect server", [server], poll_s=0.5)
        # the log file a team keeps of the schedule: the scheduled runs' own output streams into it, at Prefect's
        # default level
        served = subprocess.Popen([sys.executable, "-m", "flows.cli", "--project-dir", str(project), "schedule",
                                   "--interval", "10"], cwd=REPO,
                                  env={**env, "PREFECT_LOGGING_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"},
                                  stdout=log.open("w"), stderr=subprocess.STDOUT)
        drop_batch(project, "electronics", electronics_rows(SMALL_BATCH_ROWS))
        learned = wait_for(lambda: versions(project).get("2"), 400, "version trained by a scheduled run",
                           [server, served])
        assert learned.tags[lineage.PARENT_TAG] == "models:/tunegate-sst2/1"
        assert learned.tags[batches.BATCH_TAG] == "electronics"
        # its decision is the flow's last line
        wait_for(lambda: "version 2 (params.yaml): " in log.read_text(), 120, "the run's decision in its log",
                 [server, served])
    finally:
        for process in (served, server):
            if process is not None:
                process.terminate()
                process.wait(timeout=60)
    assert_operator_log(log.read_text(), ["audit of batch electronics passed", "label_balance",
                                          "pool with batch electronics: data version", "best step",
                                          "evaluation report", "version 2 (params.yaml): "])

