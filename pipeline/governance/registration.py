"""Registration: a trained and evaluated model becomes a registered version with its lineage, reports and model
card; the gates' verdict, tagged last, marks it finished."""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import mlflow
import yaml

from pipeline.data.split import read_split, split_paths
from pipeline.governance import lineage
from pipeline.governance.serving import MODEL_ARTIFACT, SERVING_REQUIREMENTS
from pipeline.governance.store import Store
from pipeline.governance.versions import (DECISION_TAG, MODEL_CARD_ARTIFACT, REASON_TAG, REPORTS_DIR,
                                          RegisteredVersion, VersionRow, find_version, read_lineage,
                                          report_artifact, same_version)
from pipeline.redaction import redact_values

if TYPE_CHECKING:   # torch and transformers load with these; reading the registry needs neither
    from pipeline.audit.checks import AuditReport
    from pipeline.data.versioning import DataVersion
    from pipeline.evaluation.suites import EvaluationReport
    from pipeline.governance.promotion import Promotion
    from pipeline.training.loop import TrainResult

PIPELINE_PACKAGE = Path(__file__).parents[1]   # logged with each model: its pyfunc imports pipeline
# MLflow's SQL stores hold a version's description in a varchar(5000) (sqlite does not enforce it; PostgreSQL does)
DESCRIPTION_LIMIT = 5000
# Where a model card's description ends: what a reviewer decides on comes before it (the decision, metrics,
# forgetting, bias gaps first), the long tables after it stay in the card's artifact. Markdown shows no comment.
DESCRIPTION_END = "<!-- the registry's description of the version ends here -->"
REGISTRATION_TMP = "registration-tmp"   # beside the model folder: MLflow's temporary copies while it logs the model


@dataclass(frozen=True)
class Candidate:
    model_dir: Path
    params: dict[str, Any]
    metrics: dict[str, float]
    tags: dict[str, str]
    artifacts: list[Path]
    lineage: dict[str, Any] = field(default_factory=dict)   # pipeline.governance.lineage.build_record's
    lineage_texts: dict[str, str] = field(default_factory=dict)   # artifact path -> text (params.yaml, dvc.lock)


@dataclass(frozen=True)
class RunExtras:
    """What a continual step adds to a run's registration: its batch and tasks, the drift report."""
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def version_of_run(store: Store, code: lineage.GitState, data_version: DataVersion) -> VersionRow | None:
    """The newest version registered from this data, params and code (a committed work tree's), if any."""
    identity = lineage.identity_tags(code, data_version.version, store.config.params_hash())
    return same_version(store, identity) if identity else None


def unfinished_version(store: Store, code: lineage.GitState, data_version: DataVersion) -> RegisteredVersion | None:
    """The version of this data, params and code that a killed run registered but did not finish, if any: that
    run's registration, complete (its model, reports and tags go in before the version exists), to be finished
    rather than registered again."""
    same = version_of_run(store, code, data_version)
    if same is None or same.finished:
        return None
    return find_version(store, same.uri)


def register_run(store: Store, code: lineage.GitState, data_version: DataVersion, trained: TrainResult,
                 evaluation: EvaluationReport, audit: AuditReport, parent: str | None, flow_run_id: str,
                 extras: RunExtras = RunExtras()) -> RegisteredVersion:
    """A run's model as a new version, with its lineage record, tags and reports. store.config is the run's own:
    model.base as the user wrote it (a parent's URI for a warm start)."""
    config = store.config
    reports = {"audit": [report_artifact(p) for p in (audit.json_path, audit.html_path)],
               "evaluation": [report_artifact(p) for p in evaluation.artifacts]}
    record = lineage.build_record(config, code, data_version, trained.precision, parent, flow_run_id, reports)
    tags = {"git_commit": str(code), "params_hash": config.params_hash(),
            "base_model": config.model.base, "method": config.train.method, "audit": "passed",
            **data_version.as_tags(), **({lineage.PARENT_TAG: parent} if parent else {}), **extras.tags}
    texts = {lineage.PARAMS_ARTIFACT: yaml.safe_dump(config.as_dict(), sort_keys=False),
             lineage.DVC_LOCK_ARTIFACT: (config.project_dir / "dvc.lock").read_text(encoding="utf-8")}
    return register_candidate(store, Candidate(
        model_dir=trained.model_dir, params=config.as_dict(),
        metrics={**trained.as_metrics(), **evaluation.metrics, **extras.metrics}, tags=tags,
        artifacts=[audit.json_path, audit.html_path, *evaluation.artifacts, *extras.artifacts],
        lineage=record, lineage_texts=texts))


