"""MLflow: the one module that talks to the tracking store and the model registry."""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from pipeline import lineage
from pipeline.config import Config
from pipeline.errors import EnvironmentProblem, ModelError
from pipeline.redaction import redact, redact_values

CHAMPION, CHALLENGER = "champion", "challenger"
REPORTS_DIR = "reports"   # the audit and evaluation reports and the model card, in each run's artifacts
MODEL_CARD_ARTIFACT = f"{REPORTS_DIR}/README.md"
MODEL_ARTIFACT = "model"   # the transformers directory inside the logged pyfunc model's artifacts
PIPELINE_PACKAGE = Path(__file__).parent
# What the logged model needs to load and predict; inferring it fails (it imports torchvision).
SERVING_REQUIREMENTS = ["torch==2.13.0", "transformers==5.23.0", "peft==0.21.2", "pandas", "numpy", "evaluate",
                        "datasets", "scikit-learn", "pyyaml"]


@dataclass(frozen=True)
class Candidate:
    model_dir: Path
    params: dict[str, Any]
    metrics: dict[str, float]
    tags: dict[str, str]
    artifacts: list[Path]
    lineage: dict[str, Any] = field(default_factory=dict)   # pipeline.lineage.build_record's
    lineage_texts: dict[str, str] = field(default_factory=dict)   # artifact path -> text (params.yaml, dvc.lock)


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class VersionRow:
    version: str
    aliases: list[str]
    created: str
    metrics: dict[str, float]
    tags: dict[str, str]


class TextClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: sentences in, label names and probabilities out."""

    def load_context(self, context) -> None:
        from pipeline.modeling import load_classifier, load_tokenizer

        model_dir = Path(context.artifacts[MODEL_ARTIFACT])
        self.model = load_classifier(model_dir)
        self.tokenizer = load_tokenizer(model_dir)
        self.max_length = int(context.model_config.get("max_length", 128))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from pipeline.evaluation import predict_proba

        # MLflow hands over a DataFrame whether it was given one or a list of strings.
        texts = model_input.iloc[:, 0].astype(str).tolist()
        probs = predict_proba(self.model, self.tokenizer, texts, self.max_length, batch_size=64)
        names = self.model.config.id2label
        best = probs.argmax(axis=1)
        return pd.DataFrame({"label": [names[int(i)] for i in best], "score": probs.max(axis=1)})


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


def connect(config: Config) -> MlflowClient:
    uri = tracking_uri(config)
    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # set_tracking_uri also exports MLFLOW_TRACKING_URI; keep the user's environment, which
    # tracking_uri() reads, as it was (else one project's store would leak into the next).
    if user_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_uri
    if mlflow.get_experiment_by_name(config.registry.experiment) is None:
        # A local store keeps artifacts beside the db; a tracking server decides for itself.
        location = config.path(config.registry.artifact_location).as_uri() if uri.startswith("sqlite") else None
        mlflow.create_experiment(config.registry.experiment, artifact_location=location)
    mlflow.set_experiment(config.registry.experiment)
    return MlflowClient(uri, uri)


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def register_candidate(config: Config, candidate: Candidate) -> RegisteredVersion:
    """One MLflow run with params, metrics, lineage tags and reports; its model becomes a new registered version."""
    from pipeline.modeling import base_model_requirements   # here: torch loads with it, `tunegate models` needs none

    client = connect(config)
    candidate = dataclasses.replace(candidate, params=redact_values(candidate.params), tags=redact_values(candidate.tags))
    tags = {**candidate.tags, **lineage.as_tags(candidate.lineage)}
    with mlflow.start_run(run_name=f"{config.train.method}-{candidate.tags.get('params_hash', '')}") as run:
        mlflow.log_params(flatten(candidate.params))
        mlflow.log_metrics(candidate.metrics)
        mlflow.set_tags(tags)
        for artifact in candidate.artifacts:
            mlflow.log_artifact(str(artifact), artifact_path=REPORTS_DIR)
        if candidate.lineage:
            mlflow.log_dict(candidate.lineage, lineage.RECORD_ARTIFACT)
        for path, text in candidate.lineage_texts.items():
            mlflow.log_text(text, path)
        example = ["a gripping, beautifully acted film", "dull and far too long"]
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=TextClassifier(),
            artifacts={MODEL_ARTIFACT: str(candidate.model_dir)},
            code_paths=[str(PIPELINE_PACKAGE)],
            model_config={"max_length": config.model.max_length},
            input_example=example,
            pip_requirements=SERVING_REQUIREMENTS + base_model_requirements(candidate.model_dir),
        )
        version = mlflow.register_model(info.model_uri, config.registry.model_name, tags=tags)
    client.update_model_version(version.name, version.version, description=_describe(candidate))
    return RegisteredVersion(version.name, str(version.version), run.info.run_id, candidate.metrics)


def _describe(candidate: Candidate) -> str:
    tags = candidate.tags
    return (f"{tags.get('method', '?')} fine-tune of {tags.get('base_model', '?')} on data version "
            f"{tags.get('data_version', '?')}, code {tags.get('git_commit', '?')}.")


def champion(config: Config) -> RegisteredVersion | None:
    client = connect(config)
    try:
        version = client.get_model_version_by_alias(config.registry.model_name, CHAMPION)
    except MlflowException:
        return None
    metrics = client.get_run(version.run_id).data.metrics
    return RegisteredVersion(version.name, str(version.version), version.run_id, metrics)


def record_promotion(config: Config, version: RegisteredVersion, promoted: bool, reason: str) -> str:
    """Give the version its alias and write the decision and its reasons on it."""
    client = connect(config)
    alias = CHAMPION if promoted else CHALLENGER
    client.set_registered_model_alias(version.name, alias, version.version)
    client.set_model_version_tag(version.name, version.version, "promotion_decision", alias)
    client.set_model_version_tag(version.name, version.version, "promotion_reason", reason)
    return alias


def list_versions(config: Config) -> list[VersionRow]:
    client = connect(config)
    name = config.registry.model_name
    versions = client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"])
    if not versions:
        return []
    # Version search leaves aliases empty; the registered model holds them.
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for version in versions:
        metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
        created = pd.Timestamp(version.creation_timestamp, unit="ms").strftime("%Y-%m-%d %H:%M")
        rows.append(VersionRow(str(version.version), sorted(aliases.get(str(version.version), [])), created,
                               metrics, dict(version.tags)))
    return rows


def download_classifier(config: Config, model_uri: str) -> Path:
    """The transformers directory of a registered version, `models:/name/version` or `models:/name@alias`
    (a local store's files are used where they are, a server's are downloaded)."""
    connect(config)
    try:
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"{model_uri.rstrip('/')}/artifacts/{MODEL_ARTIFACT}")
    except MlflowException as exc:
        raise ModelError(f"Cannot fetch {model_uri} from the registry at {tracking_uri(config)}: {exc.message} "
                         f"`tunegate models` lists the registered versions.") from exc
    return Path(path)


def report_artifact(path: Path) -> str:
    """Where register_candidate logs a report file, relative to the run's artifact root."""
    return f"{REPORTS_DIR}/{path.name}"


