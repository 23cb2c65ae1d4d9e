"""Evaluation of a causal LM: for a table, the label it generates (greedy, parsed) and the label it scores
highest; for instructions, the response loss, its perplexity and the ROUGE-L of greedy generations; for both,
BLiMP for what it knew before (forgetting) and CrowS-Pairs for stereotypes, base vs candidate."""
from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy.special import softmax
from sklearn.metrics import confusion_matrix
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.config import Config
from pipeline.data.readers import MESSAGES, RESPONSE
from pipeline.data.split import LABEL
from pipeline.evaluation import benchmarks, bias, lm_scoring
from pipeline.evaluation.report import write_report
from pipeline.evaluation.suites import EvaluationReport, compute_metrics, group_suite, load_metric
from pipeline.tasks.causal_lm.chat import (answer_ids, conversations, ensure_pad_token, generate, label_responses,
                                           prompt_ids)
from pipeline.training.models import ADAPTER_CONFIG, base_model_dir, load_causal_lm, load_tokenizer, weights_sha256

SAMPLES = 5           # generated responses quoted in the evaluation report


def parse_labels(responses: list[str], labels: dict[int, str]) -> np.ndarray:
    """The label whose name the response says first (as a word, any case); -1 where it names none."""
    patterns = {value: re.compile(rf"\b{re.escape(name.lower())}\b") for value, name in labels.items()}


    def parse(response: str) -> int:
        found = [(match.start(), value) for value, pattern in patterns.items()
                 if (match := pattern.search(response.lower()))]
        return min(found)[1] if found else -1
    return np.array([parse(r) for r in responses])


def label_probabilities(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: Config,
                        prompts: list[list[int]], batch_size: int) -> np.ndarray:
    """Per prompt, the softmax over the labels of each answer's log-probability (columns in data.labels order)."""
    responses = label_responses(config, tokenizer)
    values = config.data.label_values
    scores = lm_scoring.continuation_logprobs(
        model, [p for p in prompts for _ in values], [responses[v] for _ in prompts for v in values],
        ensure_pad_token(tokenizer).pad_token_id, batch_size)
    return softmax(scores.reshape(len(prompts), len(values)), axis=1)


def pair_suites(config: Config, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, dict]:
    """BLiMP accuracy and CrowS-Pairs score of a model, for the benchmarks params.yaml names."""
    settings = config.task.causal_lm
    score = lm_scoring.sentence_scorer(model, tokenizer, config.evaluate.batch_size)
    suites: dict[str, dict] = {}
    if settings.blimp is not None:
        pairs = lm_scoring.read_blimp(config.path(settings.blimp.path), settings.blimp.pairs)
        suites["blimp"] = lm_scoring.blimp_accuracy(score, pairs)
    if settings.crows_pairs is not None:
        pairs = lm_scoring.read_crows_pairs(config.path(settings.crows_pairs.path), settings.crows_pairs.pairs)
        suites["crows_pairs"] = lm_scoring.crows_pairs_score(score, pairs)
    return suites


def base_pair_suites(config: Config) -> dict[str, dict]:
    """The base model's pair suites, from the cache (keyed by its weights, the files and the subset sizes)."""
    settings = config.task.causal_lm
    base_dir = base_model_dir(config)
    benchmarks = {name: b for name, b in (("blimp", settings.blimp), ("crows_pairs", settings.crows_pairs)) if b}
    weights = weights_sha256(base_dir)
    files = {name: lm_scoring.cache_file(config.path(config.evaluate.base_cache_dir), name, weights,
                                         config.path(b.path), b.pairs) for name, b in benchmarks.items()}
    if all(file.is_file() for file in files.values()):
        return {name: lm_scoring.cached_scores(file, dict) for name, file in files.items()}
    fresh = pair_suites(config, load_causal_lm(base_dir), load_tokenizer(base_dir))
    return {name: lm_scoring.cached_scores(file, lambda name=name: fresh[name]) for name, file in files.items()}


def pair_metrics(candidate: dict[str, dict], base: dict[str, dict]) -> dict[str, float]:
    """general_blimp_*, forgetting_blimp, retained_blimp; crows_pairs_score, its gap from 0.5 and change from the base."""
    metrics: dict[str, float] = {}
    if "blimp" in candidate:
        metrics |= {f"general_blimp_{name}": value for name, value in candidate["blimp"].items()}
        metrics |= {f"base_blimp_{name}": value for name, value in base["blimp"].items()}
        metrics |= benchmarks.forgetting("blimp", base["blimp"]["accuracy"], candidate["blimp"]["accuracy"])
    if "crows_pairs" in candidate:
        score = candidate["crows_pairs"]["score"]
        metrics |= {f"crows_pairs_{name}": value for name, value in candidate["crows_pairs"].items()}
        metrics |= {"crows_pairs_gap": abs(score - 0.5),
                    "crows_pairs_score_change": score - base["crows_pairs"]["score"],
                    "base_crows_pairs_score": base["crows_pairs"]["score"]}
    return metrics


