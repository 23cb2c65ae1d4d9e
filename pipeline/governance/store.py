"""The tracking store and model registry: the one place a connection to MLflow is made.

`connect` builds the client once; every function of governance/ takes the Store it returns, as MLflow's own
code passes its client, instead of setting global URIs on each call.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline.config import Config
from pipeline.errors import EnvironmentProblem
from pipeline.redaction import redact


@dataclass(frozen=True)
class Store:
    config: Config          # the project whose model and experiment these are
    client: MlflowClient
    uri: str                # tracking and registry URI, a local sqlite path made absolute
    experiment_id: str      # registry.experiment's

    @property
    def model_name(self) -> str:
        return self.config.registry.model_name

    def experiment(self, name: str) -> str:
        """An experiment's id, created first where it does not exist yet."""
        return experiment_id(self.config, self.client, self.uri, name)

    def download(self, artifact_uri: str) -> Path:
        """Stored artifacts as a local path (a local store's files where they are)."""
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, tracking_uri=self.uri))

    def list_files(self, artifact_uri: str) -> set[str]:
        return {Path(f.path).name for f in mlflow.artifacts.list_artifacts(artifact_uri=artifact_uri,
                                                                             tracking_uri=self.uri)}

    def read_text(self, run_id: str, artifact_path: str) -> str:
        with tempfile.TemporaryDirectory() as scratch:
            return Path(self.client.download_artifacts(run_id, artifact_path, scratch)).read_text(encoding="utf-8")

    def read_dict(self, run_id: str, artifact_path: str) -> dict[str, Any]:
        return json.loads(self.read_text(run_id, artifact_path))


def experiment_id(config: Config, client: MlflowClient, uri: str, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # A local store keeps artifacts beside the db (the main experiment's at the top, as they always were;
    # any other's in a folder of its own); a tracking server decides for itself.
    location = None
    if uri.startswith("sqlite"):
        root = config.path(config.registry.artifact_location)
        location = (root if name == config.registry.experiment else root / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:   # another process created it meanwhile
        return client.get_experiment_by_name(name).experiment_id


def tracking_uri(config: Config) -> str:
    """MLFLOW_TRACKING_URI if set, else params.yaml's, with a relative sqlite path made absolute."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or config.registry.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        db = config.path(uri.removeprefix(prefix))
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = prefix + str(db)
    return uri


def check_reachable(config: Config) -> None:
    """The tracking store answers: a server's /health, or a connection to a database store."""
    uri = tracking_uri(config)
    timeout = config.preflight.store_timeout_s
    fix = "start it, or set MLFLOW_TRACKING_URI (or registry.tracking_uri) to a store that runs"
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=timeout).raise_for_status()
        except requests.RequestException as exc:
            raise EnvironmentProblem(f"Tracking server {redact(uri)} does not answer "
                                     f"({redact(str(exc)).splitlines()[0][:200]}): {fix}.") from exc
    elif not uri.startswith(("sqlite:", "file:")) and "://" in uri:
        import sqlalchemy

        options = {"connect_timeout": int(timeout)} if uri.startswith("postgresql") else {}
        try:
            with sqlalchemy.create_engine(uri, connect_args=options).connect():
                pass
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise EnvironmentProblem(f"Tracking store {redact(uri)} cannot be reached "
                                     f"({redact(str(exc.orig or exc)).splitlines()[0][:200]}): {fix}.") from exc


def connect(config: Config) -> Store:
    """The project's store, its experiment created where it does not exist yet."""
    uri = tracking_uri(config)
    client = MlflowClient(uri, uri)
    return Store(config, client, uri, experiment_id(config, client, uri, config.registry.experiment))