# models:/NAME/VERSION or models:/NAME@ALIAS
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))/?$")


def find_version(config: Config, model_uri: str) -> ModelVersion:
    """The registered version a `models:/NAME/VERSION` or `models:/NAME@ALIAS` URI names."""
    match = MODEL_URI.match(model_uri)
    if match is None:
        raise ModelError(f"{model_uri!r} is not a registered model URI: use models:/NAME/VERSION or "
                         f"models:/NAME@ALIAS, e.g. models:/{config.registry.model_name}@{CHAMPION}.")
    client = connect(config)
    name = match["name"]
    try:
        if match["alias"]:
            return client.get_model_version_by_alias(name, match["alias"])
        return client.get_model_version(name, match["version"])
    except MlflowException as exc:
        raise ModelError(f"No version {model_uri} in the registry at {tracking_uri(config)}: "
                         f"`tunegate models` lists the registered versions and their aliases.") from exc


def version_uri(version: ModelVersion | RegisteredVersion) -> str:
    return f"models:/{version.name}/{version.version}"


def resolve_parent(config: Config, model_uri: str) -> tuple[Path, str]:
    """A warm start's parent: its transformers directory and its URI with the version number
    (an alias moves; the lineage must name the version it started from)."""
    from pipeline.modeling import ADAPTER_CONFIG

    uri = version_uri(find_version(config, model_uri))
    model_dir = download_classifier(config, uri)
    if (model_dir / ADAPTER_CONFIG).is_file():
        raise ModelError(f"{uri} holds an adapter that is not merged into its base; a warm start needs a whole "
                         f"model (train.method full, freeze, lora or dora): set model.base to one of those.")
    return model_dir, uri


def read_lineage(config: Config, model_uri: str) -> tuple[str, dict[str, Any]]:
    """A version's URI with its number, and its lineage record."""
    version = find_version(config, model_uri)
    try:
        record = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/{lineage.RECORD_ARTIFACT}")
    except (MlflowException, OSError) as exc:
        raise ModelError(f"{version_uri(version)} has no lineage record ({lineage.RECORD_ARTIFACT} in run "
                         f"{version.run_id}): it was registered before tunegate recorded lineage, or its "
                         f"artifacts are gone.") from exc
    return version_uri(version), record


def lineage_chain(config: Config, model_uri: str) -> list[tuple[str, dict[str, Any]]]:
    """A version's lineage, then its parent's, and so on back to the one trained from a base model."""
    chain = [read_lineage(config, model_uri)]
    while (parent := lineage.parent_of(chain[-1][1])) is not None:
        if any(uri == parent for uri, _ in chain):
            raise ModelError(f"The lineage of {model_uri} loops back to {parent}.")
        chain.append(read_lineage(config, parent))
    return chain


def read_run_text(config: Config, run_id: str, artifact_path: str) -> str:
    connect(config)
    try:
        return mlflow.artifacts.load_text(f"runs:/{run_id}/{artifact_path}")
    except (MlflowException, OSError) as exc:
        raise ModelError(f"Run {run_id} has no artifact {artifact_path}: its artifacts are gone, or it was "
                         f"registered before tunegate logged it.") from exc


def run_metrics(config: Config, run_id: str) -> dict[str, float]:
    return connect(config).get_run(run_id).data.metrics


def attach_model_card(config: Config, version: RegisteredVersion, card: str) -> None:
    """The card beside the version's reports, and as its description (what the MLflow UI shows)."""
    client = connect(config)
    client.log_text(version.run_id, card, MODEL_CARD_ARTIFACT)
    client.update_model_version(version.name, version.version, description=card)
