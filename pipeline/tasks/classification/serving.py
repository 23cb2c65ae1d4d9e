"""A classifier as MLflow serves it: sentences in, label names and probabilities out."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, ColSpec, Schema

from pipeline.config import Config
from pipeline.data.split import TEXT
from pipeline.governance.serving import EXAMPLE_TEXTS, MODEL_ARTIFACT, Serving, invalid_input, text_problem

# {"inputs": [texts]} arrives as the column 0, a dataframe (dataframe_split, dataframe_records) by its column's name
TEXT_COLUMNS = (0, TEXT)
SHOWN_PROBLEMS = 5   # a request's bad rows named in its error, at most
# The input is typed Any: MLflow turns every value into a string for a string column (null becomes "None", 42
# becomes "42") before predict could refuse it; predict checks that each is a text.
SIGNATURE = ModelSignature(inputs=Schema([ColSpec(AnyType())]),
                           outputs=Schema([ColSpec("string", "label"), ColSpec("float", "score")]))


def request_texts(model_input: pd.DataFrame) -> list[str]:
    """The texts of a request; an error that names what is wrong with it (MLflow answers 400 with it)."""
    columns = list(model_input.columns)
    if len(columns) != 1 or columns[0] not in TEXT_COLUMNS:
        raise invalid_input(f"Expected one column of texts, sent as {{\"inputs\": [\"a text\", ...]}} or as a "
                            f"dataframe whose column is {TEXT!r}; got the columns {columns}.")
    problems = [f"row {number} is {problem}" for number, value in enumerate(model_input.iloc[:, 0], start=1)
                if (problem := text_problem(value))]
    if problems:
        more = f" (and {len(problems) - SHOWN_PROBLEMS} more)" if len(problems) > SHOWN_PROBLEMS else ""
        raise invalid_input(f"Every input must be a non-empty text: {'; '.join(problems[:SHOWN_PROBLEMS])}{more}.")
    return model_input.iloc[:, 0].tolist()


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
        texts = request_texts(model_input)
        probs = predict_proba(self.model, self.tokenizer, texts, self.max_length, batch_size=64)
        names = self.model.config.id2label
        best = probs.argmax(axis=1)
        return pd.DataFrame({"label": [names[int(i)] for i in best], "score": probs.max(axis=1)})


def serving(config: Config) -> Serving:
    return Serving(EXAMPLE_TEXTS, {"max_length": config.model.max_length}, SIGNATURE)
