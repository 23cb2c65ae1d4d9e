"""What a method's builder hands to the training loop."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from transformers import PreTrainedModel, TrainerCallback

from pipeline.config import QloraConfig, TrainConfig


@dataclass(frozen=True)
class MethodSetup:
    model: PreTrainedModel
    # Optimizer parameter groups with their own learning rates (layer-wise decay); None: the Trainer's own.
    param_groups: list[dict[str, Any]] | None = None
    callbacks: list[TrainerCallback] = field(default_factory=list)
    # Adapters that fold into the base weights are merged before saving: the registered model is then a
    # plain transformers model, served without peft or the base model, as fast as the base model.
    merge_adapter: bool = False


@dataclass(frozen=True)
class BaseModel:
    """The base model as the task type loads it (pipeline/tasks/): a classifier, a causal LM."""
    load: Callable[[QloraConfig | None], PreTrainedModel]   # with a QloraConfig: quantised to 4 bits
    peft_task_type: str                                       # peft's TaskType for it: SEQ_CLS, CAUSAL_LM


# (base model, train config) -> the model to train and its extras
ModelBuilder = Callable[[BaseModel, TrainConfig], MethodSetup]
