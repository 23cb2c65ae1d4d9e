"""A classifier as MLflow serves it: sentences in, label names and probabilities out."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd

from pipeline.config import Config
from pipeline.governance.serving import EXAMPLE_TEXTS, MODEL_ARTIFACT, Serving


class TextClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from pipeline.training.models import load_classifier, load_tokenizer

        model_dir = Path(context.artifacts[MODEL_ARTIFACT])
        self.model = load_classifier(model_dir)
        self.tokenizer = load_tokenizer(model_dir)
        self.max_length = int(context.model_config.get("max_length", 128))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from pipeline.tasks.classification.evaluation import predict_proba

        # MLflow hands over a DataFrame whether it was given one or a list of strings.
        texts = model_input.iloc[:, 0].astype(str).tolist()
        probs = predict_proba(self.model, self.tokenizer, texts, self.max_length, batch_size=64)
        names = self.model.config.id2label
        best = probs.argmax(axis=1)
        return pd.DataFrame({"label": [names[int(i)] for i in best], "score": probs.max(axis=1)})


def serving(config: Config) -> Serving:
    return Serving(EXAMPLE_TEXTS, {"max_length": config.model.max_length}, None)
