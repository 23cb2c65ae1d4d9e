"""The promotion lock and alias moves: who may move an alias, and the history of every move."""
from __future__ import annotations

import os
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterator

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline.errors import PromotionError
from pipeline.governance.store import Store
from pipeline.governance.versions import RegisteredVersion

LOCK_SUFFIX = "-promotion-lock"      # <model_name><suffix>: the registered model whose existence is the lock
HISTORY_SUFFIX = "-aliases"          # <experiment><suffix>: one run per alias move


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
def promotion_lock(store: Store, holder: str) -> Iterator[PromotionLock]:
    """Hold the promotion lock of params.yaml's model while the block runs; wait for it at most gates.lock.wait_s.

    The lock is a registered model that exists while someone holds it: its creation is atomic in every MLflow
    store, so it works across processes and machines that share a tracking server (which clients reach over
    HTTP only: a database lock is not theirs to take). A lock older than gates.lock.lease_s is taken over.
    """
    client = store.client
    settings = store.config.gates.lock
    lock = PromotionLock(f"{store.model_name}{LOCK_SUFFIX}", uuid.uuid4().hex)
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
        _restore_moves(store)
        yield lock
    finally:
        held = _lock_holder(client, lock.name)
        if held is not None and held.tags.get("token") == lock.token:
            client.delete_registered_model(lock.name)


def _restore_moves(store: Store) -> None:
    """Each alias where its last move in the history put it: a holder killed between writing the move and moving
    the alias left the two apart."""
    last = {move.alias: move.to_version for move in alias_history(store)}
    held = store.client.get_registered_model(store.model_name).aliases if last else {}
    for alias, version in last.items():
        if str(held.get(alias)) != version:
            store.client.set_registered_model_alias(store.model_name, alias, version)


@dataclass(frozen=True)
class AliasMove:
    time: str                  # UTC, ISO 8601
    action: str                # flow decision | override | rollback
    alias: str
    from_version: str | None   # the version that held the alias before; None: nobody
    to_version: str
    by: str
    reason: str


AliasListener = Callable[[str, AliasMove], None]   # (the model's name, the move)
_listeners: list[AliasListener] = []


def on_alias_moved(listener: AliasListener) -> None:
    """Call listener after each alias move of this process, once however often it is added. flows/ adds the one
    that emits a Prefect event: the library knows no orchestrator."""
    if listener not in _listeners:
        _listeners.append(listener)


def move_alias(store: Store, lock: PromotionLock, alias: str, version: RegisteredVersion, action: str, by: str,
               reason: str) -> AliasMove:
    """Point alias at version and write the move to the history; only under the promotion lock."""
    client = store.client
    held = _lock_holder(client, lock.name)
    if held is None or held.tags.get("token") != lock.token:
        raise PromotionError(f"The promotion lock {lock.name!r} was taken over (held longer than gates.lock."
                             f"lease_s={store.config.gates.lock.lease_s:g} s); nothing was moved. Raise the lease and retry.")
    try:
        before = str(client.get_model_version_by_alias(version.name, alias).version)
    except MlflowException:
        before = None
    move = AliasMove(datetime.now(timezone.utc).isoformat(timespec="milliseconds"), action, alias, before,
                     version.version, by, reason)
    # The history first: a holder killed before the alias moves leaves a move the next holder makes (_restore_moves).
    history = store.experiment(store.config.registry.experiment + HISTORY_SUFFIX)
    run = client.create_run(history, run_name=f"{alias}: {before or '-'} -> {version.version} ({action})",
                            tags={"model": version.name, "action": action, "alias": alias,
                                  "from_version": before or "", "to_version": version.version, "by": by,
                                  "reason": reason, "time": move.time})
    client.set_registered_model_alias(version.name, alias, version.version)
    client.set_terminated(run.info.run_id)
    for listener in _listeners:
        listener(version.name, move)
    return move


def alias_history(store: Store) -> list[AliasMove]:
    """Every alias move of params.yaml's model, oldest first."""
    client = store.client
    history = client.get_experiment_by_name(store.config.registry.experiment + HISTORY_SUFFIX)
    if history is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs([history.experiment_id], f"tags.model = '{store.model_name}'",
                                  order_by=["attributes.start_time ASC"], max_results=1000, page_token=token)
        runs += page
        token = page.token
        if not token:
            break
    return [AliasMove(t["time"], t["action"], t["alias"], t["from_version"] or None, t["to_version"], t["by"],
                      t["reason"]) for t in (run.data.tags for run in runs)]