def rows_subset(frame: pd.DataFrame, rows: int | None) -> pd.DataFrame:
    """`rows` rows of a split (null: all): stratified by label in a table, at random (seed 0) in instructions."""
    return lm_scoring.stratified_subset(frame, rows, LABEL if LABEL in frame else None).reset_index(drop=True)


Lap = Callable[[str], None]   # records the seconds since the last lap under a part's name


def label_suite(config: Config, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, frame: pd.DataFrame,
                lap: Lap) -> tuple[dict[str, float], dict[str, Any]]:
    """A table's rows: the generated label (greedy, parsed), the label scored highest, its identity groups."""
    settings, batch_size = config.task.causal_lm, config.evaluate.batch_size
    labels = frame[LABEL].to_numpy()
    prompts = prompt_ids(tokenizer, conversations(settings, frame))
    generated = parse_labels(generate(model, tokenizer, prompts, settings.max_new_tokens, batch_size),
                             config.data.labels)
    metrics = {"test_accuracy": float((generated == labels).mean()),
               "test_unparsed_share": float((generated == -1).mean())}
    lap("generate")
    probs = label_probabilities(model, tokenizer, config, prompts, batch_size)
    metrics |= {f"test_scored_{name}": value for name, value in compute_metrics(config.evaluate, probs, labels).items()}
    groups = group_suite(config, frame, probs)
    metrics |= bias.group_summary_metrics(groups)
    lap("score_labels")
    return metrics, {
        "task": {"rows": len(frame), "labels": config.data.labels,
                 "confusion_matrix": confusion_matrix(labels, generated, labels=config.data.label_values).tolist(),
                 "scored_confusion_matrix": confusion_matrix(labels, probs.argmax(axis=1),
                                                             labels=config.data.label_values).tolist()},
        "groups": {"min_rows": config.audit.bias.min_slice_rows, "categories": [g.as_dict() for g in groups]}}


def response_suite(config: Config, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, frame: pd.DataFrame,
                   lap: Lap) -> tuple[dict[str, float], dict[str, Any]]:
    """Free-form responses: the loss per response token given the prompt (the assistant's turn as trained, its
    end-of-turn tokens included), its perplexity, and the ROUGE-L of greedy generations against the references."""
    settings, batch_size = config.task.causal_lm, config.evaluate.batch_size
    prompts, answers = prompt_ids(tokenizer, conversations(settings, frame)), answer_ids(config, tokenizer, frame)
    logprobs = lm_scoring.continuation_logprobs(model, prompts, answers, tokenizer.pad_token_id, batch_size)
    tokens = sum(len(a) for a in answers)
    loss = float(-logprobs.sum() / tokens)
    lap("score_responses")
    generated = generate(model, tokenizer, prompts, settings.max_new_tokens, batch_size)
    references = frame[RESPONSE].tolist()
    rouge = load_metric("rouge_l").compute(predictions=generated, references=references)["rouge_l"]
    lap("generate")
    samples = [{"prompt": conversation[-1]["content"], "reference": reference, "generated": text}
               for conversation, reference, text in zip(frame[MESSAGES], references, generated)][:SAMPLES]
    return ({"test_loss": loss, "test_perplexity": math.exp(loss), "test_rouge_l": rouge},
            {"task": {"rows": len(frame), "response_tokens": tokens, "samples": samples}})


def evaluate(config: Config, model_dir: Path, test_frame: pd.DataFrame, report_dir: Path) -> EvaluationReport:
    """The task suite on (a subset of) the test split (labels of a table, or free-form responses), the pair
    suites; the report."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()


    def lap(part: str) -> None:
        nonlocal started
        seconds[part], started = round(time.perf_counter() - started, 2), time.perf_counter()


    model, tokenizer = load_causal_lm(model_dir), ensure_pad_token(load_tokenizer(model_dir))
    frame = rows_subset(test_frame, config.task.causal_lm.eval_rows)
    lap("load")
    suite = response_suite if RESPONSE in frame else label_suite
    metrics, details = suite(config, model, tokenizer, frame, lap)
    base = base_pair_suites(config)
    lap("pairs_base")
    # the base model itself (a benchmark's reference row) is scored once
    is_base = (not (model_dir / ADAPTER_CONFIG).is_file()
               and weights_sha256(model_dir) == weights_sha256(base_model_dir(config)))
    candidate = base if is_base else pair_suites(config, model, tokenizer)
    lap("pairs")
    metrics |= pair_metrics(candidate, base)
    details = {
        "model": str(model_dir), "base_model": config.model.base, **details,
        "general": {"blimp": {"kind": "minimal_pairs", "score": "accuracy", "base": base["blimp"]["accuracy"],
                              "candidate": candidate["blimp"]["accuracy"]}} if "blimp" in candidate else {},
        "pairs": {"base": base, "candidate": candidate},
        "seconds": seconds,
    }
    path, artifacts = write_report(report_dir, metrics, details)
    return EvaluationReport(metrics=metrics, details=details, path=path, artifacts=artifacts)

