"""Fine-tuning: one mapping from train.method to a model builder, and the transformers Trainer for the loop."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from datasets import Dataset
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, TaskType, get_peft_model
from scipy.special import softmax
from transformers import (DataCollatorWithPadding, PreTrainedModel, PreTrainedTokenizerBase, Trainer,
                          TrainingArguments, set_seed)

from pipeline.config import Config, TrainConfig
from pipeline.evaluation import compute_metrics
from pipeline.modeling import load_classifier, load_tokenizer, resolve_model_path
from pipeline.split import LABEL, TEXT

ModelBuilder = Callable[[PreTrainedModel, TrainConfig], PreTrainedModel]


def build_full(model: PreTrainedModel, train: TrainConfig) -> PreTrainedModel:
    return model


def build_lora(model: PreTrainedModel, train: TrainConfig) -> PreTrainedModel:
    lora = train.lora
    peft_config = PeftLoraConfig(task_type=TaskType.SEQ_CLS, r=lora.r, lora_alpha=lora.alpha,
                                 lora_dropout=lora.dropout, target_modules=lora.target_modules)
    return get_peft_model(model, peft_config)


METHOD_BUILDERS: dict[str, ModelBuilder] = {"full": build_full, "lora": build_lora}


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    method: str
    trainable_params: int
    total_params: int
    train_seconds: float
    train_samples_per_second: float
    precision: str
    validation_metrics: dict[str, float]

    def as_metrics(self) -> dict[str, float]:
        return {"trainable_params": self.trainable_params, "total_params": self.total_params,
                "train_seconds": self.train_seconds, "train_samples_per_second": self.train_samples_per_second,
                **{f"validation_{k}": v for k, v in self.validation_metrics.items()}}


def use_bf16(precision: str) -> bool:
    """bf16 autocast where the hardware runs it fast (CUDA with bf16, or a CPU with AMX/AVX-512-BF16)."""
    if precision != "auto":
        return precision == "bf16"
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX") or _cpu_has_amx()


def _cpu_has_amx() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def tokenize(frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    """Token ids without padding (the collator pads per batch); one fast tokenizer call for the whole frame."""
    encoded = tokenizer(frame[TEXT].tolist(), truncation=True, max_length=max_length)
    return Dataset.from_dict({**encoded, "labels": frame[LABEL].tolist()})


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def train_model(config: Config, train_frame: pd.DataFrame, validation_frame: pd.DataFrame,
                output_dir: Path) -> TrainResult:
    """Fine-tune the base model with train.method; the best checkpoint on validation is saved to output_dir/model."""
    train_cfg = config.train
    set_seed(train_cfg.seed)
    base_dir = resolve_model_path(config.model.base, config.project_dir)
    tokenizer = load_tokenizer(base_dir)
    model = METHOD_BUILDERS[train_cfg.method](load_classifier(base_dir, config.data.labels), train_cfg)
    trainable, total = count_parameters(model)
    bf16 = use_bf16(train_cfg.precision)

    def trainer_metrics(eval_pred) -> dict[str, float]:
        logits, labels = eval_pred
        return compute_metrics(config.evaluate, softmax(logits, axis=-1), labels)

    args = TrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        num_train_epochs=train_cfg.epochs,
        per_device_train_batch_size=train_cfg.batch_size,
        per_device_eval_batch_size=train_cfg.eval_batch_size,
        learning_rate=train_cfg.learning_rate,
        weight_decay=train_cfg.weight_decay,
        warmup_steps=train_cfg.warmup_ratio,
        bf16=bf16,
        train_sampling_strategy="group_by_length",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        logging_steps=50,
        seed=train_cfg.seed,
        data_seed=train_cfg.seed,
        report_to="none",
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = Trainer(
        model=model, args=args,
        train_dataset=tokenize(train_frame, tokenizer, config.model.max_length),
        eval_dataset=tokenize(validation_frame, tokenizer, config.model.max_length),
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=trainer_metrics,
    )
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    # The best checkpoint's scores; runtime figures are not model metrics.
    validation = {k.removeprefix("eval_"): v for k, v in trainer.evaluate().items()
                  if k.startswith("eval_") and not k.endswith(("runtime", "per_second"))}
    model_dir = output_dir / "model"
    save_for_serving(trainer.model, tokenizer, model_dir)
    return TrainResult(model_dir=model_dir, method=train_cfg.method, trainable_params=trainable, total_params=total,
                       train_seconds=seconds, train_samples_per_second=output.metrics["train_samples_per_second"],
                       precision="bf16" if bf16 else "fp32", validation_metrics=validation)


def save_for_serving(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_dir: Path) -> None:
    """A plain transformers directory (safetensors): adapters are merged into the base weights first."""
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
