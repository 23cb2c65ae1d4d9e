"""Evaluation of a saved classifier: the task suite on the test split and each earlier task's, the general
suite of its encoder against the base model's (forgetting), counterfactual and group bias; one report."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.config import Config
from pipeline.data.readers import read_table
from pipeline.data.split import LABEL, TEXT, to_canonical
from pipeline.evaluation import benchmarks, bias
from pipeline.evaluation.report import write_report
from pipeline.evaluation.suites import (EvaluationReport, benchmark_files, compute_metrics, group_suite,
                                        length_sorted_batches)
from pipeline.training.models import backbone, base_model_dir, load_classifier, load_tokenizer, weights_sha256


@torch.inference_mode()
def predict_proba(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str],
                  max_length: int, batch_size: int) -> np.ndarray:
    """Class probabilities, one row per text."""
    model.eval()
    probs = np.empty((len(texts), model.config.num_labels), dtype=np.float32)
    for idx, batch in length_sorted_batches(tokenizer, texts, max_length, batch_size, model.device):
        probs[idx] = torch.softmax(model(**batch).logits.float(), dim=-1).cpu().numpy()
    return probs



@torch.inference_mode()
def embed(encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int,
          batch_size: int) -> np.ndarray:
    """Sentence embeddings: the encoder's last hidden states, mean-pooled over the attention mask
    (the pooling all-MiniLM-L6-v2 was trained with)."""
    encoder.eval()
    vectors = np.empty((len(texts), encoder.config.hidden_size), dtype=np.float32)
    for idx, batch in length_sorted_batches(tokenizer, texts, max_length, batch_size, encoder.device):
        hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        vectors[idx] = ((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).float().cpu().numpy()
    return vectors



def task_suite(config: Config, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
               frame: pd.DataFrame) -> tuple[dict[str, float], np.ndarray]:
    """evaluate.metrics on a frame of the split format, and the predicted class probabilities."""
    probs = predict_proba(model, tokenizer, frame[TEXT].tolist(), config.model.max_length, config.evaluate.batch_size)
    return compute_metrics(config.evaluate, probs, frame[LABEL].to_numpy()), probs



def earlier_task_scores(config: Config, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                        paths: dict[str, Path]) -> dict[str, float]:
    scores: dict[str, float] = {}
    for i, task in enumerate(config.evaluate.earlier_tasks):
        data = config.data.model_copy(update={"text_column": task.text_column, "label_column": task.label_column})
        frame = to_canonical(read_table(paths[f"evaluate.earlier_tasks[{i}].path"]), data, task.path)
        metrics, _ = task_suite(config, model, tokenizer, frame)
        scores |= {f"earlier_{task.name}_{name}": value for name, value in metrics.items()}
    return scores



def general_scores(config: Config, encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   paths: dict[str, Path]) -> dict[str, float]:
    """Each general benchmark's score for an encoder, by benchmark name."""
    def encode(texts: list[str]) -> np.ndarray:
        return embed(encoder, tokenizer, texts, config.model.max_length, config.evaluate.batch_size)

    return {b.name: benchmarks.score(b, paths[f"evaluate.general[{i}].path"], encode)
            for i, b in enumerate(config.evaluate.general)}



def base_general_scores(config: Config, paths: dict[str, Path]) -> dict[str, float]:
    """The base model's general scores, from the cache; the base model is loaded only for what is missing."""
    base_dir = base_model_dir(config)
    weights = weights_sha256(base_dir)
    cache_dir = config.path(config.evaluate.base_cache_dir)
    files = {b.name: benchmarks.base_cache_file(cache_dir, b, paths[f"evaluate.general[{i}].path"], weights,
                                             config.model.max_length)
             for i, b in enumerate(config.evaluate.general)}
    scores = {name: benchmarks.read_cached(file) for name, file in files.items()}
    if any(value is None for value in scores.values()):
        # The base checkpoint loaded as the candidates are, so its encoder is the same module
        # (a classification head is added and never used).
        fresh = general_scores(config, backbone(load_classifier(base_dir, config.data.labels)), load_tokenizer(base_dir), paths)
        for benchmark in config.evaluate.general:
            if scores[benchmark.name] is None:
                scores[benchmark.name] = fresh[benchmark.name]
                benchmarks.write_cached(files[benchmark.name], benchmark, config.model.base, fresh[benchmark.name])
    return scores



def counterfactual_suite(config: Config, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                         path: Path) -> list[bias.AttributeGap]:
    counterfactual = config.evaluate.counterfactual
    frame = read_table(path)
    bias.check_columns(frame, counterfactual, str(path))
    probs = predict_proba(model, tokenizer, frame[counterfactual.text_column].tolist(), config.model.max_length,
                          config.evaluate.batch_size)
    positive = config.data.label_values.index(config.audit.bias.positive_label)
    return bias.counterfactual_gaps(frame, probs[:, positive], counterfactual)



def evaluate(config: Config, model_dir: Path, test_frame: pd.DataFrame, report_dir: Path) -> EvaluationReport:
    """Evaluate a saved classifier on everything params.yaml's evaluate section lists; write the report."""
    paths = benchmark_files(config)
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    def lap(part: str) -> None:
        nonlocal started
        now = time.perf_counter()
        seconds[part] = round(now - started, 2)
        started = now

    model, tokenizer = load_classifier(model_dir), load_tokenizer(model_dir)
    lap("load")
    task, probs = task_suite(config, model, tokenizer, test_frame)
    metrics = {f"test_{name}": value for name, value in task.items()}
    labels = test_frame[LABEL].to_numpy()
    details: dict[str, Any] = {
        "model": str(model_dir), "base_model": config.model.base,
        "task": {"rows": len(test_frame), "labels": config.data.labels,
                 "confusion_matrix": confusion_matrix(labels, probs.argmax(axis=1),
                                                      labels=config.data.label_values).tolist()}}
    groups = group_suite(config, test_frame, probs)
    metrics |= bias.group_summary_metrics(groups)
    details["groups"] = {"min_rows": config.audit.bias.min_slice_rows, "categories": [g.as_dict() for g in groups]}
    lap("task")
    metrics |= earlier_task_scores(config, model, tokenizer, paths)
    lap("earlier_tasks")

    candidate = general_scores(config, backbone(model), tokenizer, paths)
    lap("general")
    base = base_general_scores(config, paths) if candidate else {}
    lap("general_base")
    details["general"] = {}
    for benchmark in config.evaluate.general:
        name = benchmark.name
        metrics[benchmarks.score_name(benchmark)] = candidate[name]
        metrics |= benchmarks.forgetting(name, base[name], candidate[name])
        details["general"][name] = {"kind": benchmark.kind, "score": benchmarks.KINDS[benchmark.kind].score,
                                    "base": base[name], "candidate": candidate[name]}

    if config.evaluate.counterfactual is not None:
        gaps = counterfactual_suite(config, model, tokenizer, paths["evaluate.counterfactual.path"])
        metrics |= bias.counterfactual_metrics(config.evaluate.counterfactual.name, gaps)
        details["counterfactual"] = {"name": config.evaluate.counterfactual.name,
                                     "alpha": config.evaluate.counterfactual.alpha,
                                     "attributes": [gap.as_dict() for gap in gaps]}
    lap("counterfactual")
    details["seconds"] = seconds
    path, artifacts = write_report(report_dir, metrics, details)
    return EvaluationReport(metrics=metrics, details=details, path=path, artifacts=artifacts)

