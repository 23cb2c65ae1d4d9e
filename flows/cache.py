"""Cache keys of the retraining flow's expensive tasks: the data version, the params and the code.

Prefect persists the results of train and evaluate under these keys, so a run whose data, params and code are
unchanged since the last completed run reads them instead of training and evaluating again. A key names what
makes the result; the flow refreshes an entry whose files on disk are gone (a miss, not an error).
"""
from __future__ import annotations

import hashlib
from typing import Any

from prefect.cache_policies import CacheKeyFnPolicy
from prefect.context import TaskRunContext

from pipeline.config import Config
from pipeline.lineage import git_commit

DIRTY = "-dirty"   # git_commit's suffix for tracked files that differ from the commit


def run_key(config: Config, data: str) -> str | None:
    """Equal keys, equal data, params and code; None (no caching) for a work tree with uncommitted edits."""
    commit = git_commit(config.project_dir)
    if commit.endswith(DIRTY):
        return None
    parts = [data, config.params_hash(), commit, str(config.project_dir)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def _prefixed(prefix: str, key: str | None) -> str | None:
    return None if key is None else f"{prefix}-{key}"


def _train_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    return _prefixed("train", run_key(parameters["config"], parameters["data_version"].version))


def _evaluate_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    return _prefixed("evaluate", run_key(parameters["config"], str(parameters["trained"].model_dir)))


TRAIN_CACHE = CacheKeyFnPolicy(cache_key_fn=_train_key)
EVALUATE_CACHE = CacheKeyFnPolicy(cache_key_fn=_evaluate_key)
