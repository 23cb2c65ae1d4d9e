"""MLflow: the one module that talks to the tracking store and the model registry."""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, Object, Property, Schema

from pipeline.governance import lineage
from pipeline.config import Config
from pipeline.errors import EnvironmentProblem, ModelError, PromotionError
from pipeline.redaction import redact, redact_values

CHAMPION, CHALLENGER = "champion", "challenger"
LOCK_SUFFIX = "-promotion-lock"      # <model_name><suffix>: the registered model whose existence is the lock
HISTORY_SUFFIX = "-aliases"          # <experiment><suffix>: one run per alias move
REPORTS_DIR = "reports"   # the audit and evaluation reports and the model card, in each run's artifacts
MODEL_CARD_ARTIFACT = f"{REPORTS_DIR}/README.md"
MODEL_ARTIFACT = "model"   # the transformers directory inside the logged pyfunc model's artifacts
# The gates' verdict on a version, set when everything else of it is done: a version without it was left unfinished
# by a killed run, and the next run with the same data, params and code finishes it.
DECISION_TAG, REASON_TAG = "promotion_decision", "promotion_reason"
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
    lineage: dict[str, Any] = field(default_factory=dict)   # pipeline.governance.lineage.build_record's
    lineage_texts: dict[str, str] = field(default_factory=dict)   # artifact path -> text (params.yaml, dvc.lock)


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    metrics: dict[str, float]
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class VersionRow:
    version: str
    aliases: list[str]
    created: str
    metrics: dict[str, float]
    tags: dict[str, str]

    @property
    def finished(self) -> bool:
        return DECISION_TAG in self.tags


class TextClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: sentences in, label names and probabilities out."""

    def load_context(self, context) -> None:
        from pipeline.training.models import load_classifier, load_tokenizer

        model_dir = Path(context.artifacts[MODEL_ARTIFACT])
        self.model = load_classifier(model_dir)
        self.tokenizer = load_tokenizer(model_dir)
        self.max_length = int(context.model_config.get("max_length", 128))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from pipeline.tasks.classification.evaluation import predict_proba

        # MLflow hands over a DataFrame whether it was given one or a list of strings.
        texts = model_input.iloc[:, 0].astype(str).tolist()
        probs = predict_proba(self.model, self.tokenizer, texts, self.max_length, batch_size=64)
        names = self.model.config.id2label
        best = probs.argmax(axis=1)
        return pd.DataFrame({"label": [names[int(i)] for i in best], "score": probs.max(axis=1)})


class TextGenerator(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of a causal LM: per row a `prompt` (the user's turn of a chat) or `messages` (a chat, a list
    of {"role", "content"} turns, the assistant's answer to come); the system prompt it was trained with leads a
    chat without one. The generated answers out."""

    def load_context(self, context) -> None:
        from pipeline.training.models import load_causal_lm, load_tokenizer
        from pipeline.tasks.causal_lm.chat import ensure_pad_token

        model_dir = Path(context.artifacts[MODEL_ARTIFACT])
        self.model = load_causal_lm(model_dir)
        self.tokenizer = ensure_pad_token(load_tokenizer(model_dir))
        self.system_prompt = context.model_config.get("system_prompt")
        self.max_new_tokens = int(context.model_config.get("max_new_tokens", 32))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from pipeline.tasks.causal_lm.chat import chat, generate, prompt_ids, with_system

        def conversation(number: int, row: pd.Series) -> list[dict[str, str]]:
            turns, prompt = row.get(CHAT_COLUMN), row.get(PROMPT_COLUMN)
            if pd.api.types.is_list_like(turns):   # a chat; in a row without one MLflow puts None
                return with_system(self.system_prompt, [{"role": t["role"], "content": t["content"]} for t in turns])
            if isinstance(prompt, str):
                return chat(self.system_prompt, prompt)
            raise ValueError(f"input row {number} has neither a {PROMPT_COLUMN!r} (text) nor {CHAT_COLUMN!r} "
                             f"(a list of role and content turns)")

        conversations = [conversation(number, row) for number, (_, row) in enumerate(model_input.iterrows(), start=1)]
        answers = generate(self.model, self.tokenizer, prompt_ids(self.tokenizer, conversations), self.max_new_tokens,
                           batch_size=16)
        return pd.DataFrame({"response": answers})


EXAMPLE_TEXTS = ["a gripping, beautifully acted film", "dull and far too long"]
PROMPT_COLUMN, CHAT_COLUMN = "prompt", "messages"   # a causal LM's input columns: a row fills one
# a column of strings or one of chats: every row names its column (a bare list of strings would lose its column)
GENERATOR_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", PROMPT_COLUMN, required=False),
                   ColSpec(Array(Object([Property("role", "string"), Property("content", "string")])), CHAT_COLUMN,
                           required=False)]),
    outputs=Schema([ColSpec("string", "response")]))


