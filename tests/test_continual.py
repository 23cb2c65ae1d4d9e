"""The continual step on small real data: a champion on an SST-2 slice, then batches of electronics reviews.

Real MLflow, DVC, Great Expectations, Prefect and a real tiny training run; one champion shared by the tests.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from flows.continual import run_continual
from flows.retrain import retrain
from pipeline import continual, registry
from pipeline.config import load_config
from pipeline.errors import AuditFailed, DriftFailed
from tests.conftest import REPO, make_project, small_params

BATCH_ROWS = 160   # electronics reviews per batch, half of each label


def electronics_rows(rows: int, skip: int = 0) -> pd.DataFrame:
    frame = pd.read_csv(REPO / "data/raw/amazon-electronics/reviews.tsv", sep="\t", keep_default_na=False, dtype=str)
    return pd.concat([group.iloc[skip:skip + rows // 2] for _, group in frame.groupby("label")])


def drop_batch(project: Path, name: str, frame: pd.DataFrame) -> Path:
    incoming = project / "data/incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    path = incoming / f"{name}.tsv"
    frame.to_csv(path, sep="\t", index=False)
    return path


def continual_params(**changes: dict) -> dict:
    return small_params(model={"max_length": 64}, train={"init": "champion"},
                        gates={"min_accuracy": 0.0, "max_forgetting": None, "max_bias_gap": None}, **changes)


@pytest.fixture(scope="module")
def champion_project(tmp_path_factory) -> Path:
    """A project whose champion (version 1) was trained on the SST-2 slice; copied per test."""
    project = make_project(tmp_path_factory.mktemp("continual") / "project", continual_params())
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
    first = run_continual(str(project))
    second = run_continual(str(project))
    return project, first, second


def versions(project: Path) -> dict[str, registry.VersionRow]:
    return {row.version: row for row in registry.list_versions(load_config(project))}


def test_a_step_warm_starts_from_the_champion_and_records_its_lineage(stepped):
    project, first, _ = stepped
    assert first.batch == "electronics" and first.parent == "models:/tunegate-sst2/1"
    assert first.tasks == ["sst2"]
    (candidate,) = first.candidates
    tags = versions(project)[candidate.version].tags
    assert tags[continual.PARENT_TAG] == "models:/tunegate-sst2/1"
    assert tags[continual.TASKS_TAG] == "sst2,electronics"
    assert tags[continual.BATCH_TAG] == "electronics"
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


def test_a_batch_failing_the_audit_stops_before_training(project):
    bad = electronics_rows(BATCH_ROWS)
    bad.iloc[0, bad.columns.get_loc("label")] = "7"
    drop_batch(project, "broken", bad)
    with pytest.raises(AuditFailed, match="Audit of batch 'broken' failed"):
        run_continual(str(project))
    assert list(versions(project)) == ["1"]
    assert not (project / "data/raw/batches/broken").exists()


def test_a_batch_drifted_past_an_error_threshold_stops_before_training(project):
    drop_batch(project, "electronics", electronics_rows(BATCH_ROWS))
    with pytest.raises(DriftFailed, match="text_content"):
        run_continual(str(project), ["continual.drift.text_content={severity: error, max_score: 0.8}"])
    assert list(versions(project)) == ["1"]
    assert not (project / "data/raw/batches/electronics").exists()
