"""Promotion: the gates against the champion measured on the candidate's data, a person's override and
rollback, each alias move under the promotion lock and written to the history in the tracking store."""
from __future__ import annotations

import getpass
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import Config
from pipeline.errors import PromotionError
from pipeline.governance import gates
from pipeline.governance.aliases import AliasMove, PromotionLock, alias_history, move_alias, promotion_lock
from pipeline.governance.registration import log_to_run
from pipeline.governance.store import Store, connect
from pipeline.governance.versions import (CANDIDATE, CHALLENGER, CHAMPION, RegisteredVersion, champion_version,
                                          check_weights, download_model, find_version, read_run_text, run_metrics)

FLOW_DECISION, OVERRIDE, ROLLBACK = "flow decision", "override", "rollback"
DECISION_RECORD = "decision.json"     # in the candidate's run
CHAMPION_REPORTS = "reports/champion"  # the champion's re-measured reports, in the candidate's run


def login_name() -> str:
    return getpass.getuser()


@dataclass(frozen=True)
class Baseline:
    """The champion's numbers the candidate is compared with, measured on the candidate's data version."""
    version: RegisteredVersion
    metrics: dict[str, float]
    remeasured: bool           # False: the champion was evaluated on the same data version; its own metrics
    artifacts: list[Path]      # the re-measured evaluation's reports

    def as_record(self) -> dict[str, Any]:
        return {"version": self.version.version, "data_version": self.version.tags.get("data_version"),
                "remeasured": self.remeasured}


@dataclass(frozen=True)
class Promotion:
    alias: str
    decision: gates.Decision
    baseline: Baseline | None
    move: AliasMove | None     # None until the alias has moved
    logged: dict[str, float] = field(default_factory=dict)   # metrics the promotion added to the candidate's run

    def as_record(self) -> dict[str, Any]:
        """decision.json: the gates and the verdict, the alias given, and which champion was the baseline."""
        return {**self.decision.as_record(), "alias": self.alias,
                "champion": self.baseline.as_record() if self.baseline else None}


def measure_champion(store: Store, current: RegisteredVersion, data_version: str, test_frame: pd.DataFrame,
                     report_dir: Path) -> Baseline:
    """The champion's metrics on data_version: its own where it was evaluated on that version, else measured
    again on test_frame with the same task, general and bias suites (the TFX Evaluator's baseline)."""
    if current.tags.get("data_version") == data_version:
        return Baseline(current, current.metrics, remeasured=False, artifacts=[])
    from pipeline.tasks import evaluate_model   # torch and transformers: only when a model is evaluated

    report = evaluate_model(store.config, download_model(store, current.uri), test_frame, report_dir)
    return Baseline(current, report.metrics, remeasured=True, artifacts=report.artifacts)


def promote_candidate(config: Config, candidate: RegisteredVersion, data_version: str, test_frame: pd.DataFrame,
                      report_dir: Path, by: str) -> Promotion:
    """Gate the candidate against the champion and give it `champion` or `challenger`; the decision record and
    the champion's numbers go to the candidate's run. report_dir receives the champion's re-measured reports."""
    return promote_best(config, [candidate], data_version, test_frame, report_dir, by)[0]


def promote_best(config: Config, candidates: list[RegisteredVersion], data_version: str, test_frame: pd.DataFrame,
                 report_dir: Path, by: str) -> list[Promotion]:
    """Gate each candidate against the champion; the best passing one (task metric) becomes champion, the others
    challengers, each with its decision record in its run. A candidate's alias moves once: one a killed run moved
    keeps that decision."""
    store = connect(config)
    current = champion_version(store)
    # Measured before taking the lock, which others then wait for only seconds; again under it if the champion
    # changed meanwhile (another promotion finished first).
    baseline = measure_champion(store, current, data_version, test_frame, report_dir) if current else None
    with promotion_lock(store, by) as lock:
        # A run killed after moving a candidate's alias made its decision already: it stands, and is not made twice.
        history = alias_history(store)
        recorded = [recorded_promotion(store, candidate, history) for candidate in candidates]
        current = champion_version(store)
        if current is None:
            baseline = None
        elif baseline is None or baseline.version.version != current.version:
            baseline = measure_champion(store, current, data_version, test_frame, report_dir)
        undecided = [candidate for candidate, promotion in zip(candidates, recorded) if promotion is None]
        decided = iter(_gate_and_move(store, lock, undecided, baseline, by))
        return [promotion or next(decided) for promotion in recorded]


