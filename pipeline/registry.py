"""MLflow: the one module that talks to the tracking store and the model registry."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline.config import Config
from pipeline.errors import ModelError
from pipeline.modeling import base_model_requirements

CHAMPION, CHALLENGER = "champion", "challenger"
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


class TextGenerator(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of a causal LM: prompts in (each the user's turn of a chat, after the system prompt it
    was trained with), the generated answers out."""

    def load_context(self, context) -> None:
        from pipeline.modeling import load_causal_lm, load_tokenizer
        from pipeline.tasks.causal_lm import ensure_pad_token

        model_dir = Path(context.artifacts[MODEL_ARTIFACT])
        self.model = load_causal_lm(model_dir)
        self.tokenizer = ensure_pad_token(load_tokenizer(model_dir))
        self.system_prompt = context.model_config.get("system_prompt")
        self.max_new_tokens = int(context.model_config.get("max_new_tokens", 32))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from pipeline.tasks.causal_lm import chat, generate, prompt_ids

        conversations = [chat(self.system_prompt, str(prompt)) for prompt in model_input.iloc[:, 0]]
        answers = generate(self.model, self.tokenizer, prompt_ids(self.tokenizer, conversations), self.max_new_tokens,
                           batch_size=16)
        return pd.DataFrame({"response": answers})


EXAMPLE_TEXTS = ["a gripping, beautifully acted film", "dull and far too long"]


def _classifier_serving(config: Config) -> tuple[list[str], dict[str, Any]]:
    return EXAMPLE_TEXTS, {"max_length": config.model.max_length}


def _generator_serving(config: Config) -> tuple[list[str], dict[str, Any]]:
    settings = config.task.causal_lm
    return ([settings.prompt_template.format(text=text) for text in EXAMPLE_TEXTS],
            {"system_prompt": settings.system_prompt, "max_new_tokens": settings.max_new_tokens})


# task.type -> the pyfunc that serves its models, and its (input example, model_config) from params.yaml:
# raw texts for a classifier, prompts made by the template for an LM
PYFUNCS: dict[str, tuple[type[mlflow.pyfunc.PythonModel], Callable[[Config], tuple[list[str], dict[str, Any]]]]] = {
    "classification": (TextClassifier, _classifier_serving), "causal_lm": (TextGenerator, _generator_serving)}


def tracking_uri(config: Config) -> str:
    """MLFLOW_TRACKING_URI if set, else params.yaml's, with a relative sqlite path made absolute."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or config.registry.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        db = config.path(uri.removeprefix(prefix))
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = prefix + str(db)
    return uri


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
    client = connect(config)
    with mlflow.start_run(run_name=f"{config.train.method}-{candidate.tags.get('params_hash', '')}") as run:
        mlflow.log_params(flatten(candidate.params))
        mlflow.log_metrics(candidate.metrics)
        mlflow.set_tags(candidate.tags)
        for artifact in candidate.artifacts:
            mlflow.log_artifact(str(artifact), artifact_path="reports")
        pyfunc, serving = PYFUNCS[config.task.type]
        example, model_config = serving(config)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=pyfunc(),
            artifacts={MODEL_ARTIFACT: str(candidate.model_dir)},
            code_paths=[str(PIPELINE_PACKAGE)],
            model_config=model_config,
            input_example=example,
            pip_requirements=SERVING_REQUIREMENTS + base_model_requirements(candidate.model_dir),
        )
        version = mlflow.register_model(info.model_uri, config.registry.model_name, tags=candidate.tags)
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