@dataclass(frozen=True)
class Serving:
    example: list[str] | pd.DataFrame
    model_config: dict[str, Any]
    signature: ModelSignature | None   # None: inferred from the example


def _classifier_serving(config: Config) -> Serving:
    return Serving(EXAMPLE_TEXTS, {"max_length": config.model.max_length}, None)


def _generator_serving(config: Config) -> Serving:
    """Prompts the template makes of the example texts (a table's task), or chats of them (instructions)."""
    settings = config.task.causal_lm
    if config.data.format == "instructions":
        example = pd.DataFrame({CHAT_COLUMN: [[{"role": "user", "content": text}] for text in EXAMPLE_TEXTS]})
    else:
        example = pd.DataFrame({PROMPT_COLUMN: [settings.prompt_template.format(text=text) for text in EXAMPLE_TEXTS]})
    return Serving(example, {"system_prompt": settings.system_prompt, "max_new_tokens": settings.max_new_tokens},
                   GENERATOR_SIGNATURE)


# task.type -> the pyfunc that serves its models, and how it is served (input example, model_config from params.yaml,
# signature): raw texts for a classifier, prompts or chats for an LM
PYFUNCS: dict[str, tuple[type[mlflow.pyfunc.PythonModel], Callable[[Config], Serving]]] = {
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
    _experiment_id(config, config.registry.experiment)
    mlflow.set_experiment(config.registry.experiment)
    return MlflowClient(uri, uri)


def _experiment_id(config: Config, name: str) -> str:
    """The experiment's id, created first where it does not exist yet."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # A local store keeps artifacts beside the db (the main experiment's at the top, as they always were;
    # any other's in a folder of its own); a tracking server decides for itself.
    location = None
    if tracking_uri(config).startswith("sqlite"):
        root = config.path(config.registry.artifact_location)
        location = (root if name == config.registry.experiment else root / name).as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException:   # another process created it meanwhile
        return mlflow.get_experiment_by_name(name).experiment_id


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
        pyfunc, serving_of = PYFUNCS[config.task.type]
        serving = serving_of(config)
        with _pyfunc_notices_filtered():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=pyfunc(),
                artifacts={MODEL_ARTIFACT: str(candidate.model_dir)},
                code_paths=[str(PIPELINE_PACKAGE)],
                model_config=serving.model_config,
                input_example=serving.example,
                signature=serving.signature,
                pip_requirements=SERVING_REQUIREMENTS + _base_model_requirements(candidate.model_dir),
            )
        with _registration_unannounced():
            version = mlflow.register_model(info.model_uri, config.registry.model_name, tags=tags)
    client.update_model_version(version.name, version.version, description=_describe(candidate))
    return RegisteredVersion(version.name, str(version.version), run.info.run_id, candidate.metrics,
                             dict(candidate.tags))


class _PyfuncNoticeFilter(logging.Filter):
    # tunegate's own model class is pickled (a user's files never are); a classifier's signature comes from its example
    NOTICES = ("serialized using CloudPickle", "Inferring model signature")

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
    # here, not at the top: pipeline.training.models imports torch and transformers (seconds), which the
    # commands that only read the registry (`tunegate models`) do not need
    from pipeline.training.models import base_model_requirements

    return base_model_requirements(model_dir)


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
    return _registered(client, version)


def _registered(client: MlflowClient, version) -> RegisteredVersion:
    metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
    return RegisteredVersion(version.name, str(version.version), version.run_id, metrics, dict(version.tags))


MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(/(?P<version>\d+)|@(?P<alias>[\w-]+))/?")


def find_version(config: Config, model_uri: str) -> RegisteredVersion:
    """A version of params.yaml's model, `models:/NAME/VERSION` or `models:/NAME@ALIAS`, whose model files are
    still in the artifact store."""
    client = connect(config)
    name = config.registry.model_name
    match = MODEL_URI.fullmatch(model_uri)
    if match is None or match["name"] != name:
        raise ModelError(f"{model_uri!r} is not a version of {name}: write models:/{name}/VERSION or "
                         f"models:/{name}@ALIAS (`tunegate models` lists them).")
    try:
        version = (client.get_model_version(name, match["version"]) if match["version"]
                   else client.get_model_version_by_alias(name, match["alias"]))
    except MlflowException as exc:
        raise ModelError(f"No {model_uri} in the registry at {tracking_uri(config)}: `tunegate models` lists the "
                         f"registered versions and their aliases.") from exc
    try:
        files = {Path(f.path).name
                 for f in mlflow.artifacts.list_artifacts(artifact_uri=f"models:/{name}/{version.version}")}
    except (MlflowException, OSError):
        files = set()
    if "MLmodel" not in files:
        raise ModelError(f"{model_uri} (version {version.version}) is registered but its model files are gone from "
                         f"the artifact store; pick another version (`tunegate models`).")
    return _registered(client, version)


def log_to_run(config: Config, run_id: str, metrics: dict[str, float], records: dict[str, dict],
               artifacts: list[Path], artifact_path: str) -> None:
    """Add to a finished run: metrics, JSON records (file name -> content), files under artifact_path."""
    client = connect(config)
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    for file_name, record in records.items():
        client.log_dict(run_id, record, file_name)
    for artifact in artifacts:
        client.log_artifact(run_id, str(artifact), artifact_path=artifact_path)


def set_decision_tags(config: Config, version: RegisteredVersion, alias: str, reason: str) -> None:
    """The gates' verdict on the version itself, as `tunegate models` shows it; the decision last, as it marks the
    version finished."""
    client = connect(config)
    client.set_model_version_tag(version.name, version.version, REASON_TAG, reason)
    client.set_model_version_tag(version.name, version.version, DECISION_TAG, alias)


@dataclass(frozen=True)
class PromotionLock:
    name: str       # the registered model that is the lock
    token: str      # this holder's, in the lock's tags


def _lock_holder(client: MlflowClient, name: str):
    try:
        return client.get_registered_model(name)
    except MlflowException:
        return None   # released meanwhile


def _holder_died(tags: dict[str, str]) -> bool:
    """A holder on this machine whose process is gone (killed mid-promotion) left its lock behind: no need to wait
    for the lease. A holder on another machine cannot be checked from here; its lease decides."""
    if tags.get("host") != socket.gethostname() or not tags.get("pid", "").isdigit():
        return False
    try:
        os.kill(int(tags["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:   # alive, another user's
        return False
    return False


@contextmanager
def promotion_lock(config: Config, holder: str) -> Iterator[PromotionLock]:
    """Hold the promotion lock of params.yaml's model while the block runs; wait for it at most gates.lock.wait_s.

    The lock is a registered model that exists while someone holds it: its creation is atomic in every MLflow
    store, so it works across processes and machines that share a tracking server (which clients reach over
    HTTP only: a database lock is not theirs to take). A lock older than gates.lock.lease_s is taken over.
    """
    client = connect(config)
    settings = config.gates.lock
    lock = PromotionLock(f"{config.registry.model_name}{LOCK_SUFFIX}", uuid.uuid4().hex)
    deadline = time.monotonic() + settings.wait_s
    while True:
        try:
            client.create_registered_model(lock.name, tags={"token": lock.token, "holder": holder,
                                                             "host": socket.gethostname(), "pid": str(os.getpid())},
                                           description="tunegate's promotion lock: exists while a promotion runs")
            break
        except MlflowException as exc:
            # A server that loses the race reports the existing lock, or, when its holder released it between
            # the clash and the server's lookup, that the lock is not found: either way, try again.
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                raise
        held = _lock_holder(client, lock.name)
        if held is not None and (_holder_died(held.tags)
                                 or time.time() - held.creation_timestamp / 1000 > settings.lease_s):
            # Its holder crashed: remove it and try again. Two waiters doing this at once may both think
            # they hold it; move_alias checks the token, so the one whose lock was removed moves nothing.
            try:
                client.delete_registered_model(lock.name)
            except MlflowException:
                pass   # another waiter removed it first
            continue
        if time.monotonic() > deadline:
            since = datetime.fromtimestamp(held.creation_timestamp / 1000, timezone.utc) if held else None
            raise PromotionError(
                f"Another promotion holds the lock {lock.name!r} (held by {held.tags.get('holder') if held else '?'} "
                f"since {since:%Y-%m-%d %H:%M:%S} UTC) and did not let go within gates.lock.wait_s="
                f"{settings.wait_s:g} s. Try again later; a lock left by a crashed run expires after "
                f"gates.lock.lease_s={settings.lease_s:g} s.")
        time.sleep(settings.poll_s)
    try:
        _restore_moves(config, client)
        yield lock
    finally:
        held = _lock_holder(client, lock.name)
        if held is not None and held.tags.get("token") == lock.token:
            client.delete_registered_model(lock.name)


def _restore_moves(config: Config, client: MlflowClient) -> None:
    """Each alias where its last move in the history put it: a holder killed between writing the move and moving
    the alias left the two apart."""
    last = {move.alias: move.to_version for move in alias_history(config)}
    held = client.get_registered_model(config.registry.model_name).aliases if last else {}
    for alias, version in last.items():
        if str(held.get(alias)) != version:
            client.set_registered_model_alias(config.registry.model_name, alias, version)


@dataclass(frozen=True)
class AliasMove:
    time: str                  # UTC, ISO 8601
    action: str                # flow decision | override | rollback
    alias: str
    from_version: str | None   # the version that held the alias before; None: nobody
    to_version: str
    by: str
    reason: str


def move_alias(config: Config, lock: PromotionLock, alias: str, version: RegisteredVersion, action: str, by: str,
               reason: str) -> AliasMove:
    """Point alias at version and write the move to the history; only under the promotion lock."""
    client = connect(config)
    held = _lock_holder(client, lock.name)
    if held is None or held.tags.get("token") != lock.token:
        raise PromotionError(f"The promotion lock {lock.name!r} was taken over (held longer than gates.lock."
                             f"lease_s={config.gates.lock.lease_s:g} s); nothing was moved. Raise the lease and retry.")
    try:
        before = str(client.get_model_version_by_alias(version.name, alias).version)
    except MlflowException:
        before = None
    move = AliasMove(datetime.now(timezone.utc).isoformat(timespec="milliseconds"), action, alias, before,
                     version.version, by, reason)
    # The history first: a holder killed before the alias moves leaves a move the next holder makes (_restore_moves).
    history = _experiment_id(config, config.registry.experiment + HISTORY_SUFFIX)
    run = client.create_run(history, run_name=f"{alias}: {before or '-'} -> {version.version} ({action})",
                            tags={"model": version.name, "action": action, "alias": alias,
                                  "from_version": before or "", "to_version": version.version, "by": by,
                                  "reason": reason, "time": move.time})
    client.set_registered_model_alias(version.name, alias, version.version)
    client.set_terminated(run.info.run_id)
    return move


def alias_history(config: Config) -> list[AliasMove]:
    """Every alias move of params.yaml's model, oldest first."""
    client = connect(config)
    history = mlflow.get_experiment_by_name(config.registry.experiment + HISTORY_SUFFIX)
    if history is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs([history.experiment_id], f"tags.model = '{config.registry.model_name}'",
                                  order_by=["attributes.start_time ASC"], max_results=1000, page_token=token)
        runs += page
        token = page.token
        if not token:
            break
    return [AliasMove(t["time"], t["action"], t["alias"], t["from_version"] or None, t["to_version"], t["by"],
                      t["reason"]) for t in (run.data.tags for run in runs)]


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


def same_version(config: Config, identity: dict[str, str]) -> VersionRow | None:
    """The newest version whose tags hold these (lineage.identity_tags: the same data, params and code), if any."""
    return next((row for row in list_versions(config)
                 if all(row.tags.get(key) == value for key, value in identity.items())), None)


def download_model(config: Config, model_uri: str) -> Path:
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


def resolve_parent(config: Config, model_uri: str) -> tuple[Path, str]:
    """A warm start's parent: its transformers directory and its URI with the version number
    (an alias moves; the lineage must name the version it started from)."""
    from pipeline.training.models import ADAPTER_CONFIG

    uri = find_version(config, model_uri).uri
    model_dir = download_model(config, uri)
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
        raise ModelError(f"{version.uri} has no lineage record ({lineage.RECORD_ARTIFACT} in run "
                         f"{version.run_id}): it was registered before tunegate recorded lineage, or its "
                         f"artifacts are gone.") from exc
    return version.uri, record


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


# MLflow's SQL stores hold a version's description in a varchar(5000) (sqlite does not enforce it; PostgreSQL does)
DESCRIPTION_LIMIT = 5000


def card_description(card: str) -> str:
    """The card as a version's description: whole where it fits, else its head and where the whole card is."""
    if len(card) <= DESCRIPTION_LIMIT:
        return card
    pointer = f"\n\n… (cut to fit the registry; the whole card is the run's artifact {MODEL_CARD_ARTIFACT})\n"
    return card[:DESCRIPTION_LIMIT - len(pointer)] + pointer


def attach_model_card(config: Config, version: RegisteredVersion, card: str) -> None:
    """The card beside the version's reports, and as its description (what the MLflow UI shows)."""
    client = connect(config)
    client.log_text(version.run_id, card, MODEL_CARD_ARTIFACT)
    client.update_model_version(version.name, version.version, description=card_description(card))
