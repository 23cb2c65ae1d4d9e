"""What the model settings need of this machine, checked before any work: without peft or the methods loaded, so
that the CLI can check them in seconds, before Prefect starts."""
from __future__ import annotations

from typing import Callable

from pipeline.config import Config, TrainConfig
from pipeline.governance.lineage import is_registry_uri
from pipeline.training.models import base_model_dir, require_4bit_support

# Methods that need hardware or packages a machine may lack.
METHOD_REQUIREMENTS: dict[str, Callable[[], None]] = {"qlora": require_4bit_support}


def check_supported(train: TrainConfig) -> None:
    """Raise ModelError, saying what to do instead, if this machine cannot train with train.method."""
    requirement = METHOD_REQUIREMENTS.get(train.method)
    if requirement is not None:
        requirement()


def check_model_settings(config: Config) -> None:
    """train.method runs here (qlora: a CUDA GPU) and model.base is there (a registered parent is looked up later,
    in the registry): ModelError otherwise."""
    check_supported(config.train)
    if not is_registry_uri(config.model.base):
        base_model_dir(config)
