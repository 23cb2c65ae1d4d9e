"""peft methods: the base model's weights stay fixed; a small adapter (and the new classifier head) trains.

Each builder is one peft config made from params.yaml; peft does the rest. lora, dora and ia3 adapters
fold into the base weights, so they are merged before saving (see MethodSetup.merge_adapter); prompt and
prefix tuning add inputs and cannot be merged, and a QLoRA adapter was trained against 4-bit weights that
a merge would re-round: those (pipeline.config.SAVED_AS_ADAPTER) are saved as adapters, with the base model they
need.
"""
from __future__ import annotations

from peft import IA3Config, LoraConfig, PeftConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model
from peft import prepare_model_for_kbit_training
from transformers import PreTrainedModel

from pipeline.config import SAVED_AS_ADAPTER, TrainConfig
from pipeline.training.methods.method import BaseModel, MethodSetup


def build_lora(base: BaseModel, train: TrainConfig) -> MethodSetup:
    return _adapt(base.load(None), _lora(base, train, use_dora=False), train)


def build_dora(base: BaseModel, train: TrainConfig) -> MethodSetup:
    return _adapt(base.load(None), _lora(base, train, use_dora=True), train)


def build_qlora(base: BaseModel, train: TrainConfig) -> MethodSetup:
    model = prepare_model_for_kbit_training(base.load(train.qlora))
    return _adapt(model, _lora(base, train, use_dora=False), train)


def build_ia3(base: BaseModel, train: TrainConfig) -> MethodSetup:
    config = IA3Config(task_type=base.peft_task_type, target_modules=train.ia3.target_modules,
                       feedforward_modules=train.ia3.feedforward_modules)
    return _adapt(base.load(None), config, train)


def build_prompt_tuning(base: BaseModel, train: TrainConfig) -> MethodSetup:
    config = PromptTuningConfig(task_type=base.peft_task_type, num_virtual_tokens=train.prompt_tuning.num_virtual_tokens)
    return _adapt(base.load(None), config, train)


def build_prefix_tuning(base: BaseModel, train: TrainConfig) -> MethodSetup:
    config = PrefixTuningConfig(task_type=base.peft_task_type, num_virtual_tokens=train.prefix_tuning.num_virtual_tokens)
    return _adapt(base.load(None), config, train)


def _lora(base: BaseModel, train: TrainConfig, use_dora: bool) -> LoraConfig:
    lora = train.lora
    return LoraConfig(task_type=base.peft_task_type, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=lora.target_modules, use_dora=use_dora)


def _adapt(model: PreTrainedModel, config: PeftConfig, train: TrainConfig) -> MethodSetup:
    # SEQ_CLS: peft also trains (and saves) the new classifier head, as modules_to_save.
    return MethodSetup(get_peft_model(model, config), merge_adapter=train.method not in SAVED_AS_ADAPTER)
