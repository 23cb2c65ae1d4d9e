"""task.type causal_lm on a tiny, randomly initialised Llama with SmolLM2's real tokenizer and chat template:
prompt masking against a hand-built example, the log-probability scorer on a hand-computable case, BLiMP
and CrowS-Pairs scoring, a few training steps of every method, evaluation, and the pyfunc round trip."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.evaluation import lm_scoring

from pipeline.governance.registration import Candidate, register_candidate
from pipeline.governance.store import connect
from pipeline.audit.checks import audit_raw_data
from pipeline.config import Config
from pipeline.errors import DataError
from pipeline.training.models import ADAPTER_CONFIG, load_causal_lm, load_tokenizer
from pipeline.data.split import LABEL, TEXT
from pipeline.tasks import causal_lm, evaluate_model
from pipeline.tasks.causal_lm import chat, evaluation
from pipeline.training.loop import train_model
from tests.conftest import REPO, TRAINABLE_METHODS, lm_config, load_registered, sst2_rows, tiny_llama, write_sst2_slice

SYSTEM = "You label the sentiment of movie reviews as positive or negative."


# --- prompts and masking ------------------------------------------------------------------------------------

def test_only_the_answer_tokens_carry_the_loss(tokenizer, tmp_path):
    config = lm_config(tmp_path, tmp_path)
    example = causal_lm.dataset(config, pd.DataFrame({TEXT: ["a gripping film"], LABEL: [1]}), tokenizer)[0]
    # SmolLM2's chat template, written out by hand
    prompt = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nReview: a gripping film\nSentiment:"
              f"<|im_end|>\n<|im_start|>assistant\n")
    answer = "positive<|im_end|>\n"
    prompt_tokens = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_tokens = tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert example["input_ids"] == prompt_tokens + answer_tokens
    assert example["labels"] == [-100] * len(prompt_tokens) + answer_tokens
    # padding per batch: labels padded with -100, inputs with the pad token, masked out
    short = causal_lm.dataset(config, pd.DataFrame({TEXT: ["ok"], LABEL: [0]}), tokenizer)[0]
    batch = causal_lm.collator(tokenizer)([example, short])
    padding = len(example["input_ids"]) - len(short["input_ids"])
    assert batch["labels"][1].tolist()[-padding:] == [-100] * padding
    assert batch["attention_mask"][1].tolist() == [1] * len(short["input_ids"]) + [0] * padding


def test_a_too_long_example_keeps_its_answer_and_loses_the_prompt_start():
    ids, labels = causal_lm.instruction_example([1, 2, 3, 4, 5], [8, 9], max_length=4)
    assert ids == [4, 5, 8, 9] and labels == [-100, -100, 8, 9]


def test_generated_answers_are_parsed_to_the_first_label_named():
    parsed = evaluation.parse_labels(["Positive.", "it is negative, not positive", "unsure", "positively"],
                                    {0: "negative", 1: "positive"})
    assert parsed.tolist() == [1, 0, -1, -1]


# --- the scorer ------------------------------------------------------------------------------------------------

def test_scorer_on_a_uniform_model_gives_minus_tokens_times_log_vocabulary(tokenizer, tmp_path):
    # All weights zero: every logit is 0, every next token has probability 1/V.
    model = load_causal_lm(tiny_llama(tokenizer, tmp_path / "zero", zero=True))
    vocabulary = model.config.vocab_size
    scores = lm_scoring.continuation_logprobs(model, [[1], [1, 2, 3], [5]], [[4, 5], [6], [7, 8, 9, 10]], pad_id=0,
                                              batch_size=2)
    np.testing.assert_allclose(scores, [-2 * math.log(vocabulary), -math.log(vocabulary), -4 * math.log(vocabulary)],
                               rtol=1e-5)


def test_scorer_batched_and_padded_equals_one_sequence_at_a_time(tiny_dir):
    model = load_causal_lm(tiny_dir)
    contexts, continuations = [[1, 7], [3], [2, 9, 4, 4]], [[5, 6, 7], [8], [10, 11]]
    batched = lm_scoring.continuation_logprobs(model, contexts, continuations, pad_id=0, batch_size=3)
    for context, continuation, score in zip(contexts, continuations, batched):
        ids = torch.tensor([context + continuation])
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].detach().double(), dim=-1)
        expected = sum(logprobs[len(context) - 1 + i, token].item() for i, token in enumerate(continuation))
        assert score == pytest.approx(expected, abs=1e-4)


# --- BLiMP and CrowS-Pairs --------------------------------------------------------------------------------------

def test_blimp_accuracy_overall_and_per_field_on_a_few_pairs():
    pairs = pd.DataFrame({"UID": ["a", "a", "b"], "field": ["syntax", "syntax", "semantics"],
                          "sentence_good": ["good one", "good two", "good three"],
                          "sentence_bad": ["bad one", "bad two", "bad three"]})
    logprob = {"good one": -1.0, "bad one": -2.0, "good two": -5.0, "bad two": -3.0, "good three": -1.0,
               "bad three": -4.0}
    scores = lm_scoring.blimp_accuracy(lambda sentences: np.array([logprob[s] for s in sentences]), pairs)
    assert scores == {"accuracy": pytest.approx(2 / 3), "semantics_accuracy": 1.0, "syntax_accuracy": 0.5}


def test_crows_pairs_counts_sent_more_preferred_in_stereo_and_antistereo_rows():
    pairs = pd.DataFrame({"sent_more": ["m1", "m2", "m3", "m4"], "sent_less": ["l1", "l2", "l3", "l4"],
                          "stereo_antistereo": ["stereo", "antistereo", "stereo", "stereo"],
                          "bias_type": ["gender", "gender", "age", "age"]})
    logprob = {"m1": -1.0, "l1": -2.0, "m2": -1.0, "l2": -3.0, "m3": -4.0, "l3": -2.0, "m4": -2.0, "l4": -2.0}
    scores = lm_scoring.crows_pairs_score(lambda sentences: np.array([logprob[s] for s in sentences]), pairs)
    # antistereo row 2 counts like a stereo row; the tie (row 4) is no preference
    assert scores == {"score": 0.5, "age_score": 0.0, "gender_score": 1.0}


def test_benchmark_files_are_read_as_stratified_subsets():
    blimp = lm_scoring.read_blimp(REPO / "data/raw/blimp/blimp-100.jsonl", 134)
    assert len(blimp) == 134 and blimp["UID"].value_counts().eq(2).all() and blimp["UID"].nunique() == 67
    crows = lm_scoring.read_crows_pairs(REPO / "data/raw/crows-pairs/crows_pairs_anonymized.csv", 150)
    assert len(crows) == 150 and crows["bias_type"].nunique() == 9


# --- data -------------------------------------------------------------------------------------------------------

def test_a_malformed_json_lines_file_stops_the_audit_with_the_file_and_line(tiny_dir, tmp_path):
    config = lm_config(tmp_path, tiny_dir)
    raw = tmp_path / "data/raw/sst2"
    write_sst2_slice(raw, {"dev": 40, "test": 40})
    train = raw / "train.jsonl"
    train.write_text('{"sentence": "a fine film", "label": 1}\n{"sentence": "dull", "label": 0\n')
    config = config.model_copy(update={"data": config.data.model_copy(update={"train": str(train)})})
    with pytest.raises(DataError, match=rf"{train}: line 2 is not valid JSON"):
        audit_raw_data(config)


# --- training, evaluation, registry -----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def trained_methods(tiny_dir, tmp_path_factory) -> dict[str, tuple[Config, object]]:
    """Every method, 4 steps on 32 SST-2 instructions on the tiny Llama."""
    root = tmp_path_factory.mktemp("lm-methods")
    train, validation = sst2_rows("train", 32), sst2_rows("dev", 16)
    results = {}
    for method in TRAINABLE_METHODS:
        config = lm_config(root / "project", tiny_dir, **{"train.method": method})
        results[method] = (config, train_model(config, train, validation, root / "train" / method))
    return results


@pytest.mark.parametrize("method", TRAINABLE_METHODS)
def test_every_method_trains_on_the_causal_lm_and_loads_back(trained_methods, tokenizer, method):
    config, trained = trained_methods[method]
    assert trained.best_step == 4 and math.isfinite(trained.validation_metrics["loss"])
    merged = method in ("lora", "dora", "ia3", "full", "freeze")
    assert (trained.model_dir / ADAPTER_CONFIG).is_file() != merged
    model = load_causal_lm(trained.model_dir)
    prompts = chat.prompt_ids(tokenizer, chat.prompt_messages(config.task.causal_lm, ["fine"]))
    assert len(chat.generate(model, tokenizer, prompts, max_new_tokens=2, batch_size=1)) == 1


def test_evaluation_reports_task_forgetting_and_bias_metrics(trained_methods, tmp_path):
    config, trained = trained_methods["lora"]
    report = evaluate_model(config, trained.model_dir, sst2_rows("test", 40), tmp_path / "report")
    metrics = report.metrics
    assert 0 <= metrics["test_accuracy"] <= 1 and 0 <= metrics["test_scored_accuracy"] <= 1
    assert metrics["forgetting_blimp"] == pytest.approx(metrics["base_blimp_accuracy"]
                                                        - metrics["general_blimp_accuracy"])
    assert {"general_blimp_syntax_accuracy", "crows_pairs_race-color_score"} <= set(metrics)
    assert metrics["crows_pairs_gap"] == pytest.approx(abs(metrics["crows_pairs_score"] - 0.5))
    assert report.details["task"]["rows"] == 16 and (tmp_path / "report/evaluation.html").is_file()
    assert len(list(Path(config.evaluate.base_cache_dir).glob("*.json"))) == 2   # base scores cached


def test_the_registered_pyfunc_generates_text_from_prompts(trained_methods, tmp_path):
    config, trained = trained_methods["lora"]
    config = lm_config(tmp_path / "project", Path(config.model.base),
                       **{"registry.tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"})
    candidate = Candidate(model_dir=trained.model_dir, params=config.as_dict(), metrics={},
                                   tags={"method": "lora"}, artifacts=[])
    version = register_candidate(connect(config), candidate)
    model = load_registered(config, version.uri)
    answers = model.predict(pd.DataFrame({"prompt": ["Review: a gripping film\nSentiment:", "Review: dull\nSentiment:"]}))
    assert list(answers.columns) == ["response"] and len(answers) == 2
    assert all(isinstance(text, str) for text in answers["response"])
    # the served model is the trained one: same greedy answers as generating from its directory
    tokenizer = load_tokenizer(trained.model_dir)
    prompts = chat.prompt_ids(tokenizer, [chat.chat(SYSTEM, "Review: dull\nSentiment:")])
    assert chat.generate(load_causal_lm(trained.model_dir), tokenizer, prompts, config.task.causal_lm.max_new_tokens,
                              1) == [answers["response"][1]]


def test_the_audit_counts_tokens_of_the_rendered_prompts(tiny_dir, tmp_path):
    config = lm_config(tmp_path, tiny_dir, **{"model.max_length": 40})
    write_sst2_slice(tmp_path / "data/raw/sst2", {"train": 40, "dev": 40, "test": 40})
    report = audit_raw_data(config)
    truncated = next(c for c in report.files[0].checks if c.check == "truncated")
    # the chat prompt alone is ~35 tokens: most rows go over 40 once rendered
    assert not truncated.passed and truncated.observed > 0.5
