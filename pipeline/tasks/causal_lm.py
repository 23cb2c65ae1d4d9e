"""task.type causal_lm: a chat LM fine-tuned on instructions.

The instructions come from a labelled table (data.format table) or as they are (data.format instructions).
A table's row becomes a chat: the system prompt, the user's turn (task.causal_lm.prompt_template with the
row's text) and the assistant's answer (the label's name, e.g. "positive"). An instruction row is its
conversation and the assistant's response; the system prompt leads a conversation that has none.
The loss is on the answer's tokens only. Evaluation: for a table, the label the model generates (greedy,
parsed) and the label it scores highest; for instructions, the response loss, its perplexity and the
ROUGE-L of greedy generations; for both, BLiMP for what it knew before (forgetting) and CrowS-Pairs for
stereotypes, base vs candidate.
"""
from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from peft import TaskType as PeftTaskType
from scipy.special import softmax
from sklearn.metrics import confusion_matrix
from transformers import DataCollatorForSeq2Seq, PreTrainedModel, PreTrainedTokenizerBase

from pipeline import general, lm_scoring, model_bias
from pipeline.config import CausalLmConfig, Config, QloraConfig
from pipeline.data import MESSAGES, RESPONSE, Messages
from pipeline.evaluation import EvaluationReport, compute_metrics, group_suite, load_metric
from pipeline.evaluation_report import write_report
from pipeline.modeling import ADAPTER_CONFIG, base_model_dir, load_causal_lm, load_tokenizer, weights_sha256
from pipeline.split import LABEL, TEXT
from pipeline.tasks.task import TaskType

IGNORE_INDEX = -100   # label of a token without loss (the prompt's, the padding's): PyTorch's cross-entropy default
SAMPLES = 5           # generated responses quoted in the evaluation report


def with_system(system_prompt: str | None, conversation: Messages) -> Messages:
    """The conversation led by the system prompt, unless it has a system turn of its own."""
    if not system_prompt or any(turn["role"] == "system" for turn in conversation):
        return conversation
    return [{"role": "system", "content": system_prompt}, *conversation]


def chat(system_prompt: str | None, user: str) -> Messages:
    return with_system(system_prompt, [{"role": "user", "content": user}])


def prompt_messages(settings: CausalLmConfig, texts: list[str]) -> list[Messages]:
    return [chat(settings.system_prompt, settings.prompt_template.format(text=text)) for text in texts]


def prompt_ids(tokenizer: PreTrainedTokenizerBase, conversations: list[Messages]) -> list[list[int]]:
    """The chat template up to the assistant's turn, as token ids: what the model answers after."""
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def response_ids(tokenizer: PreTrainedTokenizerBase, responses: list[str]) -> list[list[int]]:
    """Each assistant's turn as the chat template writes it (the answer and the end-of-turn tokens), as token ids."""
    user = [{"role": "user", "content": "x"}]
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    turns = []
    for response in responses:
        full = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": response}], tokenize=False)
        if not full.startswith(prompt):
            raise ValueError(f"{type(tokenizer).__name__}'s chat template does not continue its generation prompt "
                             f"with the assistant's turn, so the answer's tokens cannot be told from the prompt's")
        turns.append(full[len(prompt):])
    return tokenizer(turns, add_special_tokens=False)["input_ids"] if turns else []


def label_responses(config: Config, tokenizer: PreTrainedTokenizerBase) -> dict[int, list[int]]:
    values = config.data.label_values
    return dict(zip(values, response_ids(tokenizer, [config.data.labels[v] for v in values])))


def conversations(settings: CausalLmConfig, frame: pd.DataFrame) -> list[Messages]:
    """The prompt conversation of each row of a split: a table's text in the template, or an instruction's own."""
    if MESSAGES in frame:
        return [with_system(settings.system_prompt, conversation) for conversation in frame[MESSAGES]]
    return prompt_messages(settings, frame[TEXT].tolist())


def answer_ids(config: Config, tokenizer: PreTrainedTokenizerBase, frame: pd.DataFrame) -> list[list[int]]:
    """The assistant's turn of each row: an instruction's response, or a table's label name."""
    if RESPONSE in frame:
        return response_ids(tokenizer, frame[RESPONSE].tolist())
    responses = label_responses(config, tokenizer)
    return [responses[label] for label in frame[LABEL]]


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    # Padding is masked out everywhere (attention, loss), so any token serves; chat LMs often have none.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(config: Config, base_dir: Path, four_bit: QloraConfig | None) -> PreTrainedModel:
    return load_causal_lm(base_dir, four_bit)


