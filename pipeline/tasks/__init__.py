"""Task types: one mapping from task.type to what differs (as pipeline/training/methods/ maps train.method to a builder).

The flow, the methods, the audit, the registry and the gates are one; a type decides the model class,
the training examples and their collator, the validation and evaluation suites (<type>/evaluation.py), and the
pyfunc that serves its registered versions (<type>/serving.py).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import pandas as pd

from pipeline.config import Config
from pipeline.data.split import read_split, split_paths
from pipeline.errors import ConfigError
from pipeline.evaluation.suites import EvaluationReport
from pipeline.training.methods import BaseModel
from pipeline.training.models import base_model_dir
from pipeline.tasks import causal_lm, classification
from pipeline.tasks.task import TaskType

TASK_TYPES: dict[str, TaskType] = {"classification": classification.TASK, "causal_lm": causal_lm.TASK}


def task_type(config: Config) -> TaskType:
    # Checked here, not in the config: the split stage reads params.yaml alone, without a run's -S task.type.
    if config.data.format == "instructions" and config.task.type != "causal_lm":
        raise ConfigError("data.format instructions (prompts and responses) needs task.type causal_lm "
                          "(-S task.type=causal_lm); a classifier trains on a table of texts and labels.")
    return TASK_TYPES[config.task.type]


def base_model(config: Config) -> BaseModel:
    """model.base as the task type loads it, for a method's builder."""
    task = task_type(config)
    return BaseModel(load=partial(task.load_base, config, base_model_dir(config)), peft_task_type=task.peft_task_type)


def evaluate_model(config: Config, model_dir: Path, test_frame: pd.DataFrame, report_dir: Path) -> EvaluationReport:
    """Evaluate a saved model with its task type's suites; write the report."""
    return task_type(config).evaluate(config, model_dir, test_frame, report_dir)


def report_dir(config: Config, run_dir: Path) -> Path:
    """A run's evaluation reports: a folder named as its training folder."""
    return config.path(config.evaluate.report_dir) / run_dir.name


def evaluate_run(config: Config, model_dir: Path, batch: str | None = None) -> EvaluationReport:
    """A run's model (saved in its training folder) on the test split, a batch's for a continual step; the reports
    in the run's report folder."""
    return evaluate_model(config, model_dir, read_split(split_paths(config, batch).test),
                          report_dir(config, model_dir.parent))


__all__ = ["TASK_TYPES", "TaskType", "base_model", "evaluate_model", "evaluate_run", "report_dir", "task_type"]
