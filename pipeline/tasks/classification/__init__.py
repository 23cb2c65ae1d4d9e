"""task.type classification: the encoder with a classifier head, one label per text."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Dataset
from peft import TaskType as PeftTaskType
from scipy.special import softmax
from transformers import DataCollatorWithPadding, PreTrainedModel, PreTrainedTokenizerBase

from pipeline.config import Config, QloraConfig
from pipeline.evaluation.suites import compute_metrics
from pipeline.tasks.classification.evaluation import evaluate
from pipeline.training.models import count_tokens, load_classifier
from pipeline.data.split import LABEL, TEXT
from pipeline.tasks.task import TaskType
from pipeline.tasks.classification.serving import TextClassifier, serving


def load_base(config: Config, base_dir: Path, four_bit: QloraConfig | None) -> PreTrainedModel:
    return load_classifier(base_dir, config.data.labels, four_bit)


def tokenize(config: Config, frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase) -> Dataset:
    """Token ids without padding (the collator pads per batch); one fast tokenizer call for the whole frame."""
    encoded = tokenizer(frame[TEXT].tolist(), truncation=True, max_length=config.model.max_length)
    return Dataset.from_dict({**encoded, "labels": frame[LABEL].tolist()})


def validation_metrics(config: Config):
    def trainer_metrics(eval_pred) -> dict[str, float]:
        logits, labels = eval_pred
        return compute_metrics(config.evaluate, softmax(logits, axis=-1), labels)
    return trainer_metrics


def validation_metric_names(config: Config) -> list[str]:
    # A metric module names its outputs only when it computes them: score one sure prediction per class.
    classes = len(config.data.labels)
    return ["loss", *compute_metrics(config.evaluate, np.eye(classes), np.arange(classes))]


def token_counts(config: Config, tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[int]:
    return count_tokens(tokenizer, texts)


def purpose(config: Config) -> tuple[str, str]:
    labels = ", ".join(config.data.labels.values())
    return (f"text classification ({labels})",
            f"Classifies English sentences like those of its training data (`{config.data.train}`) into {labels}.")


TASK = TaskType(peft_task_type=PeftTaskType.SEQ_CLS, load_base=load_base, dataset=tokenize,
                collator=DataCollatorWithPadding, validation_metrics=validation_metrics,
                validation_metric_names=validation_metric_names, validation_rows=lambda config, frame: frame,
                token_counts=token_counts, evaluate=evaluate,
                pipeline_tag="text-classification", purpose=purpose, pyfunc=TextClassifier, serving=serving)
