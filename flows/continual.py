"""The continual step: a new batch → audit + drift → DVC pool → warm start + replay → evaluate on the batch,
every earlier task and the general suite → register with parent → gates against the champion re-measured.

Several candidates (continual.candidates) train in parallel on a Dask cluster (prefect-dask).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.task_runners import ThreadPoolTaskRunner

from flows.approval import require_server, reviewed
from flows.retrain import finish_task, register_task, split_task
from pipeline.audit import checks
from pipeline.config import Config, load_continual_config
from pipeline.data import batches, drift
from pipeline.data.split import read_split, split_paths
from pipeline.data.versioning import DataVersion, reproduce_splits
from pipeline.evaluation.suites import EvaluationReport
from pipeline.governance import lineage, promotion
from pipeline.errors import AuditFailed, DataError, DriftFailed
from pipeline.governance.registration import RunExtras, record_rejection
from pipeline.governance.store import connect
from pipeline.governance.versions import RegisteredVersion, VersionRow, champion_row, download_model, list_versions
from pipeline.interruption import stop_if_requested
from pipeline.project_lock import project_lock
from pipeline.tasks import evaluate_run
from pipeline.training.distributed import launch_training
from pipeline.training.loop import TrainResult, run_dir
from pipeline.training.methods import check_supported
from pipeline.training.warm_start import from_champion


@dataclass(frozen=True)
class CandidateOutcome:
    overrides: list[str]
    version: str
    metrics: dict[str, float]
    alias: str
    reason: str

    def __str__(self) -> str:
        return f"version {self.version} ({' '.join(self.overrides) or 'params.yaml'}): {self.alias}: {self.reason}"


@dataclass(frozen=True)
class ContinualSummary:
    batch: str | None             # None: no new batch, nothing trained
    message: str
    data_version: str | None = None
    parent: str | None = None     # models:/NAME/VERSION the candidates started from, or the base model
    tasks: list[str] = field(default_factory=list)          # earlier tasks, from the champion's lineage
    drift: list[str] = field(default_factory=list)
    champion_metrics: dict[str, float] = field(default_factory=dict)   # re-measured on this step's data
    candidates: list[CandidateOutcome] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [self.message]
        if self.batch is None:
            return "\n".join(lines)
        lines += [f"data version {self.data_version}", f"started from {self.parent}",
                  f"earlier tasks {', '.join(self.tasks)}", *(f"drift {line}" for line in self.drift)]
        return "\n".join(lines + [str(candidate) for candidate in self.candidates])


@dataclass(frozen=True)
class Champion:
    uri: str                      # models:/NAME/VERSION
    model_dir: Path
    tasks: list[str]


@task(name="registry-state", cache_policy=NO_CACHE)
def registry_state_task(config: Config) -> tuple[VersionRow | None, set[str]]:
    """The champion's row, and the md5s of the batches used: a version a killed step left unfinished leaves its
    batch to the next step, which finishes that version."""
    rows = list_versions(connect(config))
    return champion_row(rows), batches.used_batch_md5s(rows)


@task(name="champion", cache_policy=NO_CACHE)
def champion_task(config: Config, row: VersionRow) -> Champion:
    return Champion(row.uri, download_model(connect(config), row.uri), batches.task_names(config, row.tags))


@task(name="audit-batch", cache_policy=NO_CACHE)
def audit_batch_task(config: Config, batch: batches.Batch) -> checks.AuditReport:
    report = batches.audit_batch(config, batch)
    get_run_logger().info("audit of batch %s passed: %s", batch.name, report.summary)
    return report


@task(name="quarantine-batch", cache_policy=NO_CACHE)
def quarantine_task(config: Config, batch: batches.Batch, step: str, reason: str) -> str:
    """The rejected batch out of continual.incoming into continual.quarantine_dir with why, and its record in the
    tracking store (a run of its own): the next step takes the next batch instead of failing on this one again.
    Returns what the step's error adds: where the batch went and how to have it learned."""
    folder, record = batches.quarantine(config, batch, step, reason)
    record_rejection(connect(config), f"rejected-{batch.name}", batches.rejection_tags(batch, step),
                     {batches.REJECTION_RECORD: record})
    get_run_logger().warning("batch %s rejected at the %s step: moved to %s", batch.name, step, folder)
    return (f"Batch {batch.name!r} was moved to {folder} (why: {folder / batches.REJECTION_RECORD}); the next step "
            f"takes the next batch. To have it learned, fix it and move it back into "
            f"{config.path(config.continual.incoming)}.")


