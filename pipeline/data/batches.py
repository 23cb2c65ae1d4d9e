"""Continual retraining: which incoming batch is new, the pool it joins, the tasks a champion has learned,
the training mix with replay, and the forgetting gate per earlier task.

A batch is a file or a sub-folder of continual.incoming. It is used once: the version trained on it carries
its content's md5 (tag continual_batch_md5), so the tracking store, which survives a new machine, says which
batches are used, and agrees with the registered versions by construction. Only a finished version (promoted,
with its model card) uses its batch: a step killed before that leaves the batch to the next step.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from pipeline.audit.checks import AuditReport, audit_files, normalise
from pipeline.config import Config, EarlierTask
from pipeline.data.readers import READERS
from pipeline.data import drift
from pipeline.errors import AuditFailed, ConfigError, DataError, DriftFailed
from pipeline.governance.versions import VersionRow
from pipeline.data.split import (LABEL, TEXT, SplitPaths, batch_files, pool_batches, read_batch, read_split,
                                 split_paths)

# Lineage tags of a version trained by a continual step (parent_model and data_version are shared with
# the warm start of `model.base: models:/...`).
BATCH_TAG = "continual_batch"
BATCH_MD5_TAG = "continual_batch_md5"
TASKS_TAG = "continual_tasks"     # every task the version was trained on, oldest first, comma-separated
# A rejected batch: the step that rejected it (audit, drift), a tag of its record's run in the tracking store; the
# record itself, also beside the batch in continual.quarantine_dir.
REJECTED_TAG = "continual_rejected"
REJECTION_RECORD = "rejection.json"


@dataclass(frozen=True)
class Batch:
    name: str       # the file's stem or the folder's name: the task's name among the earlier tasks later
    path: Path
    md5: str        # of the batch's data files' names and contents


def check_labelled(config: Config) -> None:
    """Continual retraining learns labelled batches: its drift checks, replay sampling and earlier-task scores
    read the labels, which free-form instructions lack."""
    if config.data.format != "table":
        raise ConfigError(f"tunegate continual learns labelled tables (data.format table), not data.format "
                          f"{config.data.format}: its drift checks, replay and earlier-task scores read labels. "
                          f"Fine-tune on instructions with `tunegate retrain`.")


def batch_md5(path: Path) -> str:
    files = [path] if path.is_file() else batch_files(path)
    digest = hashlib.md5()
    for file in files:
        digest.update(str(file.relative_to(path.parent if path.is_file() else path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def incoming_batches(config: Config) -> list[Batch]:
    """The batches in continual.incoming, oldest name first: data files and sub-folders holding data files."""
    incoming = config.path(config.continual.incoming)
    if not incoming.is_dir():
        return []
    batches = []
    for path in sorted(incoming.iterdir()):
        is_file_batch = path.is_file() and path.suffix.lower() in READERS
        if is_file_batch or (path.is_dir() and batch_files(path)):
            batches.append(Batch(path.stem if path.is_file() else path.name, path, batch_md5(path)))
    return batches


def used_batch_md5s(rows: list[VersionRow]) -> set[str]:
    """The md5s of the batches finished versions were trained on."""
    return {row.tags[BATCH_MD5_TAG] for row in rows if BATCH_MD5_TAG in row.tags and row.finished}


def next_batch(config: Config, used_md5s: set[str]) -> Batch | None:
    """The oldest incoming batch no registered version was trained on; None when every batch is used."""
    return next((batch for batch in incoming_batches(config) if batch.md5 not in used_md5s), None)


def add_to_pool(config: Config, batch: Batch) -> Path:
    """Copy the batch into continual.pool_dir/<name>/, where the split stage finds it; again is a no-op."""
    target = config.path(config.continual.pool_dir) / batch.name
    if target.exists():
        if batch_md5(target if batch.path.is_dir() else target / batch.path.name) == batch.md5:
            return target
        raise DataError(f"{target} already holds a different batch named {batch.name!r}: rename the incoming "
                        f"batch {batch.path} (batch names are task names and must be unique).")
    if batch.path.is_dir():
        shutil.copytree(batch.path, target)
    else:
        target.mkdir(parents=True)
        shutil.copy2(batch.path, target / batch.path.name)
    return target


def pool_texts(config: Config, batch: Batch) -> set[str]:
    """The texts already in the pool, normalised as the audit compares them: every split of the data section and of
    each earlier batch (the batch's own, pooled by a step killed before it finished, left out)."""
    earlier = [None, *(name for name in pool_batches(config) if name != batch.name)]
    splits = [split_paths(config, name) for name in earlier]
    texts = pd.concat([read_split(path)[TEXT] for paths in splits for path in (paths.train, paths.validation,
                                                                                paths.test)])
    return set(normalise(texts).dropna())


def quarantine(config: Config, batch: Batch, step: str, reason: str) -> tuple[Path, dict[str, str]]:
    """Move a batch the audit or drift checks rejected out of continual.incoming, so the next step takes the next
    batch, into continual.quarantine_dir/<name>-<md5 prefix>/ beside its record (REJECTION_RECORD): which step
    rejected it, why, when. Returns the folder and the record."""
    target = config.path(config.continual.quarantine_dir) / f"{batch.name}-{batch.md5[:8]}"
    if target.exists():    # the same content (same md5), rejected before and dropped in again
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.move(batch.path, target / batch.path.name)
    record = {"batch": batch.name, "md5": batch.md5, "step": step, "reason": reason,
              "quarantined": str(target / batch.path.name), "time": datetime.now(timezone.utc).isoformat()}
    (target / REJECTION_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return target, record


def rejection_tags(batch: Batch, step: str) -> dict[str, str]:
    return {BATCH_TAG: batch.name, BATCH_MD5_TAG: batch.md5, REJECTED_TAG: step}


def audit_batch(config: Config, batch: Batch) -> AuditReport:
    """The audit every run makes (quality and bias), on the batch's files, with the texts already in the pool (pool
    leakage); raise AuditFailed on an error."""
    files = [batch.path] if batch.path.is_file() else batch_files(batch.path)
    report = audit_files(config, [str(path) for path in files], None, f"audit-{batch.name}", pool_texts(config, batch))
    if not report.passed:
        errors = "\n".join(f"  {check}" for check in report.errors)
        raise AuditFailed(f"Audit of batch {batch.name!r} failed, nothing was trained or registered "
                          f"({report.summary}):\n{errors}\nFull report: {report.html_path}")
    return report


def check_drift(config: Config, batch: Batch, tasks: list[str]) -> drift.DriftReport:
    """The batch against a stratified sample of the earlier tasks' training rows; raise DriftFailed past an error
    threshold."""
    settings = config.continual.drift
    reference = stratified_sample(earlier_training_rows(config, tasks), settings.reference_rows, config.split.seed)
    report = drift.compare(settings, reference, read_batch(config, batch.path), config.data.label_values,
                           config.split.seed, config.path(settings.report_dir) / batch.name)
    if report.errors:
        errors = "\n".join(f"  {check}" for check in report.errors)
        raise DriftFailed(f"Batch {batch.name!r} drifted from the champion's training data past an error threshold; "
                          f"nothing was trained or registered:\n{errors}\nTo learn it anyway, raise the threshold or "
                          f"set its severity to warning under continual.drift. Report: {report.path}")
    return report


def lineage_tags(batch: Batch, tasks: list[str]) -> dict[str, str]:
    """A version trained on the batch: which batch, and every task it learned, oldest first."""
    return {BATCH_TAG: batch.name, BATCH_MD5_TAG: batch.md5, TASKS_TAG: ",".join([*tasks, batch.name])}


def task_names(config: Config, tags: dict[str, str]) -> list[str]:
    """The tasks a version was trained on, from its lineage: the data section's task when it has none."""
    return tags[TASKS_TAG].split(",") if tags.get(TASKS_TAG) else [config.continual.initial_task]


def task_splits(config: Config, task: str) -> SplitPaths:
    return split_paths(config, None if task == config.continual.initial_task else task)


def with_earlier_tasks(config: Config, tasks: list[str]) -> Config:
    """The config whose evaluation also scores each task's test split (earlier_<task>_<metric>)."""
    earlier = [EarlierTask(name=task, path=str(task_splits(config, task).test), text_column=TEXT,
                           label_column=LABEL) for task in tasks]
    return config.model_copy(update={"evaluate": config.evaluate.model_copy(update={"earlier_tasks": earlier})})


def earlier_training_rows(config: Config, tasks: list[str]) -> pd.DataFrame:
    return pd.concat([read_split(task_splits(config, task).train) for task in tasks], ignore_index=True)


def stratified_sample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    if rows >= len(frame):
        return frame
    sample, _ = train_test_split(frame, train_size=rows, random_state=seed, stratify=frame[LABEL])
    return sample


def replay_mix(batch_train: pd.DataFrame, earlier: pd.DataFrame, replay_share: float, seed: int) -> pd.DataFrame:
    """The batch's training rows plus earlier rows drawn stratified, making up replay_share of the mix."""
    replay_rows = round(len(batch_train) * replay_share / (1 - replay_share))
    if replay_rows == 0:
        return batch_train
    replay = stratified_sample(earlier, replay_rows, seed)
    return pd.concat([batch_train, replay], ignore_index=True).sample(frac=1.0, random_state=seed)
