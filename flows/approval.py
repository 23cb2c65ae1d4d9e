"""A reviewer's say, in Prefect (gates.approval: required): the flow pauses with a form (approve or reject, the
reviewer's name, a reason) under the gates' table and the model card's summary; the Prefect UI's Resume button
or `tunegate approve/reject VERSION` (resume_flow_run through the Prefect API) answers it.

pause_flow_run, not suspend_flow_run: Prefect's server suspends only a deployment's flow runs (its orchestration
rule aborts with "Cannot suspend flows without a deployment"), whose process then exits, for a worker to run the
flow again from its deployment once resumed. `tunegate retrain` runs its flow in its own process, with no
deployment; a paused run keeps that process waiting, and shows the same form and takes the same resume call.
"""
from __future__ import annotations

import asyncio
import json
from typing import Literal
from uuid import UUID

import httpx
import pydantic
from prefect import flow, get_run_logger, runtime
from prefect.exceptions import FlowPauseTimeout, FlowRunWaitTimeout, PrefectException
from prefect.flow_runs import pause_flow_run, resume_flow_run, wait_for_flow_run
from prefect.input import RunInput
from prefect.settings import get_current_settings

from pipeline.config import Config
from pipeline.errors import ConfigError, PromotionError
from pipeline.governance import approval
from pipeline.governance.aliases import AliasMove, alias_history
from pipeline.governance.model_card import card_summary
from pipeline.governance.promotion import DECISION_RECORD
from pipeline.governance.store import connect
from pipeline.governance.versions import CANDIDATE, MODEL_CARD_ARTIFACT, REASON_TAG, find_version, read_run_text

SETTLE_S = 60   # after the lock is held: moving the alias and tagging the version take seconds


class ReviewerDecision(RunInput):
    """The form of a paused approval; the server checks an answer against its schema (a pattern: not blank)."""
    decision: Literal["approve", "reject"] = pydantic.Field(description="approve: champion; reject: challenger")
    reviewer: str = pydantic.Field(pattern=r"\S", description="your name, for the alias history")
    reason: str = pydantic.Field(pattern=r"\S", description="why, for the alias history")


def require_server(config: Config) -> None:
    """A paused run waits for a reviewer in another process or browser: they must reach the same Prefect server."""
    if config.gates.approval == "required" and get_current_settings().api.url is None:
        raise ConfigError("gates.approval: required needs a Prefect server that reviewers reach too: start one "
                          "(`prefect server start`) and set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api), or "
                          "set gates.approval: none.")


@flow(name="approval", flow_run_name="approve version {version}")
def approval_flow(config: Config, version: str) -> AliasMove:
    """Wait for a reviewer's verdict on a `candidate` version, then move its alias (champion or challenger)."""
    store = connect(config)
    target = find_version(store, f"models:/{store.model_name}/{version}")
    review = approval.review_text(target.uri, target.tags.get(REASON_TAG, ""),
                                  json.loads(read_run_text(store, target.run_id, DECISION_RECORD)),
                                  card_summary(read_run_text(store, target.run_id, MODEL_CARD_ARTIFACT)))
    approval.request_approval(store, version, str(runtime.flow_run.id))
    get_run_logger().info("%s waits for a reviewer: Resume in the Prefect UI, or `tunegate approve %s --reason ...` "
                          "(or reject); after %g s unanswered it becomes challenger", target.uri, version,
                          config.gates.approval_timeout)
    try:
        answer = pause_flow_run(wait_for_input=ReviewerDecision.with_initial_data(description=review),
                                timeout=config.gates.approval_timeout, poll_interval=config.gates.approval_poll_s)
        verdict = approval.check_verdict(answer.decision, answer.reviewer, answer.reason)
    except FlowPauseTimeout:
        verdict = None
    move = approval.settle(config, version, verdict)
    get_run_logger().info("%s: %s -> %s (%s by %s: %s)", move.alias, move.from_version or "-", move.to_version,
                          move.action, move.by, move.reason)
    return move


def reviewed(config: Config, version: str, alias: str, reason: str) -> tuple[str, str]:
    """The alias a run ends with, and why: the gates', or, for a `candidate` (gates.approval: required), the
    reviewer's, once approval_flow has it."""
    if alias != CANDIDATE:
        return alias, reason
    move = approval_flow(config, version)
    return move.alias, f"{move.action} by {move.by}: {move.reason} (gates: {reason})"


def resume(config: Config, version: str, decision: str, reviewer: str | None, reason: str | None) -> AliasMove:
    """`tunegate approve/reject`: answer a pending version's paused flow run through the Prefect API, and wait
    until it has moved the alias."""
    verdict = approval.check_verdict(decision, reviewer, reason)
    store = connect(config)
    pending = approval.pending_approval(store, version)
    flow_run_id = UUID(pending.flow_run_id)
    if get_current_settings().api.url is None:
        raise ConfigError(f"Version {version} waits in flow run {flow_run_id} on a Prefect server: set PREFECT_API_URL "
                          f"to that server's API (e.g. http://127.0.0.1:4200/api).")
    try:
        resume_flow_run(flow_run_id, run_input={"decision": decision, "reviewer": verdict.reviewer,
                                                "reason": verdict.reason})
    except (PrefectException, RuntimeError, httpx.HTTPError) as exc:
        raise PromotionError(f"Cannot resume flow run {flow_run_id}, which holds version {version}'s approval, at "
                             f"{get_current_settings().api.url}: {exc or type(exc).__name__}; nothing changed.") from exc
    wait_s = config.gates.approval_poll_s + config.gates.lock.wait_s + SETTLE_S
    try:
        asyncio.run(wait_for_flow_run(flow_run_id, timeout=wait_s))
    except FlowRunWaitTimeout as exc:
        raise PromotionError(f"Flow run {flow_run_id} was resumed but did not move version {version}'s alias within "
                             f"{wait_s:g} s; see its log in the Prefect UI.") from exc
    move = next((move for move in reversed(alias_history(store)) if move.to_version == version
                 and move.action in (approval.APPROVAL, approval.REJECTION)), None)
    if move is None:
        raise PromotionError(f"Flow run {flow_run_id} ended without moving version {version}'s alias; see its log in "
                             f"the Prefect UI.")
    return move
