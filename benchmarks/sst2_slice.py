"""The data and the score the training benchmarks share: a stratified slice of SST-2 train, the dev set for
validation, the 1,821 SST-2 test sentences for accuracy."""
from __future__ import annotations

import os
import platform

import pipeline  # noqa: F401,I001  (offline, quiet, OpenMP threads that sleep: before torch loads)
import numpy as np
import pandas as pd
import torch
from pipeline.config import Config
from pipeline.tasks.classification.evaluation import predict_proba
from pipeline.training.models import load_classifier, load_tokenizer
from pipeline.data.split import LABEL, TEXT, make_splits


def sst2_slice(config: Config, rows: int) -> dict[str, pd.DataFrame]:
    """train: `rows` SST-2 train phrases (stratified, split.seed); validation: dev (872); test: test (1,821)."""
    split = config.split.model_copy(update={"max_train_rows": rows})
    return make_splits(config.model_copy(update={"split": split}))


def accuracy_on(model, tokenizer, config: Config, test: pd.DataFrame) -> float:
    probs = predict_proba(model, tokenizer, test[TEXT].tolist(), config.model.max_length, config.evaluate.batch_size)
    return float((probs.argmax(axis=1) == test[LABEL].to_numpy()).mean())


def saved_model_accuracy(model_dir, config: Config, test: pd.DataFrame) -> float:
    """Accuracy of a model directory as the registry will load it (merged model or adapter on its base)."""
    return accuracy_on(load_classifier(model_dir), load_tokenizer(model_dir), config, test)


def machine() -> dict[str, object]:
    return {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "processor": platform.processor() or platform.machine(), "load_avg_at_start": os.getloadavg()[0]}


def table(rows: list[dict[str, object]]) -> str:
    columns = list(rows[0])
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float | np.floating):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
