"""The retraining flow: preflight → audit → split → train → evaluate → register → promote → model card.

Each task is a thin call into `pipeline/`; a failed task fails the flow, so nothing after it
(registration, promotion) runs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, runtime, task
from prefect.cache_policies import NO_CACHE

from flows.cache import AUDIT_CACHE, EVALUATE_CACHE, TRAIN_CACHE
from pipeline.audit import checks
from pipeline.audit import report as audit_report
from pipeline.governance import gates, lineage, model_card, promotion, registry
from pipeline.config import Config, load_config
from pipeline.evaluation.suites import EvaluationReport
from pipeline.errors import TunegateError
from pipeline.training.methods import check_supported
from pipeline.preflight import run_preflight
from pipeline.data.split import read_split, split_paths
from pipeline.tasks import evaluate_model
from pipeline.training.loop import TrainResult, train_model
from pipeline.data.versioning import DataVersion, reproduce_splits


GATE_OUTCOME = {True: "pass", False: "FAIL", None: "-"}


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
        names = gates.gated_metrics(self.metrics)
        decided = self.decision.get("gates", [])   # none when nothing new was registered
        width = max(len(name) for name in [*names, "data version", *(gate["name"] for gate in decided)])
        lines = [f"{'audit':<{width}} {self.audit}", *(f"  {failure}" for failure in self.audit_failures),
                 f"{'data version':<{width}} {self.data_version}"]
        lines += [f"{name:<{width}} {self.metrics[name]:.4f}" for name in names]
        lines += [f"{'report':<{width}} {self.report}"]
        if self.unchanged:
            return "\n".join(lines + [f"{'unchanged':<{width}} {self.reason}"])
        lines += [f"{'registered':<{width}} {self.model_name} version {self.version}",
                  f"{'decision':<{width}} {self.alias}: {self.reason}"]
        champion = self.decision["champion"]
        if champion is not None:
            measured = ("re-measured on this data version" if champion["remeasured"]
                        else "its own metrics, same data version")
            lines.append(f"{'baseline':<{width}} champion version {champion['version']}, {measured}")
        lines += [f"  {gate['name']:<{width}} {_number(gate['value'])}  threshold {_number(gate['threshold'])}  "
                  f"champion {_number(gate['baseline'])}  "
                  f"{GATE_OUTCOME[gate['passed']]}" for gate in self.decision["gates"]]
        return "\n".join(lines)


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
    return not isinstance(state.data, TunegateError)


def run_dir(config: Config, data_version: DataVersion) -> Path:
    # Deterministic: a retry or a re-run with the same data and params finds its checkpoints here.
    return config.path(config.train.output_dir) / f"{data_version.version[:12]}-{config.params_hash()}"


def report_dir(config: Config, run_dir: Path) -> Path:
    return config.path(config.evaluate.report_dir) / run_dir.name


@task(name="train", cache_policy=TRAIN_CACHE, persist_result=True, retry_condition_fn=_unless_user_error)
def train_task(config: Config, data_version: DataVersion) -> TrainResult:
    paths = split_paths(config)
    output_dir = run_dir(config, data_version)
    trained = train_model(config, read_split(paths.train), read_split(paths.validation), output_dir)
    if trained.resumed_from is not None:
        get_run_logger().info("resumed from %s", trained.resumed_from)
    get_run_logger().info("%s: best checkpoint at step %d, validation %s", trained.method, trained.best_step,
                          trained.validation_metrics)
    return trained


@task(name="evaluate", cache_policy=EVALUATE_CACHE, persist_result=True)
def evaluate_task(config: Config, trained: TrainResult) -> EvaluationReport:
    evaluation = evaluate_model(config, trained.model_dir, read_split(split_paths(config).test),
                                report_dir(config, trained.model_dir.parent))
    get_run_logger().info("evaluation report %s", evaluation.path)
    return evaluation


@task(name="register", cache_policy=NO_CACHE)
def register_task(config: Config, code: lineage.GitState, data_version: DataVersion, trained: TrainResult,
                  evaluation: EvaluationReport, report: checks.AuditReport, parent: str | None,
                  extra_tags: dict[str, str] | None = None, extra_artifacts: list[Path] | None = None,
                  extra_metrics: dict[str, float] | None = None) -> registry.RegisteredVersion:
    """config is the run's own: model.base as the user wrote it (a parent's URI for a warm start). The extras are
    what a continual step adds: its batch and tasks, the drift report.

    A version of this data, params and code that a killed run registered but did not finish is that run's
    registration, complete (its model, reports and tags go in before the version exists): it is finished, not
    registered again."""
    identity = lineage.identity_tags(code, data_version.version, config.params_hash())
    same = registry.same_version(config, identity) if identity else None
    if same is not None and not same.finished:
        get_run_logger().info("finishing version %s, which a run that stopped before its end registered", same.version)
        found = registry.find_version(config, f"models:/{config.registry.model_name}/{same.version}")
        return dataclasses.replace(found, metrics=promotion.candidate_metrics(found.metrics))
    reports = {"audit": [registry.report_artifact(p) for p in (report.json_path, report.html_path)],
               "evaluation": [registry.report_artifact(p) for p in evaluation.artifacts]}
    record = lineage.build_record(config, code, data_version, trained.precision, parent, runtime.flow_run.id,
                                  reports)
    tags = {"git_commit": str(code), "params_hash": config.params_hash(),
            "base_model": config.model.base, "method": config.train.method, "audit": "passed",
            **data_version.as_tags(), **({lineage.PARENT_TAG: parent} if parent else {}), **(extra_tags or {})}
    texts = {lineage.PARAMS_ARTIFACT: yaml.safe_dump(config.as_dict(), sort_keys=False),
             lineage.DVC_LOCK_ARTIFACT: (config.project_dir / "dvc.lock").read_text(encoding="utf-8")}
    candidate = registry.Candidate(model_dir=trained.model_dir, params=config.as_dict(),
                                   metrics={**trained.as_metrics(), **evaluation.metrics, **(extra_metrics or {})},
                                   tags=tags,
                                   artifacts=[report.json_path, report.html_path, *evaluation.artifacts,
                                              *(extra_artifacts or [])],
                                   lineage=record, lineage_texts=texts)
    return registry.register_candidate(config, candidate)


@dataclass(frozen=True)
class SameVersion:
    name: str
    version: str
    aliases: list[str]


@task(name="same-version", cache_policy=NO_CACHE)
def same_version_task(config: Config, code: lineage.GitState, data_version: DataVersion) -> SameVersion | None:
    """The finished version with this run's data version, params and code (a committed work tree's), if any."""
    identity = lineage.identity_tags(code, data_version.version, config.params_hash())
    row = registry.same_version(config, identity) if identity else None
    if row is None or not row.finished:
        return None
    return SameVersion(config.registry.model_name, row.version, row.aliases)


@task(name="promote", cache_policy=NO_CACHE)
def promote_task(config: Config, version: registry.RegisteredVersion, data_version: DataVersion,
                 evaluation: EvaluationReport) -> promotion.Promotion:
    # the champion, when evaluated on other data, is re-measured on this test split, its reports beside ours
    result = promotion.promote_candidate(config, version, data_version.version, read_split(split_paths(config).test),
                                         evaluation.path.parent / "champion", promotion.login_name())
    get_run_logger().info("%s: %s", result.alias, result.decision.summary)
    return result


@task(name="finish", cache_policy=NO_CACHE)
def finish_task(config: Config, version: registry.RegisteredVersion, data_version: DataVersion,
                evaluation: EvaluationReport, report: checks.AuditReport, promoted: promotion.Promotion) -> None:
    """The model card, then the decision tags: last, as they mark the version finished."""
    paths = split_paths(config)
    rows = {name: len(read_split(path)) for name, path in
            (("train", paths.train), ("validation", paths.validation), ("test", paths.test))}
    record = registry.read_lineage(config, version.uri)[1]
    card = model_card.build_card(config, model_card.CardInputs(
        version=version.uri, lineage=record, data_version=data_version.version,
        split_rows=rows, metrics=version.metrics, evaluation=evaluation.details, audit=audit_report.as_json(report),
        decision=promoted.as_record()))
    registry.attach_model_card(config, version, str(card))
    registry.set_decision_tags(config, version, promoted.alias, promoted.move.reason)


def start_from_parent(config: Config) -> tuple[Config, str | None]:
    """A warm start (model.base: models:/NAME/VERSION or @ALIAS): the config the steps run with, its base
    the parent's downloaded model, and the parent's URI with its number, for the lineage."""
    if not lineage.is_registry_uri(config.model.base):
        return config, None
    model_dir, parent = registry.resolve_parent(config, config.model.base)
    return config.model_copy(update={"model": config.model.model_copy(update={"base": str(model_dir)})}), parent


@flow(name="retrain")
def retrain(project_dir: str = ".", overrides: list[str] | None = None) -> RetrainSummary:
    config = load_config(Path(project_dir), overrides or [])
    check_supported(config.train)   # e.g. qlora without a GPU: stop before any work
    code = lineage.git_state(config.project_dir)
    work_config, parent = start_from_parent(config)
    preflight_task(work_config)     # disk, folders, base model, tracking store, DVC remote
    audit_dir = work_config.path(work_config.audit.report_dir)
    report = audit_task.with_options(
        refresh_cache=not ((audit_dir / "audit.json").is_file() and (audit_dir / "audit.html").is_file()))(work_config)
    data_version = split_task(work_config)
    # A cached result whose files are gone is refreshed: trained (or evaluated) again.
    output_dir = run_dir(work_config, data_version)
    trained_state = train_task.with_options(retries=config.train.retries,
                                            refresh_cache=not (output_dir / "model").is_dir())(
        work_config, data_version, return_state=True)
    trained = trained_state.result()
    evaluation_state = evaluate_task.with_options(
        refresh_cache=not (report_dir(work_config, output_dir) / "evaluation.json").is_file())(
        work_config, trained, return_state=True)
    evaluation = evaluation_state.result()
    same = same_version_task(config, code, data_version)
    if same is not None:
        cached = " and ".join(name for name, state in (("training", trained_state), ("evaluation", evaluation_state))
                              if state.name == "Cached")
        reason = (f"same data version, params and code as {same.name} version {same.version} "
                  f"({', '.join(same.aliases) or 'no alias'}): no new version registered"
                  + (f"; {cached} read from the cache" if cached else ""))
        get_run_logger().info(reason)
        return RetrainSummary(data_version.version, evaluation.metrics, evaluation.path, same.name, same.version,
                              ",".join(same.aliases), reason, report.summary,
                              [check.headline for check in report.failures], {}, unchanged=True)
    version = register_task(config, code, data_version, trained, evaluation, report, parent)
    promoted = promote_task(work_config, version, data_version, evaluation)
    finish_task(config, version, data_version, evaluation, report, promoted)
    return RetrainSummary(data_version.version, evaluation.metrics, evaluation.path, version.name, version.version,
                          promoted.alias, promoted.decision.summary, report.summary,
                          [check.headline for check in report.failures], promoted.as_record())
