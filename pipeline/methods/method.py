"""What a method's builder hands to the training loop."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from transformers import PreTrainedModel, TrainerCallback

from pipeline.config import TrainConfig


@dataclass(frozen=True)
class MethodSetup:
    model: PreTrainedModel
    # Optimizer parameter groups with their own learning rates (layer-wise decay); None: the Trainer's own.
    param_groups: list[dict[str, Any]] | None = None
    callbacks: list[TrainerCallback] = field(default_factory=list)
    # Adapters that fold into the base weights are merged before saving: the registered model is then a
    # plain transformers model, served without peft or the base model, as fast as the base model.
    merge_adapter: bool = False


# (base model directory, label value -> name, train config) -> the model to train and its extras
ModelBuilder = Callable[[Path, dict[int, str], TrainConfig], MethodSetup]
