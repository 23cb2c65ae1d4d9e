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

from pathlib import Path

import pandas as pd
from datasets import Dataset
from peft import TaskType as PeftTaskType
from transformers import DataCollatorForSeq2Seq, PreTrainedModel, PreTrainedTokenizerBase

from pipeline.config import Config, QloraConfig
from pipeline.tasks.causal_lm.chat import (IGNORE_INDEX, answer_ids, conversations, ensure_pad_token,
                                           label_responses, prompt_ids, prompt_messages)
from pipeline.tasks.causal_lm.evaluation import evaluate, rows_subset
from pipeline.tasks.task import TaskType
from pipeline.tasks.causal_lm.serving import TextGenerator, serving
from pipeline.training.models import load_causal_lm

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
                pipeline_tag="text-generation", purpose=purpose, pyfunc=TextGenerator, serving=serving)