@task(name="drift", cache_policy=NO_CACHE)
def drift_task(config: Config, batch: batches.Batch, tasks: list[str]) -> drift.DriftReport:
    report = batches.check_drift(config, batch, tasks)
    for check in report.checks:
        get_run_logger().info("drift %s", check)
    return report


@task(name="pool", cache_policy=NO_CACHE)
def pool_task(config: Config, batch: batches.Batch) -> DataVersion:
    """The batch joins the pool; `dvc repro split` versions the earlier data plus the batch."""
    batches.add_to_pool(config, batch)
    version = reproduce_splits(config.project_dir)
    get_run_logger().info("pool with batch %s: data version %s", batch.name, version.version)
    return version


def training_config(config: Config, champion: Champion | None) -> Config:
    return from_champion(config, champion.model_dir if champion else None, champion.uri if champion else None)


@task(name="train-candidate", cache_policy=NO_CACHE)
def train_candidate_task(config: Config, data_version: DataVersion, batch: str, tasks: list[str],
                         champion: Champion | None) -> TrainResult:
    start = training_config(config, champion)
    batch_splits = split_paths(config, batch)
    mix = batches.replay_mix(read_split(batch_splits.train), batches.earlier_training_rows(config, tasks),
                             config.continual.replay_share, config.train.seed)
    trained = launch_training(start, mix, read_split(batch_splits.validation), run_dir(start, data_version.version))
    get_run_logger().info("%s on %d rows (%d replayed): best step %d, validation %s", trained.method, len(mix),
                          len(mix) - len(read_split(batch_splits.train)), trained.best_step, trained.validation_metrics)
    return trained


@task(name="evaluate-candidate", cache_policy=NO_CACHE)
def evaluate_candidate_task(config: Config, trained: TrainResult, batch: str) -> EvaluationReport:
    evaluation = evaluate_run(config, trained.model_dir, batch)
    get_run_logger().info("evaluation report %s", evaluation.path)
    return evaluation


@task(name="promote-best", cache_policy=NO_CACHE)
def promote_best_task(config: Config, versions: list[RegisteredVersion], data_version: DataVersion,
                      batch: str) -> list[promotion.Promotion]:
    """The champion re-measured on the batch's test split and each earlier task's; every gate, and forgetting of
    each earlier task; the best passing candidate becomes champion, the others challengers."""
    report_dir = config.path(config.evaluate.report_dir) / f"champion-{batch}"
    return promotion.promote_best(config, versions, data_version.version, read_split(split_paths(config, batch).test),
                                  report_dir, promotion.login_name())


