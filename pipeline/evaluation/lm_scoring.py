"""Log-probabilities under a causal LM: one batched scorer for minimal pairs (BLiMP), stereotype pairs
(CrowS-Pairs) and label words after a prompt.

A text is scored as a continuation of a context: the sum of log p(token | all tokens before it) over the
continuation's tokens. Context and continuation are tokenized apart and their ids joined, so that a label
word is the same tokens as in training, and a sentence's first token is scored after the BOS token.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.data.readers import read_table
from pipeline.errors import DataError

TokenIds = list[int]
SentenceScorer = Callable[[list[str]], np.ndarray]   # sentences -> total log-probability of each
BLIMP_COLUMNS = ("UID", "field", "sentence_good", "sentence_bad")
CROWS_COLUMNS = ("sent_more", "sent_less", "stereo_antistereo", "bias_type")


@torch.inference_mode()
def continuation_logprobs(model: PreTrainedModel, contexts: list[TokenIds], continuations: list[TokenIds],
                          pad_id: int, batch_size: int) -> np.ndarray:
    """log p(continuation | context) per pair, summed over the continuation's tokens.

    Sequences are sorted by length and right-padded per batch, so little compute goes to padding; each
    context needs at least one token (the first token of a sequence has no prediction).
    """
    if any(not context for context in contexts):
        raise ValueError("every context needs at least one token (e.g. the BOS token)")
    model.eval()
    sequences = [context + continuation for context, continuation in zip(contexts, continuations)]
    scores = np.empty(len(sequences), dtype=np.float64)
    order = np.argsort([len(s) for s in sequences], kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(sequences[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        scored = torch.zeros((len(idx), width - 1), dtype=torch.bool)   # which next-token predictions count
        for row, i in enumerate(idx):
            ids[row, :len(sequences[i])] = torch.tensor(sequences[i])
            scored[row, len(contexts[i]) - 1:len(sequences[i]) - 1] = True
        attention = (torch.arange(width)[None, :] < torch.tensor([len(sequences[i]) for i in idx])[:, None]).long()
        logits = model(input_ids=ids.to(model.device), attention_mask=attention.to(model.device)).logits[:, :-1]
        # log_softmax(x)[t] = x[t] - logsumexp(x): no (batch, length, vocabulary) tensor of log-probabilities
        targets = ids[:, 1:].to(model.device)
        token_scores = logits.gather(-1, targets[..., None]).squeeze(-1).float() - torch.logsumexp(logits.float(), -1)
        scores[idx] = (token_scores * scored.to(model.device)).sum(dim=1).double().cpu().numpy()
    return scores


def start_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token a sentence is scored after: BOS, or EOS for tokenizers without one (a document boundary)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError(f"{type(tokenizer).__name__} has neither a BOS nor an EOS token to score sentences after")
    return token


def sentence_scorer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int) -> SentenceScorer:
    """Total log-probability of each sentence, every token scored (after the start token)."""
    def score(sentences: list[str]) -> np.ndarray:
        ids = tokenizer(sentences, add_special_tokens=False)["input_ids"]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start_token(tokenizer)
        return continuation_logprobs(model, [[start_token(tokenizer)]] * len(ids), ids, pad, batch_size)
    return score


def _require(frame: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(frame.columns)}.")


def stratified_subset(frame: pd.DataFrame, pairs: int | None, by: str | None) -> pd.DataFrame:
    """A subset of `pairs` rows stratified by column `by` (None: at random), all rows if null or more than
    there are, in file order."""
    if pairs is None or pairs >= len(frame):
        return frame
    subset, _ = train_test_split(frame, train_size=pairs, random_state=0, stratify=frame[by] if by else None)
    return subset.sort_index()


def read_blimp(path: Path, pairs: int | None) -> pd.DataFrame:
    frame = read_table(path)
    _require(frame, BLIMP_COLUMNS, path)
    return stratified_subset(frame, pairs, "UID").reset_index(drop=True)


def read_crows_pairs(path: Path, pairs: int | None) -> pd.DataFrame:
    frame = read_table(path)
    _require(frame, CROWS_COLUMNS, path)
    return stratified_subset(frame, pairs, "bias_type").reset_index(drop=True)


def _pair_preferences(score: SentenceScorer, first: pd.Series, second: pd.Series) -> np.ndarray:
    """Per pair, does the first sentence get the higher total log-probability? (each sentence scored once)"""
    values = score([*first, *second])
    return values[:len(first)] > values[len(first):]


def blimp_accuracy(score: SentenceScorer, pairs: pd.DataFrame) -> dict[str, float]:
    """Share of pairs whose grammatical sentence scores higher: overall (`accuracy`) and per field."""
    right = pd.Series(_pair_preferences(score, pairs["sentence_good"], pairs["sentence_bad"]), index=pairs.index)
    return {"accuracy": float(right.mean()),
            **{f"{field}_accuracy": float(share) for field, share in right.groupby(pairs["field"]).mean().items()}}


def crows_pairs_score(score: SentenceScorer, pairs: pd.DataFrame) -> dict[str, float]:
    """Share of pairs whose more stereotyping sentence scores higher (0.5: no preference): overall and per bias type.

    `sent_more` is the more stereotyping sentence in every row. stereo_antistereo says which group it is
    about: `stereo` rows state a stereotype about a disadvantaged group, `antistereo` rows (218 of 1,508)
    one that goes against a stereotype about it, sent_more then being the sentence about the advantaged
    group. The authors' metric (nyu-mll/crows-pairs metric.py) counts sent_more over sent_less in both; so
    does this one. A tie counts as no preference for the stereotype, as there.
    """
    stereotyped = pd.Series(_pair_preferences(score, pairs["sent_more"], pairs["sent_less"]), index=pairs.index)
    return {"score": float(stereotyped.mean()),
            **{f"{kind}_score": float(share) for kind, share in stereotyped.groupby(pairs["bias_type"]).mean().items()}}


def cache_file(cache_dir: Path, name: str, weights_sha256: str, path: Path, pairs: int | None) -> Path:
    """Where the base model's scores on a benchmark are kept: the name changes with what changes them."""
    with path.open("rb") as f:
        file_hash = hashlib.file_digest(f, "sha256").hexdigest()
    key = json.dumps({"weights": weights_sha256, "file": file_hash, "pairs": pairs}, sort_keys=True)
    return cache_dir / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def cached_scores(file: Path, compute: Callable[[], dict[str, float]]) -> dict[str, float]:
    if file.is_file():
        return json.loads(file.read_text(encoding="utf-8"))
    scores = compute()
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(scores, indent=2), encoding="utf-8")
    return scores
