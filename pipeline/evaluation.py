"""Task evaluation: predictions of a classifier on a split, scored by the project's `evaluate` metric modules."""
from __future__ import annotations

from pathlib import Path

import evaluate
import numpy as np
import pandas as pd
import torch
from transformers import DataCollatorWithPadding, PreTrainedModel, PreTrainedTokenizerBase

from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.modeling import load_classifier, load_tokenizer
from pipeline.split import LABEL, TEXT

METRICS_DIR = Path(__file__).parent / "metrics"


def load_metric(name: str) -> evaluate.EvaluationModule:
    script = METRICS_DIR / f"{name}.py"
    if not script.is_file():
        known = ", ".join(sorted(p.stem for p in METRICS_DIR.glob("*.py") if p.stem != "__init__"))
        raise ConfigError(f"Unknown metric {name!r} in evaluate.metrics; available: {known}.")
    return evaluate.load(str(script))


def compute_metrics(names: list[str], predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    scores: dict[str, float] = {}
    for name in names:
        scores.update(load_metric(name).compute(predictions=predictions, references=references))
    return scores


@torch.inference_mode()
def predict_proba(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str],
                  max_length: int, batch_size: int) -> np.ndarray:
    """Class probabilities, one row per text; batches of similar lengths so that padding stays short."""
    model.eval()
    order = np.argsort([len(t) for t in texts])
    collator = DataCollatorWithPadding(tokenizer)
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    device = next(model.parameters()).device
    probs = np.empty((len(texts), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        idx = order[start:start + batch_size]
        features = [{key: values[i] for key, values in encoded.items()} for i in idx]
        batch = {k: v.to(device) for k, v in collator(features).items()}
        logits = model(**batch).logits.float()
        probs[idx] = torch.softmax(logits, dim=-1).cpu().numpy()
    return probs


def evaluate_model(config: Config, model_dir: Path, test_frame: pd.DataFrame) -> dict[str, float]:
    """Task metrics of a saved model on the test split, named `test_<metric>`."""
    model, tokenizer = load_classifier(model_dir), load_tokenizer(model_dir)
    probs = predict_proba(model, tokenizer, test_frame[TEXT].tolist(), config.model.max_length,
                          config.evaluate.batch_size)
    scores = compute_metrics(config.evaluate.metrics, probs.argmax(axis=1), test_frame[LABEL].to_numpy())
    return {f"test_{name}": value for name, value in scores.items()}
