"""data.format instructions: free-form chat and prompt/response JSON Lines on the causal LM (the tiny Llama of
conftest): reading and its errors with file and line, the audit, the random split, masking of every turn but the
last assistant's, ROUGE-L, the response loss and perplexity, the gates, and the pyfunc round trip with chats."""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from flows.cli import main
from pipeline.governance import model_card
from pipeline.governance.registration import Candidate, register_candidate
from pipeline.governance.store import connect
from pipeline.audit.checks import audit_raw_data
from pipeline.data.readers import MESSAGES, RESPONSE, read_instructions
from pipeline.errors import AuditFailed, ConfigError, DataError
from pipeline.evaluation.suites import load_metric
from pipeline.governance.gates import decide
from pipeline.training.models import load_causal_lm, load_tokenizer
from pipeline.data.split import make_splits, read_split, write_splits
from pipeline.tasks import causal_lm, evaluate_model, task_type
from pipeline.tasks.causal_lm import chat
from tests.conftest import REPO, lm_config, load_registered, tiny_llama
from tests.test_gates import GATES

SYSTEM = "You rewrite sentences in other words, keeping their meaning."
BUNDLED = REPO / "data/raw/stsb-paraphrase"


def chat_record(user: str, answer: str, system: str | None = SYSTEM) -> dict:
    turns = [{"role": "system", "content": system}] if system else []
    return {"messages": [*turns, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def write_lines(path: Path, lines: list[dict | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def instructions_config(project: Path, model_dir: Path, train: Path, test: Path | None = None, **overrides):
    return lm_config(project, model_dir, data={"format": "instructions", "train": str(train), "validation": None,
                                               "test": None if test is None else str(test)}, **overrides)


# --- reading ------------------------------------------------------------------------------------------------------

def test_chat_and_prompt_response_lines_read_into_one_form(tmp_path):
    path = write_lines(tmp_path / "mixed.jsonl", [
        chat_record("Rewrite: a cat sat.", "A cat was sitting."),
        "",   # blank lines are skipped
        {"prompt": "Rewrite: it rains.", "response": "Rain is falling."},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": "Rewrite: go."}, {"role": "assistant", "content": "Leave."}]}])
    frame = read_instructions(path)
    assert frame[MESSAGES].tolist() == [
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Rewrite: a cat sat."}],
        [{"role": "user", "content": "Rewrite: it rains."}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
         {"role": "user", "content": "Rewrite: go."}]]
    assert frame[RESPONSE].tolist() == ["A cat was sitting.", "Rain is falling.", "Leave."]


def test_the_bundled_paraphrases_read_as_instructions():
    train, test = read_instructions(BUNDLED / "train.jsonl"), read_instructions(BUNDLED / "test.jsonl")
    assert (len(train), len(test)) == (615, 149)
    assert train[MESSAGES][0][0] == {"role": "system", "content": SYSTEM}


@pytest.mark.parametrize(("bad_line", "problem"), [
    ('{"messages": [{"role": "user", "content": "x"}', "is not valid JSON"),
    ('{"text": "a film", "label": 1}', "has no messages field"),
    ('{"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]}', "message 1 is not an object with a role"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "do not end with an assistant's turn"),
    ('{"prompt": "x"}', "needs both a prompt and a response"),
])
def test_a_bad_line_stops_the_audit_with_the_file_and_line(tiny_dir, tmp_path, bad_line, problem):
    train = write_lines(tmp_path / "data/train.jsonl", [chat_record("Rewrite: a.", "An a."), bad_line])
    config = instructions_config(tmp_path / "project", tiny_dir, train)
    with pytest.raises(DataError, match=rf"^{train}: line 2 (is not an instruction: )?.*{problem}"):
        audit_raw_data(config)


def test_the_audit_checks_rendered_prompts_and_responses(tiny_dir, tmp_path):
    rows = [chat_record(f"Rewrite: sentence number {i}.", f"Sentence {i}.") for i in range(12)]
    train = write_lines(tmp_path / "data/train.jsonl", [*rows, rows[0], chat_record("Rewrite: x.", "  ")])
    test = write_lines(tmp_path / "data/test.jsonl", [{"prompt": "Rewrite: sentence number 3.", "response": "S."},
                                                      {"prompt": "Rewrite: something new.", "response": "New."}])
    config = instructions_config(tmp_path / "project", tiny_dir, train, test, **{"model.max_length": 40})
    with pytest.raises(AuditFailed, match="text_not_blank") as failed:   # a blank response is an error
        audit_raw_data(config)
    assert "row 14: '  '" in str(failed.value)
    write_lines(train, [*rows, rows[0]])
    report = audit_raw_data(config)
    checks = {(Path(c.source).name, c.check): c for file in report.files for c in file.checks}
    assert checks["train.jsonl", "duplicates"].observed == pytest.approx(2 / 13)
    # counted as trained: the system prompt, the chat template, the response
    tokens = causal_lm.instruction_token_counts(config, load_tokenizer(tiny_dir), read_instructions(train))
    assert checks["train.jsonl", "truncated"].observed == pytest.approx(sum(t > 40 for t in tokens) / 13)
    assert checks["test.jsonl", "leakage"].observed == 0.5 and not checks["test.jsonl", "leakage"].passed


def test_a_classifier_refuses_instructions(tiny_dir, tmp_path):
    config = instructions_config(tmp_path, tiny_dir, BUNDLED / "train.jsonl", **{"task.type": "classification"})
    with pytest.raises(ConfigError, match="needs task.type causal_lm"):
        task_type(config)


def test_continual_retraining_refuses_instructions(tiny_dir, tmp_path, capsys):
    instructions_config(tmp_path, tiny_dir, BUNDLED / "train.jsonl")
    assert main(["--project-dir", str(tmp_path), "continual", "-S", "task.type=causal_lm"]) == 1
    assert "tunegate continual learns labelled tables (data.format table)" in capsys.readouterr().err


# --- split ------------------------------------------------------------------------------------------------------

def test_instructions_are_split_at_random_by_seed_and_read_back_whole(tiny_dir, tmp_path):
    train = write_lines(tmp_path / "data/train.jsonl", [chat_record(f"Rewrite: {i}.", f"{i} again.") for i in range(40)])
    config = instructions_config(tmp_path / "project", tiny_dir, train)
    frames = make_splits(config)
    assert [len(frames[name]) for name in ("train", "validation", "test")] == [32, 4, 4]
    assert frames["test"][RESPONSE].tolist() == make_splits(config)["test"][RESPONSE].tolist()   # by split.seed
    paths = write_splits(config)
    read = read_split(paths.train)
    assert read[MESSAGES].tolist() == frames["train"][MESSAGES].tolist()
    assert read[RESPONSE].tolist() == frames["train"][RESPONSE].tolist()


# --- training examples ------------------------------------------------------------------------------------------

def test_only_the_last_assistant_turn_carries_the_loss(tokenizer, tiny_dir, tmp_path):
    config = instructions_config(tmp_path, tiny_dir, BUNDLED / "train.jsonl")
    frame = pd.DataFrame({MESSAGES: [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                      {"role": "user", "content": "Rewrite: go."}]],
                          RESPONSE: ["Leave."]})
    example = causal_lm.dataset(config, frame, tokenizer)[0]
    # SmolLM2's chat template, written out by hand; task.causal_lm.system_prompt leads a chat without a system turn
    prompt = (f"<|im_start|>system\n{config.task.causal_lm.system_prompt}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
              f"<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nRewrite: go.<|im_end|>\n"
              f"<|im_start|>assistant\n")
    prompt_tokens = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_tokens = tokenizer("Leave.<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert example["input_ids"] == prompt_tokens + answer_tokens
    assert example["labels"] == [-100] * len(prompt_tokens) + answer_tokens
    # a chat with its own system turn keeps it, and only it
    own = chat.conversations(config.task.causal_lm, read_instructions(BUNDLED / "train.jsonl").head(1))[0]
    assert [turn["role"] for turn in own] == ["system", "user"] and own[0]["content"] == SYSTEM


# --- evaluation ---------------------------------------------------------------------------------------------------

def test_rouge_l_on_a_hand_computed_case():
    rouge = load_metric("rouge_l")
    # "the cat sat on the mat" vs "the cat lay on the mat": LCS 5 words of 6 and 6, F = 5/6;
    # "a b c d" vs "a x c y": LCS "a c", F = 2/4; identical texts: 1
    scores = rouge.compute(predictions=["the cat sat on the mat", "a b c d", "Same words."],
                           references=["the cat lay on the mat", "a x c y", "same words"])
    assert scores == {"rouge_l": pytest.approx((5 / 6 + 0.5 + 1) / 3)}


def test_response_loss_of_a_uniform_model_is_log_vocabulary_and_perplexity_its_exp(tokenizer, tmp_path):
    # All weights zero: every next token has probability 1/V, so the loss per response token is log V.
    zero = tiny_llama(tokenizer, tmp_path / "zero", zero=True)
    config = instructions_config(tmp_path / "project", zero, BUNDLED / "train.jsonl",
                                 **{"task.causal_lm.eval_rows": 6, "task.causal_lm.max_new_tokens": 4})
    report = evaluate_model(config, zero, read_instructions(BUNDLED / "test.jsonl"), tmp_path / "report")
    metrics, vocabulary = report.metrics, load_causal_lm(zero).config.vocab_size
    assert metrics["test_loss"] == pytest.approx(math.log(vocabulary), rel=1e-5)
    assert metrics["test_perplexity"] == pytest.approx(math.exp(metrics["test_loss"])) == pytest.approx(vocabulary)
    assert 0 <= metrics["test_rouge_l"] <= 1 and "test_accuracy" not in metrics
    assert {"forgetting_blimp", "crows_pairs_gap"} <= set(metrics)
    assert report.details["task"]["rows"] == 6 and len(report.details["task"]["samples"]) == 5
    assert "ROUGE-L" in (tmp_path / "report/evaluation.html").read_text()


def test_free_form_runs_are_gated_on_rouge_l_not_accuracy():
    decision = decide({"test_rouge_l": 0.25, "test_perplexity": 9.0}, {"test_rouge_l": 0.2}, GATES)
    assert [(g.name, g.passed) for g in decision.gates[:2]] == [("rouge_l_floor", False), ("rouge_l_vs_champion", True)]
    assert decision.gates[0].reason == "ROUGE-L 0.2500 < floor 0.3000" and not decision.promote


# --- serving ------------------------------------------------------------------------------------------------------

def test_the_registered_pyfunc_answers_chats_and_prompts(tiny_dir, tmp_path):
    model_dir = shutil.copytree(tiny_dir, tmp_path / "model")   # named as the flow saves it
    config = instructions_config(tmp_path / "project", tiny_dir, BUNDLED / "train.jsonl",
                                 **{"registry.tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                                    "task.causal_lm.max_new_tokens": 5})
    version = register_candidate(connect(config), Candidate(
        model_dir=model_dir, params=config.as_dict(), metrics={}, tags={"method": "lora"}, artifacts=[]))
    served = load_registered(config, version.uri)
    chats = [[{"role": "user", "content": "Rewrite: a cat sat."}],
             [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Rewrite: it rains."}]]
    answers = served.predict(pd.DataFrame({"messages": chats}))
    assert list(answers.columns) == ["response"] and len(answers) == 2
    # the served model is the registered one, and a chat without a system turn gets the trained system prompt
    tokenizer = chat.ensure_pad_token(load_tokenizer(model_dir))
    conversations = [chat.with_system(config.task.causal_lm.system_prompt, turns) for turns in chats]
    expected = chat.generate(load_causal_lm(model_dir), tokenizer, chat.prompt_ids(tokenizer, conversations),
                                  5, batch_size=1)
    assert answers["response"].tolist() == expected
    prompted = served.predict(pd.DataFrame({"prompt": ["Rewrite: a cat sat."]}))
    assert prompted["response"].tolist() == expected[:1]
    # what it cannot answer is an error that names the problem (the scoring server's 400)
    for request, says in [({"prompt": [""]}, "Input row 1: its 'prompt' is an empty text."),
                          ({"prompt": ["Rewrite: it rains.", None]}, "Input row 2 has neither a 'prompt'"),
                          ({"messages": [[{"role": "user", "content": " "}]]}, "turn 1's content is an empty text"),
                          ({"messages": [[]]}, "its 'messages' is an empty chat"),
                          ({"review": ["Rewrite: a cat sat."]}, "Expected a column 'prompt' (texts) or 'messages'")]:
        with pytest.raises(MlflowException, match=re.escape(says)) as refused:
            served.predict(pd.DataFrame(request))
        assert refused.value.error_code == "INVALID_PARAMETER_VALUE"


# --- model card ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data_format, tag, says", [
    ("instructions", "text-generation", "for instruction following (free-form responses)"),
    ("table", "text-generation", "for a chat assistant that answers with a label (negative, positive)"),
])
def test_a_language_models_card_says_what_it_is_for(tiny_dir, tmp_path, data_format, tag, says):
    data = ({"format": "instructions", "train": str(BUNDLED / "train.jsonl"), "validation": None, "test": None}
            if data_format == "instructions" else {})
    config = lm_config(tmp_path, tiny_dir, data=data)
    card = model_card.build_card(config, model_card.CardInputs(
        version="models:/lm/1", lineage={}, data_version="d1", split_rows={"train": 10}, metrics={"test_loss": 1.5},
        evaluation={}, audit={"files": []}, decision={"alias": "challenger", "verdict": "hold", "gates": []}))
    assert card.data.pipeline_tag == tag and card.data.eval_results[0].task_type == tag
    assert says in card.text and "text classification" not in card.text
