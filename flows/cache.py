"""Cache keys of the retraining flow's expensive tasks: the data (version), the params and the code.

Prefect persists the results of train and evaluate under these keys, so a run whose data, params and code are
unchanged since the last completed run reads them instead of training and evaluating again. A key names what
makes the result; the flow refreshes an entry whose files on disk are gone (a miss, not an error).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from prefect.cache_policies import CacheKeyFnPolicy
from prefect.context import TaskRunContext

from pipeline.config import Config
from pipeline.governance.lineage import git_state


def _key(config: Config, *parts: str) -> str | None:
    """A hash of the parts, the code and the project; None (no caching) for a work tree with uncommitted edits."""
    code = git_state(config.project_dir)
    if code.dirty:
        return None
    return hashlib.sha256("|".join([*parts, code.commit, str(config.project_dir)]).encode()).hexdigest()[:24]


def run_key(config: Config, data: str) -> str | None:
    """Equal keys, equal data, params and code."""
    return _key(config, data, config.params_hash())


def _audit_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """The raw files' contents and what the audit reads of params.yaml (not training's params)."""
    config = parameters["config"]
    digest = hashlib.md5()
    for path in (config.data.train, config.data.validation, config.data.test):
        if path is not None:
            if not config.path(path).is_file():
                return None   # the audit says what is missing
            digest.update(config.path(path).read_bytes())
    settings = json.dumps([config.data.model_dump(), config.audit.model_dump(), config.model.model_dump()],
                          sort_keys=True, default=str)
    return _prefixed("audit", _key(config, digest.hexdigest(), settings))


def _prefixed(prefix: str, key: str | None) -> str | None:
    return None if key is None else f"{prefix}-{key}"


def _train_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    return _prefixed("train", run_key(parameters["config"], parameters["data_version"].version))


def _evaluate_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    return _prefixed("evaluate", run_key(parameters["config"], str(parameters["trained"].model_dir)))


AUDIT_CACHE = CacheKeyFnPolicy(cache_key_fn=_audit_key)
TRAIN_CACHE = CacheKeyFnPolicy(cache_key_fn=_train_key)
EVALUATE_CACHE = CacheKeyFnPolicy(cache_key_fn=_evaluate_key)
