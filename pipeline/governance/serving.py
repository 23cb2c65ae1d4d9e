"""What a registered model is served with: the contract between registration and each task type's pyfunc
(pipeline/tasks/<type>/serving.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature

MODEL_ARTIFACT = "model"   # the transformers directory inside the logged pyfunc model's artifacts
# What the logged model needs to load and predict; inferring it fails (it imports torchvision).
SERVING_REQUIREMENTS = ["torch==2.13.0", "transformers==5.23.0", "peft==0.21.2", "pandas", "numpy", "evaluate",
                        "datasets", "scikit-learn", "pyyaml"]
EXAMPLE_TEXTS = ["a gripping, beautifully acted film", "dull and far too long"]


@dataclass(frozen=True)
class Serving:
    example: list[str] | pd.DataFrame
    model_config: dict[str, Any]        # what the pyfunc's load_context reads, from params.yaml
    signature: ModelSignature


def invalid_input(problem: str) -> MlflowException:
    """What a pyfunc raises for a request it cannot score: MLflow's scoring server answers 400 with its message
    (any other exception from predict is a 400 that says only "unexpected error")."""
    return MlflowException.invalid_parameter_value(problem)


def text_problem(value: Any) -> str | None:
    """What is wrong with a value sent as a text, if anything: null, not a string, or empty."""
    if pd.api.types.is_scalar(value) and pd.isna(value):
        return "null, not a text"
    if not isinstance(value, str):
        return f"{type(value).__name__} {value!r}, not a text"
    return "an empty text" if not value.strip() else None
