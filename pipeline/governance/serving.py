"""What a registered model is served with: the contract between registration and each task type's pyfunc
(pipeline/tasks/<type>/serving.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
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
    signature: ModelSignature | None    # None: inferred from the example
