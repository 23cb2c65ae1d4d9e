"""What every task type's evaluation shares: the `evaluate` metric modules, the report's shape, the files a
suite reads, identity-group metrics, and batches of texts sorted by length.

Every number a promotion gate reads comes from a task type's `evaluate` (pipeline/tasks/), under stable names:
test_<metric>, earlier_<task>_<metric>, general_<benchmark>_<score>, forgetting_<benchmark>,
retained_<benchmark>, <corpus>_<attribute>_gap / _p_value / _<group>_mean,
group_<category>_dp_difference / _eo_difference and their largest, group_dp_difference / group_eo_difference.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import datasets
import evaluate
import numpy as np
import pandas as pd
import torch
from transformers import BatchEncoding, PreTrainedTokenizerBase

from pipeline.audit import slices
from pipeline.config import Config, EvaluateConfig
from pipeline.data.split import LABEL, TEXT
from pipeline.errors import ConfigError, DataError
from pipeline.evaluation import benchmarks, bias

METRICS_DIR = Path(__file__).parent / "metrics"


@dataclass(frozen=True)
class EvaluationReport:
    metrics: dict[str, float]     # flat, stable names: what MLflow, the gates and `tunegate models` read
    details: dict[str, Any]       # everything else in the JSON report: confusion matrix, groups, timings
    path: Path                    # evaluation.json
    artifacts: list[Path]         # the JSON, the HTML page and its plots


def load_metric(name: str) -> evaluate.EvaluationModule:
    script = METRICS_DIR / f"{name}.py"
    if not script.is_file():
        known = ", ".join(sorted(p.stem for p in METRICS_DIR.glob("*.py") if p.stem != "__init__"))
        raise ConfigError(f"Unknown metric {name!r} in evaluate.metrics; available: {known}.")
    return evaluate.load(str(script))


def compute_metrics(settings: EvaluateConfig, probs: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """evaluate.metrics on class probabilities; a module whose predictions feature is a list gets the
    probabilities, any other the predicted class ids."""
    scores: dict[str, float] = {}
    options = settings.metric_options or {}
    for name in settings.metrics:
        metric = load_metric(name)
        takes_probs = isinstance(metric.features["predictions"], datasets.List)
        predictions = probs if takes_probs else probs.argmax(axis=1)
        try:
            scores.update(metric.compute(predictions=predictions, references=references, **options.get(name, {})))
        except (TypeError, ValueError) as exc:
            if name not in options:
                raise
            raise ConfigError(f"evaluate.metric_options.{name} {options[name]}: {exc}") from exc
    return scores


def length_sorted_batches(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int, batch_size: int,
                          device: torch.device) -> Iterator[tuple[np.ndarray, BatchEncoding]]:
    """(row indices, padded batch) in order of text length, so that padding stays short."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    for start in range(0, len(texts), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
        yield idx, batch.to(device)


def benchmark_files(config: Config) -> dict[str, Path]:
    """Every file the evaluation reads besides the test split, by its params.yaml key; checked before any work."""
    settings = config.evaluate
    files = {f"evaluate.general[{i}].path": b.path for i, b in enumerate(settings.general)}
    files |= {f"evaluate.earlier_tasks[{i}].path": t.path for i, t in enumerate(settings.earlier_tasks)}
    if settings.counterfactual is not None:
        files["evaluate.counterfactual.path"] = settings.counterfactual.path
    paths = {key: config.path(path) for key, path in files.items()}
    for key, path in paths.items():
        if not path.is_file():
            raise DataError(f"Benchmark file {path} not found: set {key} in params.yaml to an existing file, "
                            f"or remove that entry to skip it.")
    for i, benchmark in enumerate(settings.general):
        benchmarks.kind_of(benchmark, i)
    return paths


def group_suite(config: Config, frame: pd.DataFrame, probs: np.ndarray) -> list[bias.CategoryGroups]:
    """Group metrics on the identity slices of a split, found with the audit's lexicon and settings."""
    settings = config.audit.bias
    lexicon = slices.load_lexicon(config.path(settings.lexicon) if settings.lexicon else None)
    positive = config.data.label_values.index(settings.positive_label)
    return bias.group_metrics(slices.find_mentions(frame[TEXT], lexicon),
                                    (frame[LABEL] == settings.positive_label).to_numpy(),
                                    probs.argmax(axis=1) == positive, settings.min_slice_rows)

