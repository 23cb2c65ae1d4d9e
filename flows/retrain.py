"""The retraining flow: preflight → audit → split → train → evaluate → register → promote → model card.

Each task is a thin call into `pipeline/`; a failed task fails the flow, so nothing after it
(registration, promotion) runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, runtime, task
from prefect.cache_policies import NO_CACHE

from flows.approval import require_server, reviewed
from flows.cache import AUDIT_CACHE, EVALUATE_CACHE, TRAIN_CACHE
from flows.events import publish_alias_moves
from pipeline.audit import checks
from pipeline.config import Config, load_config
from pipeline.data.versioning import DataVersion, reproduce_splits
from pipeline.errors import TrainingCrashed, TunegateError
from pipeline.evaluation.suites import EvaluationReport
from pipeline.governance import gates, lineage, promotion
from pipeline.governance.registration import (RunExtras, finish_version, register_run, unfinished_version,
                                              version_of_run)
from pipeline.governance.store import connect
from pipeline.governance.versions import RegisteredVersion, VersionRow
from pipeline.data.split import read_split, split_paths
from pipeline.interruption import stop_if_requested
from pipeline.preflight import run_preflight
from pipeline.tasks import evaluate_run, report_dir
from pipeline.terminal import table
from pipeline.training.distributed import launch_training
from pipeline.training.loop import TrainResult, run_dir
from pipeline.training.methods import check_supported
from pipeline.training.warm_start import from_parent


GATE_OUTCOME = {True: "pass", False: "FAIL", None: "-"}
publish_alias_moves()   # every alias a flow moves is a Prefect event (tunegate.alias.moved) for Automations


@dataclass(frozen=True)
class RetrainSummary:
    data_version: str
    metrics: dict[str, float]
    report: Path
    model_name: str
    version: str
    alias: str
    reason: str
    audit: str
    audit_failures: list[str]     # failed warning-level checks; a failed error-level check stops the run
    decision: dict                # decision.json: each gate's value, threshold, champion's baseline, verdict
    unchanged: bool = False       # same data, params and code as the registered version: nothing new registered

    def __str__(self) -> str:
        rows = [("audit", self.audit), ("data version", self.data_version),
                *((name, f"{self.metrics[name]:.4f}") for name in gates.gated_metrics(self.metrics)),
                ("report", self.report)]
        if self.unchanged:
            return self._with_audit_failures(table([*rows, ("unchanged", self.reason)]))
        rows += [("registered", f"{self.model_name} version {self.version}"),
                 ("decision", f"{self.alias}: {self.reason}")]
        champion = self.decision["champion"]
        if champion is not None:
            measured = ("re-measured on this data version" if champion["remeasured"]
                        else "its own metrics, same data version")
            rows.append(("baseline", f"champion version {champion['version']}, {measured}"))
        decided = [(gate["name"], _number(gate["value"]), f"threshold {_number(gate['threshold'])}",
                    f"champion {_number(gate['baseline'])}", GATE_OUTCOME[gate["passed"]])
                   for gate in self.decision["gates"]]
        return self._with_audit_failures("\n".join([table(rows), *([table(decided, indent="  ")] if decided else [])]))

    def _with_audit_failures(self, text: str) -> str:
        """Each failed warning-level check on a line of its own, under the audit's verdict."""
        audit, rest = text.split("\n", 1)
        return "\n".join([audit, *(f"  {failure}" for failure in self.audit_failures), rest])


@task(name="preflight", cache_policy=NO_CACHE)
def preflight_task(config: Config) -> None:
    run_preflight(config)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@task(name="audit", cache_policy=AUDIT_CACHE, persist_result=True)
def audit_task(config: Config) -> checks.AuditReport:
    report = checks.audit_raw_data(config)
    get_run_logger().info("audit passed: %s", report.summary)
    return report


@task(name="split", cache_policy=NO_CACHE)
def split_task(config: Config) -> DataVersion:
    version = reproduce_splits(config.project_dir)
    get_run_logger().info("data version %s", version.version)
    return version


def _unless_user_error(task, task_run, state) -> bool:
    # A crash may pass on a retry, which resumes from the last checkpoint; a bad config or model will not.
    return not isinstance(state.data, TunegateError) or isinstance(state.data, TrainingCrashed)


@task(name="train", cache_policy=TRAIN_CACHE, persist_result=True, retry_condition_fn=_unless_user_error)
def train_task(config: Config, data_version: DataVersion) -> TrainResult:
    paths = split_paths(config)
    trained = launch_training(config, read_split(paths.train), read_split(paths.validation),
                              run_dir(config, data_version.version))
    if trained.resumed_from is not None:
        get_run_logger().info("resumed from %s", trained.resumed_from)
    get_run_logger().info("%s: best checkpoint at step %d, validation %s", trained.method, trained.best_step,
                          trained.validation_metrics)
    return trained


