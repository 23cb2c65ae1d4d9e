"""The retraining flow: audit → split → train → evaluate → register → promote.

Each task is a thin call into `pipeline/`; a failed task fails the flow, so nothing after it
(registration, promotion) runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.cache import AUDIT_CACHE, DIRTY, EVALUATE_CACHE, TRAIN_CACHE

from pipeline import audit, gates, registry
from pipeline.config import Config, load_config
from pipeline.evaluation import EvaluationReport, evaluate_model
from pipeline.errors import TunegateError
from pipeline.lineage import git_commit
from pipeline.methods import check_supported
from pipeline.split import read_split, split_paths
from pipeline.training import TrainResult, train_model
from pipeline.versioning import DataVersion, reproduce_splits


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
    unchanged: bool = False       # same data, params and code as the registered version: nothing new registered

    def __str__(self) -> str:
        names = gates.gated_metrics(self.metrics)
        width = max(len(name) for name in names)
        lines = [f"{'audit':<{width}} {self.audit}", *(f"  {failure}" for failure in self.audit_failures),
                 f"{'data version':<{width}} {self.data_version}"]
        lines += [f"{name:<{width}} {self.metrics[name]:.4f}" for name in names]
        lines += [f"{'report':<{width}} {self.report}"]
        if self.unchanged:
            return "\n".join(lines + [f"{'unchanged':<{width}} {self.reason}"])
        lines += [f"{'registered':<{width}} {self.model_name} version {self.version}",
                  f"{'decision':<{width}} {self.alias}: {self.reason}"]
        return "\n".join(lines)


@task(name="audit", cache_policy=AUDIT_CACHE, persist_result=True)
def audit_task(config: Config) -> audit.AuditReport:
    report = audit.audit_raw_data(config)
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
def register_task(config: Config, data_version: DataVersion, trained: TrainResult,
                  evaluation: EvaluationReport, report: audit.AuditReport,
                  lineage: dict[str, str] | None = None, artifacts: list[Path] | None = None,
                  metrics: dict[str, float] | None = None) -> registry.RegisteredVersion:
    """lineage, artifacts, metrics: what a continual step adds (parent, batch, drift report, forgetting per task)."""
    tags = {"git_commit": git_commit(config.project_dir), "params_hash": config.params_hash(),
            "base_model": config.model.base, "method": config.train.method, "audit": "passed",
            **data_version.as_tags(), **(lineage or {})}
    candidate = registry.Candidate(model_dir=trained.model_dir, params=config.as_dict(),
                                   metrics={**trained.as_metrics(), **evaluation.metrics, **(metrics or {})},
                                   tags=tags,
                                   artifacts=[report.json_path, report.html_path, *evaluation.artifacts,
                                              *(artifacts or [])])
    return registry.register_candidate(config, candidate)


@dataclass(frozen=True)
class SameVersion:
    name: str
    version: str
    aliases: list[str]


@task(name="same-version", cache_policy=NO_CACHE)
def same_version_task(config: Config, data_version: DataVersion) -> SameVersion | None:
    """The registered version with this run's data version, params and code (a committed work tree's), if any."""
    commit = git_commit(config.project_dir)
    if commit.endswith(DIRTY):
        return None
    wanted = {"data_version": data_version.version, "params_hash": config.params_hash(), "git_commit": commit}
    row = next((row for row in registry.list_versions(config)
                if all(row.tags.get(key) == value for key, value in wanted.items())), None)
    return None if row is None else SameVersion(config.registry.model_name, row.version, row.aliases)


@task(name="promote", cache_policy=NO_CACHE)
def promote_task(config: Config, version: registry.RegisteredVersion) -> tuple[str, str]:
    current = registry.champion(config)
    decision = gates.decide(version.metrics, current.metrics if current else None, config.gates)
    alias = registry.record_promotion(config, version, decision.promote, decision.summary)
    return alias, decision.summary


@flow(name="retrain")
def retrain(project_dir: str = ".", overrides: list[str] | None = None) -> RetrainSummary:
    config = load_config(Path(project_dir), overrides or [])
    check_supported(config.train)   # e.g. qlora without a GPU: stop before any work
    audit_dir = config.path(config.audit.report_dir)
    report = audit_task.with_options(
        refresh_cache=not ((audit_dir / "audit.json").is_file() and (audit_dir / "audit.html").is_file()))(config)
    data_version = split_task(config)
    # A cached result whose files are gone is refreshed: trained (or evaluated) again.
    output_dir = run_dir(config, data_version)
    trained_state = train_task.with_options(retries=config.train.retries,
                                            refresh_cache=not (output_dir / "model").is_dir())(
        config, data_version, return_state=True)
    trained = trained_state.result()
    evaluation_state = evaluate_task.with_options(
        refresh_cache=not (report_dir(config, output_dir) / "evaluation.json").is_file())(
        config, trained, return_state=True)
    evaluation = evaluation_state.result()
    same = same_version_task(config, data_version)
    if same is not None:
        cached = " and ".join(name for name, state in (("training", trained_state), ("evaluation", evaluation_state))
                              if state.name == "Cached")
        reason = (f"same data version, params and code as {same.name} version {same.version} "
                  f"({', '.join(same.aliases) or 'no alias'}): no new version registered"
                  + (f"; {cached} read from the cache" if cached else ""))
        get_run_logger().info(reason)
        return RetrainSummary(data_version.version, evaluation.metrics, evaluation.path, same.name, same.version,
                              ",".join(same.aliases), reason, report.summary,
                              [check.headline for check in report.failures], unchanged=True)
    version = register_task(config, data_version, trained, evaluation, report)
    alias, reason = promote_task(config, version)
    return RetrainSummary(data_version.version, evaluation.metrics, evaluation.path, version.name, version.version,
                          alias, reason, report.summary, [check.headline for check in report.failures])
