"""Fine-tuning methods: one mapping from train.method to a builder (as peft maps a method's name to its classes).

A builder loads the base model the way its method needs and returns it ready to train, with what the
training loop needs to know about it. A method is configuration of the one loop in pipeline/training/loop.py.
One module per family: layers.py (full, freeze), adapters.py (peft methods).
"""
from __future__ import annotations

from pipeline.training.methods import adapters, layers
from pipeline.training.methods.method import BaseModel, MethodSetup, ModelBuilder
from pipeline.training.requirements import METHOD_REQUIREMENTS, check_supported

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


__all__ = ["METHOD_BUILDERS", "METHOD_REQUIREMENTS", "BaseModel", "MethodSetup", "ModelBuilder", "check_supported"]