@task(name="evaluate", cache_policy=EVALUATE_CACHE, persist_result=True)
def evaluate_task(config: Config, trained: TrainResult) -> EvaluationReport:
    evaluation = evaluate_run(config, trained.model_dir)
    get_run_logger().info("evaluation report %s", evaluation.path)
    return evaluation


@task(name="register", cache_policy=NO_CACHE)
def register_task(config: Config, code: lineage.GitState, data_version: DataVersion, trained: TrainResult,
                  evaluation: EvaluationReport, report: checks.AuditReport, parent: str | None,
                  extras: RunExtras = RunExtras()) -> RegisteredVersion:
    """config is the run's own: model.base as the user wrote it (a parent's URI for a warm start)."""
    store = connect(config)
    unfinished = unfinished_version(store, code, data_version)
    if unfinished is not None:
        get_run_logger().info("finishing version %s, which a run that stopped before its end registered",
                              unfinished.version)
        return unfinished
    return register_run(store, code, data_version, trained, evaluation, report, parent, str(runtime.flow_run.id),
                        extras)


@task(name="same-version", cache_policy=NO_CACHE)
def same_version_task(config: Config, code: lineage.GitState, data_version: DataVersion) -> VersionRow | None:
    """The finished version with this run's data version, params and code, if any."""
    row = version_of_run(connect(config), code, data_version)
    return row if row is not None and row.finished else None


@task(name="promote", cache_policy=NO_CACHE)
def promote_task(config: Config, version: RegisteredVersion, data_version: DataVersion,
                 evaluation: EvaluationReport) -> promotion.Promotion:
    # the champion, when evaluated on other data, is re-measured on this test split, its reports beside ours
    result = promotion.promote_candidate(config, version, data_version.version, read_split(split_paths(config).test),
                                         evaluation.path.parent / "champion", promotion.login_name())
    get_run_logger().info("%s: %s", result.alias, result.decision.summary)
    return result


@task(name="finish", cache_policy=NO_CACHE)
def finish_task(config: Config, version: RegisteredVersion, data_version: DataVersion,
                evaluation: EvaluationReport, report: checks.AuditReport, promoted: promotion.Promotion) -> None:
    finish_version(connect(config), version, data_version, evaluation, report, promoted)


@flow(name="retrain")
def retrain(project_dir: str = ".", overrides: list[str] | None = None) -> RetrainSummary:
    config = load_config(Path(project_dir), overrides or [])
    check_supported(config.train)   # e.g. qlora without a GPU: stop before any work
    require_server(config)          # gates.approval: required with no Prefect server a reviewer could reach
    code = lineage.git_state(config.project_dir)
    work_config, parent = from_parent(config)
    preflight_task(work_config)     # disk, folders, base model, tracking store, DVC remote
    audit_dir = work_config.path(work_config.audit.report_dir)
    report = audit_task.with_options(
        refresh_cache=not ((audit_dir / "audit.json").is_file() and (audit_dir / "audit.html").is_file()))(work_config)
    stop_if_requested()   # Ctrl-C: between steps (pipeline/interruption.py), and in training after a step
    data_version = split_task(work_config)
    stop_if_requested()
    # A cached result whose files are gone is refreshed: trained (or evaluated) again.
    output_dir = run_dir(work_config, data_version.version)
    trained_state = train_task.with_options(retries=config.train.retries,
                                            refresh_cache=not (output_dir / "model").is_dir())(
        work_config, data_version, return_state=True)
    trained = trained_state.result()
    stop_if_requested()
    evaluation_state = evaluate_task.with_options(
        refresh_cache=not (report_dir(work_config, output_dir) / "evaluation.json").is_file())(
        work_config, trained, return_state=True)
    evaluation = evaluation_state.result()
    stop_if_requested()   # the last: registration, promotion and the model card are not stopped halfway
    same = same_version_task(config, code, data_version)
    if same is not None:
        cached = " and ".join(name for name, state in (("training", trained_state), ("evaluation", evaluation_state))
                              if state.name == "Cached")
        name = config.registry.model_name
        reason = (f"same data version, params and code as {name} version {same.version} "
                  f"({', '.join(same.aliases) or 'no alias'}): no new version registered"
                  + (f"; {cached} read from the cache" if cached else ""))
        get_run_logger().info(reason)
        return RetrainSummary(data_version.version, evaluation.metrics, evaluation.path, name, same.version,
                              ",".join(same.aliases), reason, report.summary,
                              [check.headline for check in report.failures], {}, unchanged=True)
    version = register_task(config, code, data_version, trained, evaluation, report, parent)
    promoted = promote_task(work_config, version, data_version, evaluation)
    finish_task(config, version, data_version, evaluation, report, promoted)
    alias, reason = reviewed(config, version.version, promoted.alias, promoted.decision.summary)
    return RetrainSummary(data_version.version, evaluation.metrics, evaluation.path, version.name, version.version,
                          alias, reason, report.summary,
                          [check.headline for check in report.failures], promoted.as_record())
