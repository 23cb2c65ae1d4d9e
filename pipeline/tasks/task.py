"""What differs between task types: the interface each type in pipeline/tasks/ fills in."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.config import Config, QloraConfig
from pipeline.evaluation.suites import EvaluationReport
from pipeline.governance.serving import Serving


@dataclass(frozen=True)
class TaskType:
    peft_task_type: str                 # peft's TaskType: which head and inputs an adapter wraps
    # (config, base model directory, 4-bit settings or None) -> the model a method builds on
    load_base: Callable[[Config, Path, QloraConfig | None], PreTrainedModel]
    # (config, split frame, tokenizer) -> the training examples, unpadded (the collator pads per batch)
    dataset: Callable[[Config, pd.DataFrame, PreTrainedTokenizerBase], Dataset]
    collator: Callable[[PreTrainedTokenizerBase], Any]
    # the Trainer's compute_metrics on the validation split (None: the loss only), and the names it returns
    validation_metrics: Callable[[Config], Callable[[Any], dict[str, float]] | None]
    validation_metric_names: Callable[[Config], list[str]]
    # (config, validation split) -> the rows scored every train.eval_steps
    validation_rows: Callable[[Config, pd.DataFrame], pd.DataFrame]
    # (config, tokenizer, texts) -> tokens per training example: what the audit's truncation check counts
    token_counts: Callable[[Config, PreTrainedTokenizerBase, list[str]], list[int]]
    # (config, model directory, test frame, report directory) -> every metric a gate reads
    evaluate: Callable[[Config, Path, pd.DataFrame, Path], EvaluationReport]
    pipeline_tag: str                   # the Hugging Face pipeline a model card names
    # config -> (what the model is for, its intended use): the model card's opening lines
    purpose: Callable[[Config], tuple[str, str]]
    pyfunc: type                        # the mlflow.pyfunc.PythonModel that serves a registered version
    # config -> its input example, model_config and signature
    serving: Callable[[Config], Serving]
