"""Registered versions: finding, listing and reading them, and their lineage. Reads only (`tunegate models`,
`tunegate lineage`): nothing here imports torch."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException

from pipeline.errors import ModelError
from pipeline.governance import gates, lineage
from pipeline.governance.serving import MODEL_ARTIFACT
from pipeline.governance.store import Store

CHAMPION, CHALLENGER = "champion", "challenger"
CANDIDATE = "candidate"   # passed every gate, waits for a reviewer (gates.approval: required)
# The gates' verdict on a version, set when everything else of it is done: a version without it was left unfinished
# by a killed run, and the next run with the same data, params and code finishes it.
DECISION_TAG, REASON_TAG = "promotion_decision", "promotion_reason"
REPORTS_DIR = "reports"   # the audit and evaluation reports and the model card, in each run's artifacts
MODEL_CARD_ARTIFACT = f"{REPORTS_DIR}/README.md"
MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(/(?P<version>\d+)|@(?P<alias>[\w-]+))/?")


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    metrics: dict[str, float]     # its own, without what a promotion logged beside them (gates.candidate_metrics)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class VersionRow:
    name: str
    version: str
    aliases: list[str]
    created: str
    metrics: dict[str, float]
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def finished(self) -> bool:
        return DECISION_TAG in self.tags


def report_artifact(path: Path) -> str:
    """Where registration logs a report file, relative to the run's artifact root."""
    return f"{REPORTS_DIR}/{path.name}"


def _registered(store: Store, version) -> RegisteredVersion:
    # A champion that was once a candidate carries the champion_* numbers it was compared with: as a baseline, its
    # own are compared and logged (champion_test_accuracy), not those (champion_champion_test_accuracy).
    metrics = store.client.get_run(version.run_id).data.metrics if version.run_id else {}
    return RegisteredVersion(version.name, str(version.version), version.run_id, gates.candidate_metrics(metrics),
                             dict(version.tags))


def champion_version(store: Store) -> RegisteredVersion | None:
    try:
        version = store.client.get_model_version_by_alias(store.model_name, CHAMPION)
    except MlflowException:
        return None
    return _registered(store, version)


def _model_version(store: Store, model_uri: str):
    """The registry's record of `models:/NAME/VERSION` or `models:/NAME@ALIAS`, NAME params.yaml's model."""
    name = store.model_name
    match = MODEL_URI.fullmatch(model_uri)
    if match is None or match["name"] != name:
        raise ModelError(f"{model_uri!r} is not a version of {name}: write models:/{name}/VERSION or "
                         f"models:/{name}@ALIAS (`tunegate models` lists them).")
    try:
        return (store.client.get_model_version(name, match["version"]) if match["version"]
                else store.client.get_model_version_by_alias(name, match["alias"]))
    except MlflowException as exc:
        raise ModelError(f"No {model_uri} in the registry at {store.uri}: `tunegate models` lists the "
                         f"registered versions and their aliases.") from exc


def _location(store: Store, version) -> str:
    """Where a version's MLflow model is stored: what its models:/ URI stands for, resolved by this store's
    client (MLflow resolves a models:/ URI with its global one)."""
    return store.client.get_model_version_download_uri(version.name, version.version)


def find_version(store: Store, model_uri: str) -> RegisteredVersion:
    """A version of params.yaml's model, `models:/NAME/VERSION` or `models:/NAME@ALIAS`, whose model files are
    still in the artifact store."""
    version = _model_version(store, model_uri)
    try:
        files = store.list_files(_location(store, version))
    except (MlflowException, OSError):
        files = set()
    if "MLmodel" not in files:
        raise ModelError(f"{model_uri} (version {version.version}) is registered but its model files are gone from "
                         f"the artifact store; pick another version (`tunegate models`).")
    return _registered(store, version)


def registered_model_dir(store: Store, model_uri: str) -> Path:
    """A version's MLflow model (MLmodel, its pyfunc, the transformers directory under artifacts/) as a local
    folder: a local store's files where they are, a server's downloaded."""
    version = _model_version(store, model_uri)
    try:
        return store.download(_location(store, version))
    except (MlflowException, OSError) as exc:
        raise ModelError(f"Cannot fetch {model_uri} from the registry at {store.uri}: {exc} "
                         f"`tunegate models` lists the registered versions.") from exc