def instruction_example(prompt: list[int], response: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, labels): the loss only on the response; a too long example loses the prompt's beginning,
    so that the assistant's turn and its answer stay whole."""
    ids = (prompt + response)[-max_length:]
    labels = ([IGNORE_INDEX] * len(prompt) + response)[-max_length:]
    return ids, labels


def dataset(config: Config, frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase) -> Dataset:
    prompts = prompt_ids(tokenizer, conversations(config.task.causal_lm, frame))
    examples = [instruction_example(p, a, config.model.max_length)
                for p, a in zip(prompts, answer_ids(config, tokenizer, frame))]
    return Dataset.from_dict({"input_ids": [ids for ids, _ in examples], "labels": [labels for _, labels in examples],
                              "attention_mask": [[1] * len(ids) for ids, _ in examples]})


def collator(tokenizer: PreTrainedTokenizerBase) -> DataCollatorForSeq2Seq:
    """Pads each batch to its longest example: input ids with the pad token, labels with IGNORE_INDEX."""
    return DataCollatorForSeq2Seq(ensure_pad_token(tokenizer), padding=True, label_pad_token_id=IGNORE_INDEX)


def token_counts(config: Config, tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[int]:
    """Tokens of each rendered prompt plus the longest answer: what training cuts at model.max_length."""
    longest = max(len(ids) for ids in label_responses(config, tokenizer).values())
    return [len(ids) + longest for ids in prompt_ids(tokenizer, prompt_messages(config.task.causal_lm, texts))]


def instruction_token_counts(config: Config, tokenizer: PreTrainedTokenizerBase, frame: pd.DataFrame) -> list[int]:
    """Tokens of each instruction's rendered conversation and response: what training cuts at model.max_length."""
    prompts = prompt_ids(tokenizer, conversations(config.task.causal_lm, frame))
    return [len(p) + len(a) for p, a in zip(prompts, answer_ids(config, tokenizer, frame))]


@torch.inference_mode()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]],
             max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy continuations of token-id prompts, decoded without special tokens; batches of similar lengths,
    left-padded (generation appends on the right)."""
    model.eval()
    pad = ensure_pad_token(tokenizer).pad_token_id
    outputs = [""] * len(prompts)
    order = np.argsort([len(p) for p in prompts], kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in idx], device=model.device)
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx], device=model.device)
        generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=pad)
        for row, i in enumerate(idx):
            outputs[i] = tokenizer.decode(generated[row, width:], skip_special_tokens=True)
    return outputs


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
        metrics |= general.forgetting("blimp", base["blimp"]["accuracy"], candidate["blimp"]["accuracy"])
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
    metrics |= model_bias.group_summary_metrics(groups)
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


def validation_metrics(config: Config) -> None:
    return None   # the validation loss on the answers' tokens: logits over the vocabulary are too big to gather


def validation_metric_names(config: Config) -> list[str]:
    return ["loss"]


def validation_rows(config: Config, frame: pd.DataFrame) -> pd.DataFrame:
    return rows_subset(frame, config.task.causal_lm.validation_rows)


def purpose(config: Config) -> tuple[str, str]:
    if config.data.format == "instructions":
        return ("instruction following (free-form responses)",
                f"Answers chats and prompts like those of its training data (`{config.data.train}`) in the way "
                f"its responses do.")
    labels = ", ".join(config.data.labels.values())
    return (f"a chat assistant that answers with a label ({labels})",
            f"Answers the prompt `{config.task.causal_lm.prompt_template}` about English sentences like those of "
            f"its training data (`{config.data.train}`) with one of {labels}.")


TASK = TaskType(peft_task_type=PeftTaskType.CAUSAL_LM, load_base=load_base, dataset=dataset, collator=collator,
                validation_metrics=validation_metrics, validation_metric_names=validation_metric_names,
                validation_rows=validation_rows, token_counts=token_counts, evaluate=evaluate,
                pipeline_tag="text-generation", purpose=purpose)
