"""A reviewer's say before `champion` moves (gates.approval: required): the gates propose, a person disposes.

A version that passes every gate gets the alias `candidate` (promotion.py) and waits: which versions wait, what
a reviewer's decision may be, what the reviewer is shown, and the outcome (approve -> champion; reject or no
answer within gates.approval_timeout -> challenger) in the alias history with who and why. Waiting itself (a
paused Prefect flow run with its form) is flows/approval.py's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.config import Config
from pipeline.errors import PromotionError
from pipeline.governance.aliases import AliasMove, alias_history, move_alias, promotion_lock
from pipeline.governance.promotion import require_reason
from pipeline.governance.registration import set_decision_tags
from pipeline.governance.store import Store, connect
from pipeline.governance.versions import CHALLENGER, CHAMPION, VersionRow, check_weights, find_version

# On a version waiting for its reviewer: the id of the paused flow run whose resumption decides it.
PENDING_TAG = "approval_flow_run"
APPROVE, REJECT = "approve", "reject"
APPROVAL, REJECTION, TIMEOUT = "approval", "rejection", "approval timeout"   # actions in the alias history
TIMEOUT_BY = "tunegate"


@dataclass(frozen=True)
class Verdict:
    """A reviewer's decision on a pending version."""
    approve: bool
    reviewer: str
    reason: str


@dataclass(frozen=True)
class PendingApproval:
    version: str
    flow_run_id: str    # the paused Prefect flow run that waits for the verdict


def check_verdict(decision: str, reviewer: str | None, reason: str | None) -> Verdict:
    """A decision as the form or the command line gave it, checked: approve or reject, a reviewer, a reason."""
    if decision not in (APPROVE, REJECT):
        raise PromotionError(f"A reviewer's decision is {APPROVE!r} or {REJECT!r}, not {decision!r}.")
    if not reviewer or not reviewer.strip():
        raise PromotionError(f"`tunegate {decision}` needs a reviewer's name (--by NAME, default: your login name).")
    return Verdict(decision == APPROVE, reviewer.strip(), require_reason(reason, decision))


def request_approval(store: Store, version: str, flow_run_id: str) -> None:
    """Mark version as waiting for the verdict that resuming flow_run_id brings."""
    store.client.set_model_version_tag(store.model_name, version, PENDING_TAG, flow_run_id)


def pending_versions(rows: list[VersionRow]) -> list[PendingApproval]:
    """The versions of rows (versions.list_versions) that wait for a reviewer, newest first."""
    return [PendingApproval(row.version, row.tags[PENDING_TAG]) for row in rows if row.tags.get(PENDING_TAG)]


def pending_approval(store: Store, version: str) -> PendingApproval:
    """version's pending approval; a clear error where it waits for none (never sent, or decided already)."""
    tags = find_version(store, f"models:/{store.model_name}/{version}").tags
    if not tags.get(PENDING_TAG):
        decided = [move for move in alias_history(store)
                   if move.to_version == version and move.action in (APPROVAL, REJECTION, TIMEOUT)]
        why = (f"it was decided already: {decided[-1].action} by {decided[-1].by} ({decided[-1].reason})"
               if decided else "it never waited for one (only a version that passes every gate with "
                               "gates.approval: required does)")
        raise PromotionError(f"Version {version} of {store.model_name} is not waiting for approval: {why}; "
                             f"nothing changed. `tunegate models` lists the pending approvals.")
    return PendingApproval(version, tags[PENDING_TAG])


def settle(config: Config, version: str, verdict: Verdict | None) -> AliasMove:
    """Move a pending version's alias: champion when approved, challenger when rejected or (verdict None) when
    nobody answered within gates.approval_timeout; the move, with who and why, goes to the alias history and the
    version's decision tags. Only once: a version decided already is an error, and nothing moves."""
    store = connect(config)
    if verdict is None:
        verdict = Verdict(False, TIMEOUT_BY, f"no reviewer answered within gates.approval_timeout="
                                             f"{config.gates.approval_timeout:g} s")
        action = TIMEOUT
    else:
        action = APPROVAL if verdict.approve else REJECTION
    with promotion_lock(store, verdict.reviewer) as lock:
        pending_approval(store, version)
        target = find_version(store, f"models:/{store.model_name}/{version}")
        if verdict.approve:
            check_weights(store, target)   # as for an override: production gets the weights that were gated
        move = move_alias(store, lock, CHAMPION if verdict.approve else CHALLENGER, target, action, verdict.reviewer,
                          verdict.reason)
        store.client.delete_model_version_tag(store.model_name, version, PENDING_TAG)
        set_decision_tags(store, target, move.alias, f"{action} by {verdict.reviewer}: {verdict.reason}")
    return move


def review_text(model_uri: str, gates_reason: str, decision: dict[str, Any], card_summary: str) -> str:
    """What a reviewer reads before deciding, in Markdown (the Prefect UI shows it above the form): the gates'
    verdict, each gate against its threshold and the champion, and the model card's summary."""
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    rows = [f"| {gate['name']} | {number(gate['value'])} | {number(gate['threshold'])} | "
            f"{number(gate['baseline'])} | {'pass' if gate['passed'] else '-' if gate['passed'] is None else 'FAIL'} |"
            for gate in decision["gates"]]
    champion = decision.get("champion")
    return "\n".join([
        f"## {model_uri} waits for your approval", "",
        f"Approve: it becomes `{CHAMPION}`. Reject: `{CHALLENGER}`. Either way your name and reason go to the "
        f"alias history.", "",
        f"**The gates:** {gates_reason}", "",
        f"Baseline: {'champion version ' + champion['version'] if champion else 'no champion yet'}.", "",
        "| gate | value | threshold | champion | outcome |", "| --- | --- | --- | --- | --- |", *rows, "",
        "### Model card", "", card_summary])