def list_versions(store: Store) -> list[VersionRow]:
    name = store.model_name
    versions = store.client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"])
    if not versions:
        return []
    # Version search leaves aliases empty; the registered model holds them.
    aliases: dict[str, list[str]] = {}
    for alias, version in store.client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for version in versions:
        metrics = store.client.get_run(version.run_id).data.metrics if version.run_id else {}
        created = pd.Timestamp(version.creation_timestamp, unit="ms").strftime("%Y-%m-%d %H:%M")
        rows.append(VersionRow(name, str(version.version), sorted(aliases.get(str(version.version), [])), created,
                               metrics, dict(version.tags)))
    return rows


def champion_row(rows: list[VersionRow]) -> VersionRow | None:
    return next((row for row in rows if CHAMPION in row.aliases), None)


def same_version(store: Store, identity: dict[str, str]) -> VersionRow | None:
    """The newest version whose tags hold these (lineage.identity_tags: the same data, params and code), if any."""
    return next((row for row in list_versions(store)
                 if all(row.tags.get(key) == value for key, value in identity.items())), None)


def download_model(store: Store, model_uri: str) -> Path:
    """The transformers directory of a registered version, `models:/name/version` or `models:/name@alias`."""
    return registered_model_dir(store, model_uri) / "artifacts" / MODEL_ARTIFACT


def check_weights(store: Store, version: RegisteredVersion) -> None:
    """The version's weight files are those registration recorded, each file's size and sha256 (of a version
    registered before tunegate recorded them: that it has safetensors weights at all), so that the version an
    alias is moved to loads, with the weights that were gated."""
    recorded = lineage.recorded_weights(version.tags)
    weights_dir = download_model(store, version.uri)
    found = lineage.weight_files(weights_dir) if weights_dir.is_dir() else {}
    wrong = [f"{name} is missing" for name in recorded if name not in found]
    wrong += [f"{name} has sha256 {found[name]['sha256'][:12]} ({found[name]['size']} bytes), registered "
              f"{expected['sha256'][:12]} ({expected['size']} bytes)" for name, expected in recorded.items()
              if name in found and {key: str(value) for key, value in found[name].items()} != expected]
    if not recorded and not found:
        wrong.append(f"no {lineage.WEIGHT_FILES} file")
    if wrong:
        raise ModelError(f"The weights of {version.uri} are not those it was registered with ({weights_dir}): "
                         f"{'; '.join(wrong)}. Nothing was moved: pick another version (`tunegate models`), or "
                         f"retrain to register this one again.")


def read_lineage(store: Store, model_uri: str) -> tuple[str, dict[str, Any]]:
    """A version's URI with its number, and its lineage record."""
    version = find_version(store, model_uri)
    try:
        record = store.read_dict(version.run_id, lineage.RECORD_ARTIFACT)
    except (MlflowException, OSError) as exc:
        raise ModelError(f"{version.uri} has no lineage record ({lineage.RECORD_ARTIFACT} in run "
                         f"{version.run_id}): it was registered before tunegate recorded lineage, or its "
                         f"artifacts are gone.") from exc
    return version.uri, record


def lineage_chain(store: Store, model_uri: str) -> list[tuple[str, dict[str, Any]]]:
    """A version's lineage, then its parent's, and so on back to the one trained from a base model."""
    chain = [read_lineage(store, model_uri)]
    while (parent := lineage.parent_of(chain[-1][1])) is not None:
        if any(uri == parent for uri, _ in chain):
            raise ModelError(f"The lineage of {model_uri} loops back to {parent}.")
        chain.append(read_lineage(store, parent))
    return chain


def read_run_text(store: Store, run_id: str, artifact_path: str) -> str:
    try:
        return store.read_text(run_id, artifact_path)
    except (MlflowException, OSError) as exc:
        raise ModelError(f"Run {run_id} has no artifact {artifact_path}: its artifacts are gone, or it was "
                         f"registered before tunegate logged it.") from exc


def run_metrics(store: Store, run_id: str) -> dict[str, float]:
    return store.client.get_run(run_id).data.metrics