@flow(name="continual-step")
def continual_step(project_dir: str = ".", overrides: list[str] | None = None) -> ContinualSummary:
    config = load_continual_config(Path(project_dir), overrides or [])
    batches.check_labelled(config)
    require_server(config)
    candidates = [load_continual_config(Path(project_dir), [*(overrides or []), *extra])
                  for extra in config.continual.candidates or [[]]]
    for candidate in candidates:
        check_supported(candidate.train)
    logger = get_run_logger()
    current, used = registry_state_task(config)
    batch = batches.next_batch(config, used)
    if batch is None:
        message = f"No new batch in {config.path(config.continual.incoming)}: nothing to train."
        logger.info(message)
        return ContinualSummary(batch=None, message=message)
    logger.info("new batch %s (%s)", batch.name, batch.path)
    champion = champion_task(config, current) if current else None
    tasks = champion.tasks if champion else [config.continual.initial_task]
    for candidate in candidates:
        training_config(candidate, champion)   # a warm start that cannot work stops here, before any work
    split_task(config)                         # the earlier pool's splits, from DVC, before the batch joins
    try:
        report = audit_batch_task(config, batch)
        drift_report = drift_task(config, batch, tasks)
    except (AuditFailed, DataError, DriftFailed) as rejected:   # DataError: a batch file the audit cannot read
        step = "drift" if isinstance(rejected, DriftFailed) else "audit"
        raise type(rejected)(f"{rejected}\n{quarantine_task(config, batch, step, str(rejected))}") from rejected
    stop_if_requested()   # Ctrl-C: between steps (pipeline/interruption.py), and in training after a step
    data_version = pool_task(config, batch)
    stop_if_requested()

    evaluated = [batches.with_earlier_tasks(candidate, tasks) for candidate in candidates]
    trained = [train_candidate_task.submit(candidate, data_version, batch.name, tasks, champion)
               for candidate in evaluated]
    evaluations = [evaluate_candidate_task.submit(candidate, run, batch.name)
                   for candidate, run in zip(evaluated, trained)]
    warm_start = champion is not None and config.train.init == "champion"
    code = lineage.git_state(config.project_dir)
    for evaluation in evaluations:
        evaluation.wait()
    stop_if_requested()   # the last: registration and promotion are not stopped halfway
    extras = RunExtras(tags=batches.lineage_tags(batch, tasks), artifacts=[drift_report.path])
    versions = [register_task(candidate, code, data_version, run.result(), evaluation.result(), report,
                              champion.uri if warm_start else None, extras)
                for candidate, run, evaluation in zip(evaluated, trained, evaluations)]
    promotions = promote_best_task(evaluated[0], versions, data_version, batch.name)
    for candidate, version, evaluation, promoted in zip(evaluated, versions, evaluations, promotions):
        finish_task(candidate, version, data_version, evaluation.result(), report, promoted)
    outcomes = [CandidateOutcome(extra, version.version, {**version.metrics, **promoted.logged},
                                 *reviewed(config, version.version, promoted.alias,
                                           promoted.move.reason if promoted.move else promoted.decision.summary))
                for extra, version, promoted in zip(config.continual.candidates or [[]], versions, promotions)]
    for outcome in outcomes:   # what a scheduled run, which prints no summary, tells whoever reads its log
        logger.info("%s", outcome)
    baseline = promotions[0].baseline
    parent = champion.uri if warm_start else config.model.base
    return ContinualSummary(batch=batch.name, message=f"Batch {batch.name} learned.",
                            data_version=data_version.version, parent=parent, tasks=tasks,
                            drift=[str(check) for check in drift_report.checks],
                            champion_metrics=baseline.metrics if baseline else {}, candidates=outcomes)


def task_runner(config: Config):
    """One candidate: in the flow's process. Several: a Dask cluster, continual.dask_address's or a local one.

    A local cluster's worker processes (one per candidate: a process each keeps training seeded as alone) report
    to the flow's Prefect API, a temporary one too; a team's cluster needs PREFECT_API_URL set on its workers.
    """
    if len(config.continual.candidates) < 2:
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    if config.continual.dask_address:
        return DaskTaskRunner(address=config.continual.dask_address)
    with get_client(sync_client=True) as client:
        api_url = str(client.api_url)
    # on this machine's loopback only: the scheduler and its dashboard would otherwise listen on every interface
    return DaskTaskRunner(cluster_kwargs={"n_workers": len(config.continual.candidates), "threads_per_worker": 1,
                                          "processes": True, "env": {"PREFECT_API_URL": api_url},
                                          "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"})


@flow(name="continual")
def continual_flow(project_dir: str = ".", overrides: list[str] | None = None) -> ContinualSummary:
    """What `tunegate continual`, the schedule and prefect.yaml run: the step on the task runner params.yaml asks for."""
    config = load_continual_config(Path(project_dir), overrides or [])
    with project_lock(config.project_dir):   # a scheduled run's own; the CLI's, held already, for `tunegate continual`
        return continual_step.with_options(task_runner=task_runner(config))(project_dir, overrides)
