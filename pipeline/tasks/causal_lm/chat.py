"""Chats of a causal LM: the conversation of a row (a table's text in the prompt template, or an instruction's
own), its tokens up to the assistant's turn and the answer's tokens, and greedy generation."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.config import CausalLmConfig, Config
from pipeline.data.readers import MESSAGES, RESPONSE, Messages
from pipeline.data.split import LABEL, TEXT

IGNORE_INDEX = -100   # label of a token without loss (the prompt's, the padding's): PyTorch's cross-entropy default


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