def register_candidate(store: Store, candidate: Candidate) -> RegisteredVersion:
    """One MLflow run with params, metrics, lineage tags and reports; its model becomes a new registered version."""
    from pipeline.tasks import task_type   # torch and transformers: only when a model is logged

    config = store.config
    task = task_type(config)
    serving = task.serving(config)
    candidate = dataclasses.replace(candidate, params=redact_values(candidate.params), tags=redact_values(candidate.tags))
    # what promotion checks the version's files against: an alias never moves to weights that are gone or changed
    weights = {lineage.WEIGHTS: lineage.weight_files(candidate.model_dir)}
    record = {**candidate.lineage, **weights} if candidate.lineage else {}
    tags = {**candidate.tags, **lineage.as_tags(record or weights)}
    run_name = f"{config.train.method}-{candidate.tags.get('params_hash', '')}"
    with (_temporary_files_in(candidate.model_dir.parent / REGISTRATION_TMP), _logging_to(store),
          mlflow.start_run(experiment_id=store.experiment_id, run_name=run_name) as run):
        mlflow.log_params(flatten(candidate.params))
        mlflow.log_metrics(candidate.metrics)
        mlflow.set_tags(tags)
        for artifact in candidate.artifacts:
            mlflow.log_artifact(str(artifact), artifact_path=REPORTS_DIR)
        if record:
            mlflow.log_dict(record, lineage.RECORD_ARTIFACT)
        for path, text in candidate.lineage_texts.items():
            mlflow.log_text(text, path)
        with _pyfunc_notices_filtered():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=task.pyfunc(),
                artifacts={MODEL_ARTIFACT: str(candidate.model_dir)},
                code_paths=[str(PIPELINE_PACKAGE)],
                model_config=serving.model_config,
                input_example=serving.example,
                signature=serving.signature,
                pip_requirements=SERVING_REQUIREMENTS + _base_model_requirements(candidate.model_dir),
            )
        with _registration_unannounced():
            version = mlflow.register_model(info.model_uri, store.model_name, tags=tags)
    store.client.update_model_version(version.name, version.version, description=_describe(candidate))
    return RegisteredVersion(version.name, str(version.version), run.info.run_id, candidate.metrics,
                             dict(candidate.tags))


