"""Fine-tuning methods: one mapping from train.method to a builder (as peft maps a method's name to its classes).

A builder loads the base model the way its method needs and returns it ready to train, with what the
training loop needs to know about it. A method is configuration of the one loop in pipeline/training/loop.py.
One module per family: layers.py (full, freeze), adapters.py (peft methods).
"""
from __future__ import annotations

from typing import Callable

from pipeline.config import TrainConfig
from pipeline.training.methods import adapters, layers
from pipeline.training.methods.method import BaseModel, MethodSetup, ModelBuilder
from pipeline.training.models import require_4bit_support

METHOD_BUILDERS: dict[str, ModelBuilder] = {
    "full": layers.build_full,
    "freeze": layers.build_freeze,
    "lora": adapters.build_lora,
    "dora": adapters.build_dora,
    "ia3": adapters.build_ia3,
    "prompt_tuning": adapters.build_prompt_tuning,
    "prefix_tuning": adapters.build_prefix_tuning,
    "qlora": adapters.build_qlora,
}

# Methods that need hardware or packages a machine may lack: checked before any work starts.
METHOD_REQUIREMENTS: dict[str, Callable[[], None]] = {"qlora": require_4bit_support}


def check_supported(train: TrainConfig) -> None:
    """Raise ModelError, saying what to do instead, if this machine cannot train with train.method."""
    requirement = METHOD_REQUIREMENTS.get(train.method)
    if requirement is not None:
        requirement()


__all__ = ["METHOD_BUILDERS", "BaseModel", "MethodSetup", "ModelBuilder", "check_supported"]