def _gate_and_move(store: Store, lock: PromotionLock, candidates: list[RegisteredVersion],
                   baseline: Baseline | None, by: str) -> list[Promotion]:
    decisions = [gates.decide(c.metrics, baseline.metrics if baseline else None, store.config.gates)
                 for c in candidates]
    passing = [i for i, decision in enumerate(decisions) if decision.promote]
    best = max(passing, key=lambda i: candidates[i].metrics[gates.task_metric(candidates[i].metrics)], default=None)
    # With gates.approval: required the gates propose and a reviewer disposes (pipeline.governance.approval).
    approval = store.config.gates.approval == "required"
    promotions = []
    for i, (candidate, decision) in enumerate(zip(candidates, decisions)):
        alias = (CANDIDATE if approval else CHAMPION) if i == best else CHALLENGER
        reason = decision.summary + (f"; passed, but version {candidates[best].version} scored higher"
                                     if decision.promote and i != best else "")
        reason += "; waits for a reviewer's approval" if alias == CANDIDATE else ""
        # The champion's numbers and each earlier task's forgetting, beside the candidate's own.
        logged = {f"{gates.CHAMPION_PREFIX}{name}": baseline.metrics[name]
                  for name in gates.gated_metrics(baseline.metrics)} if baseline else {}
        logged |= {gate.name: gate.value for gate in decision.gates
                   if gate.name.startswith(gates.TASK_FORGETTING_PREFIX) and gate.value is not None}
        # Recorded before the alias moves: a failure here moves nothing, and a restart after the move reads it.
        log_to_run(store, candidate.run_id, logged,
                            {DECISION_RECORD: Promotion(alias, decision, baseline, None).as_record()},
                            baseline.artifacts if baseline else [], CHAMPION_REPORTS)
        move = move_alias(store, lock, alias, candidate, FLOW_DECISION, by, reason)
        promotions.append(Promotion(alias, decision, baseline, move, logged))
    return promotions


def recorded_promotion(store: Store, candidate: RegisteredVersion, history: list[AliasMove]) -> Promotion | None:
    """The flow decision that moved candidate's alias already, read back from the history, the decision record and
    the metrics it logged; None where no flow decision moved an alias to it."""
    move = next((m for m in history if m.action == FLOW_DECISION and m.to_version == candidate.version), None)
    if move is None:
        return None
    record = json.loads(read_run_text(store, candidate.run_id, DECISION_RECORD))
    decision = gates.Decision(record["verdict"] == "promote", [gates.Gate(**gate) for gate in record["gates"]])
    logged = {name: value for name, value in run_metrics(store, candidate.run_id).items()
              if gates.logged_by_promotion(name)}
    champion = record["champion"]
    baseline = None if champion is None else Baseline(
        find_version(store, f"models:/{candidate.name}/{champion['version']}"),
        {name.removeprefix(gates.CHAMPION_PREFIX): value for name, value in logged.items()
         if name.startswith(gates.CHAMPION_PREFIX)}, champion["remeasured"], [])
    return Promotion(record["alias"], decision, baseline, move, logged)


def require_reason(reason: str | None, command: str) -> str:
    if not reason or not reason.strip():
        raise PromotionError(f"`tunegate {command}` needs --reason \"...\": say why, for the alias history.")
    return reason.strip()


def override(config: Config, model_uri: str, reason: str | None, by: str) -> AliasMove:
    """Make a version champion whatever the gates said of it, where its weights are those registered."""
    reason = require_reason(reason, "promote")
    store = connect(config)
    version = find_version(store, model_uri)
    check_weights(store, version)
    with promotion_lock(store, by) as lock:
        current = champion_version(store)
        if current is not None and current.version == version.version:
            raise PromotionError(f"{model_uri} (version {version.version}) is already the champion; nothing moved.")
        return move_alias(store, lock, CHAMPION, version, OVERRIDE, by, reason)


def previous_champion(history: list[AliasMove]) -> str | None:
    """The version that held `champion` before the current one: rollbacks step back through the champions
    (two rollbacks go back two champions), flow decisions and overrides step forward."""
    earlier: list[str] = []
    for move in (m for m in history if m.alias == CHAMPION):
        if move.action == ROLLBACK:
            if earlier:
                earlier.pop()
        elif move.from_version and move.from_version != move.to_version:
            earlier.append(move.from_version)
    return earlier[-1] if earlier else None


def rollback(config: Config, reason: str | None, by: str) -> AliasMove:
    """Move `champion` back to the version that held it before."""
    reason = require_reason(reason, "rollback")
    store = connect(config)
    with promotion_lock(store, by) as lock:
        current = champion_version(store)
        if current is None:
            raise PromotionError(f"{config.registry.model_name} has no champion: nothing to roll back.")
        target = previous_champion(alias_history(store))
        if target is None:
            raise PromotionError(f"Version {current.version} is the first champion of {config.registry.model_name} "
                                 f"in the alias history: there is no earlier champion to roll back to.")
        version = find_version(store, f"models:/{config.registry.model_name}/{target}")
        check_weights(store, version)
        return move_alias(store, lock, CHAMPION, version, ROLLBACK, by, reason)