@contextmanager
def _temporary_files_in(folder: Path) -> Iterator[None]:
    """MLflow copies the model into a temporary folder to log it, as large as the model: here in the run's own
    folder, not the system's (often memory), where a run killed meanwhile would leave it. Removed after the call,
    and before it: what a killed registration of this run left."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    system_tmp = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = system_tmp
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _logging_to(store: Store) -> Iterator[None]:
    """MLflow's model logging and registration read the global tracking URI (and the registry's, which follows
    it): it points at the store for the call only (MLflow's own context manager for this), and is put back as it
    was. That manager unsets the MLFLOW_TRACKING_URI set_tracking_uri exports; a user's own, which tracking_uri()
    reads, is put back too."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(store.uri):
            yield
    finally:
        if user_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = user_uri


class _PyfuncNoticeFilter(logging.Filter):
    # tunegate's own model class is pickled (a user's files never are)
    NOTICES = ("serialized using CloudPickle",)

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(notice in record.getMessage() for notice in self.NOTICES)


@contextmanager
def _pyfunc_notices_filtered() -> Iterator[None]:
    """What MLflow says of every logged model, the same each time, is not for a run's log; its other warnings are."""
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    notices = _PyfuncNoticeFilter()
    pyfunc_log.addFilter(notices)
    try:
        yield
    finally:
        pyfunc_log.removeFilter(notices)


@contextmanager
def _registration_unannounced() -> Iterator[None]:
    """MLflow announces every registration on stderr ("Registered model 'x' already exists. Creating a new version
    of this model...", "Created version '7'"), with print, not a logger that a level would turn down: its event
    stream is muted for the call (what it warns of there concerns Databricks and logged-model tags). The flow
    reports the version it registered."""
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

    enabled = MLFLOW_LOGGING_STREAM.enabled
    MLFLOW_LOGGING_STREAM.enabled = False
    try:
        yield
    finally:
        MLFLOW_LOGGING_STREAM.enabled = enabled


def _base_model_requirements(model_dir: Path) -> list[str]:
    from pipeline.training.models import base_model_requirements   # torch and transformers: seconds to import

    return base_model_requirements(model_dir)


def _describe(candidate: Candidate) -> str:
    tags = candidate.tags
    return (f"{tags.get('method', '?')} fine-tune of {tags.get('base_model', '?')} on data version "
            f"{tags.get('data_version', '?')}, code {tags.get('git_commit', '?')}.")


def log_to_run(store: Store, run_id: str, metrics: dict[str, float], records: dict[str, dict],
               artifacts: list[Path], artifact_path: str) -> None:
    """Add to a finished run: metrics, JSON records (file name -> content), files under artifact_path."""
    for key, value in metrics.items():
        store.client.log_metric(run_id, key, value)
    for file_name, record in records.items():
        store.client.log_dict(run_id, record, file_name)
    for artifact in artifacts:
        store.client.log_artifact(run_id, str(artifact), artifact_path=artifact_path)


def record_rejection(store: Store, run_name: str, tags: dict[str, str], records: dict[str, dict]) -> str:
    """A run that registers no model, the tracking store's record of what a step rejected (a continual batch): its
    tags and JSON records (file name -> content). Returns the run's id."""
    run = store.client.create_run(store.experiment_id, run_name=run_name, tags=redact_values(tags))
    log_to_run(store, run.info.run_id, {}, records, [], REPORTS_DIR)
    store.client.set_terminated(run.info.run_id)
    return run.info.run_id


def finish_version(store: Store, version: RegisteredVersion, data_version: DataVersion, evaluation: EvaluationReport,
                   audit: AuditReport, promoted: Promotion) -> None:
    """The model card, then the decision tags: last, as they mark the version finished."""
    from pipeline.audit.report import as_json
    from pipeline.governance.model_card import CardInputs, build_card

    config = store.config
    paths = split_paths(config)
    rows = {name: len(read_split(path)) for name, path in
            (("train", paths.train), ("validation", paths.validation), ("test", paths.test))}
    card = build_card(config, CardInputs(
        version=version.uri, lineage=read_lineage(store, version.uri)[1], data_version=data_version.version,
        split_rows=rows, metrics=version.metrics, evaluation=evaluation.details, audit=as_json(audit),
        decision=promoted.as_record()))
    attach_model_card(store, version, str(card))
    set_decision_tags(store, version, promoted.alias, promoted.move.reason)


def set_decision_tags(store: Store, version: RegisteredVersion, alias: str, reason: str) -> None:
    """The gates' verdict on the version itself, as `tunegate models` shows it; the decision last, as it marks the
    version finished."""
    store.client.set_model_version_tag(version.name, version.version, REASON_TAG, reason)
    store.client.set_model_version_tag(version.name, version.version, DECISION_TAG, alias)


def card_description(card: str) -> str:
    """The card as a version's description, what the MLflow UI shows: its sections up to DESCRIPTION_END (not its
    YAML metadata, for the Hugging Face Hub, which the UI would show first as a list) and where the whole card is;
    cut to DESCRIPTION_LIMIT where even that is longer."""
    from huggingface_hub import ModelCard

    head = ModelCard(card, ignore_metadata_errors=True).text.partition(DESCRIPTION_END)[0].strip()
    pointer = f"\n\n… (the whole card, with the identity slices of the data, is the run's artifact {MODEL_CARD_ARTIFACT})\n"
    return (head if len(head) + len(pointer) <= DESCRIPTION_LIMIT else head[:DESCRIPTION_LIMIT - len(pointer)]) + pointer


def attach_model_card(store: Store, version: RegisteredVersion, card: str) -> None:
    """The card beside the version's reports, and as its description (what the MLflow UI shows)."""
    store.client.log_text(version.run_id, card, MODEL_CARD_ARTIFACT)
    store.client.update_model_version(version.name, version.version, description=card_description(card))
