"""Fine-tuning: setup → train → save, one loop for every method and task type, run by the transformers Trainer.

train.method picks a builder (pipeline/training/methods/), task.type the model class, the examples and their
collator (pipeline/tasks/); everything else is the same for every method: seeded
batches of similar lengths padded per batch, warm-up and decay, clipping, evaluation every eval_steps,
early stopping, checkpoints every save_steps that a re-run resumes from, and the best checkpoint saved.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from peft import PeftModel
from transformers import (EarlyStoppingCallback, PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback,
                          TrainerState, TrainingArguments, set_seed)
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from pipeline.config import Config, TrainConfig
from pipeline import interruption
from pipeline.errors import ConfigError
from pipeline.training.methods import METHOD_BUILDERS, check_supported
from pipeline.training.models import backbone, base_model_dir, load_tokenizer
from pipeline.tasks import base_model, task_type

CHECKPOINTS = "checkpoints"   # a run folder's Trainer checkpoints
TRAINER_STATE = "trainer_state.json"   # the Trainer writes it last: a checkpoint with it is complete


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    method: str
    trainable_params: int
    total_params: int
    train_seconds: float
    train_cpu_seconds: float      # all threads; unlike wall seconds, not inflated by other jobs on the machine
    train_samples_per_second: float
    precision: str
    validation_metrics: dict[str, float]
    best_step: int
    resumed_from: Path | None
    world_size: int = 1           # ranks that trained it (train.distributed)

    def as_metrics(self) -> dict[str, float]:
        return {"trainable_params": self.trainable_params, "total_params": self.total_params,
                "train_seconds": self.train_seconds, "train_cpu_seconds": self.train_cpu_seconds,
                "train_samples_per_second": self.train_samples_per_second,
                "best_step": self.best_step, **{f"validation_{k}": v for k, v in self.validation_metrics.items()}}


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


class ShuffledLengthGroupedSampler(LengthGroupedSampler):
    """Batches of texts of similar length, in random order.

    The texts of each window of `window` batches (a random draw) are sorted by length and cut into batches;
    the batches are then shuffled. The Trainer's own LengthGroupedSampler keeps each window in order,
    longest first: training would sweep from long texts to short ones and end every window and epoch on
    the shortest (on SST-2, single words). The window is a trade: alike batches pad less, but they also
    cost accuracy (benchmarks/train_throughput.py measures both).

    With a seed (a distributed run), each epoch's order is drawn from seed + epoch, as torch's DistributedSampler
    draws it: every rank draws the same order, and Accelerate hands each rank its own batches of it; a run resumed
    in a later epoch draws that epoch's order again. Without one (one process), from torch's global generator.
    """

    def __init__(self, batch_size: int, lengths: list[int], window: int, seed: int | None = None):
        super().__init__(batch_size, lengths=lengths)
        self.window = window
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = None if self.seed is None else torch.Generator().manual_seed(self.seed + self.epoch)
        indices = get_length_grouped_indices(self.lengths, self.batch_size, mega_batch_mult=self.window,
                                             generator=generator)
        batches = [indices[i:i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        # The longest batch stays first, as the Trainer intends (out of memory at once, if at all); a short
        # last batch stays last, so that every batch the DataLoader cuts is one of these.
        first, middle = batches[:1], batches[1:]
        last = [middle.pop()] if middle and len(middle[-1]) < self.batch_size else []
        order = torch.randperm(len(middle), generator=generator).tolist()
        return iter([i for batch in [*first, *(middle[j] for j in order), *last] for i in batch])


class TunegateTrainer(Trainer):
    """The transformers Trainer, drawing its training batches from ShuffledLengthGroupedSampler and, with
    train.l2sp > 0, adding L2-SP (Li, Grandvalet & Davoine 2018) to the training loss: l2sp / 2 times the squared
    distance of the trained parameters from where training started (model.base, or the champion in a warm start).
    Fine-tuning then moves the weights only as far as the task pays for, and forgets less of what they knew
    (benchmarks/frontier.py). An adapter starts from zero (LoRA's B) or its initialisation: the penalty shrinks it."""

    def __init__(self, *args, length_window: int, l2sp: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.length_window = length_window
        self.l2sp = l2sp
        # Every parameter, not only those trained now: progressive unfreezing trains more of them later.
        self.anchors = ({name: param.detach().clone() for name, param in self.model.named_parameters()}
                        if l2sp else {})

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            seed = self.args.data_seed if self.args.world_size > 1 else None
            return ShuffledLengthGroupedSampler(sampler.batch_size, sampler.lengths, self.length_window, seed)
        return sampler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        if not self.anchors or not model.training:   # evaluation scores the task alone
            return result
        loss, outputs = result if return_outputs else (result, None)
        loss = loss + self.l2sp / 2 * self.distance_from_start()
        return (loss, outputs) if return_outputs else loss

    def distance_from_start(self) -> torch.Tensor:
        """Squared L2 distance of the parameters being trained from their values when training started."""
        return sum(((param - self.anchors[name]) ** 2).sum()
                   for name, param in self.model.named_parameters() if param.requires_grad)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def training_arguments(train: TrainConfig, checkpoint_dir: Path, bf16: bool) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=train.epochs,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.eval_batch_size,
        learning_rate=train.method_learning_rate,
        weight_decay=train.weight_decay,
        warmup_steps=train.warmup_ratio,          # a float in [0, 1) is a share of the steps
        lr_scheduler_type=train.lr_scheduler,
        max_grad_norm=train.max_grad_norm,
        bf16=bf16,
        # Without use_cpu, transformers refuses bf16 where no GPU supports it, even on a bf16-capable CPU.
        use_cpu=not torch.cuda.is_available(),
        # Batches of similar lengths, padded to their longest (DataCollatorWithPadding): on short texts
        # most of the compute of padding to max_length is spent on padding.
        train_sampling_strategy="group_by_length",
        eval_strategy="steps",
        eval_steps=train.eval_steps,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=train.best_metric,
        logging_steps=train.logging_steps,
        # a progress bar on a terminal; elsewhere (a scheduled run's log) one line of loss and rate per logging step
        disable_tqdm=not sys.stderr.isatty(),
        seed=train.seed,
        data_seed=train.seed,
        report_to="none",
        dataloader_pin_memory=torch.cuda.is_available(),
        activation_checkpointing=train.gradient_checkpointing,
        # The reentrant checkpoint runs a block's backward twice, and DDP then marks a peft adapter's parameters
        # ready twice and fails (peft#313); the non-reentrant one needs no input gradients either.
        activation_checkpointing_kwargs={"use_reentrant": False},
        # On, the Trainer multiplies each rank's loss by the world size, for models that divide their loss by the
        # tokens of every rank; the classifier (which takes **kwargs, but ignores them) averages over its own
        # batch, and its loss and gradients would come out world-size times too large. One process: no change.
        average_tokens_across_devices=False,
        # Every trained parameter of every method takes part in every forward pass: DDP need not search the graph
        # for unused ones after each step (the Trainer's default does, with a warning).
        ddp_find_unused_parameters=False,
        # Several machines: each machine's first rank keeps the checkpoints on its own disk, so that each node can
        # resume and load the best checkpoint without a shared file system.
        save_on_each_node=train.distributed.nnodes > 1,
        **fsdp_arguments(train.distributed.strategy if train.distributed.world_size > 1 else None),
    )


def fsdp_arguments(strategy: str | None) -> dict:
    """The Trainer's FSDP settings for strategy fsdp: every block (the model's _no_split_modules) sharded
    across ranks; original parameters kept, as peft's mix of frozen and trained ones needs."""
    if strategy != "fsdp":
        return {}
    return {"fsdp": "full_shard auto_wrap", "fsdp_config": {"use_orig_params": True}}


def last_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoint, if any: a run killed while saving leaves an incomplete one behind."""
    complete = [path for path in checkpoint_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if (path / TRAINER_STATE).is_file()]
    return max(complete, key=lambda path: int(path.name.rsplit("-", 1)[1]), default=None)


class StopWhenInterrupted(TrainerCallback):
    """Ctrl-C (pipeline.interruption): training stops at the end of a step, where no checkpoint is being written;
    a run started again resumes from the last one."""

    def on_step_end(self, args, state, control, **kwargs):
        stop_if_interrupted(Path(args.output_dir))


def stop_if_interrupted(checkpoint_dir: Path) -> None:
    """A safe point of training: Interrupted if Ctrl-C was pressed, naming the checkpoint a new run resumes from."""
    if interruption.requested():
        checkpoint = last_checkpoint(checkpoint_dir)
        interruption.stop_if_requested(f"resume from checkpoint {checkpoint.name.rsplit('-', 1)[1]}"
                                       if checkpoint else "train from the start")


def run_dir(config: Config, data_version: str) -> Path:
    """A run's training folder. Deterministic: a retry or a re-run with the same data and params finds its
    checkpoints here."""
    return config.path(config.train.output_dir) / f"{data_version[:12]}-{config.params_hash()}"


def train_model(config: Config, train_frame: pd.DataFrame, validation_frame: pd.DataFrame,
                output_dir: Path, callbacks: Sequence[TrainerCallback] = ()) -> TrainResult:
    """Fine-tune the base model with train.method; the best checkpoint on validation is saved to output_dir/model.

    Checkpoints go to output_dir/checkpoints; called again with the same output_dir (a retry, a re-run),
    training resumes from the last one. output_dir must therefore identify the data and the params.
    In each rank of a distributed run (pipeline.training.distributed) the same, on the rank's share of each
    batch; only rank 0 writes the checkpoints and the model.
    """
    train_cfg = config.train
    check_supported(train_cfg)
    check_best_metric(config)
    set_seed(train_cfg.seed)
    task = task_type(config)
    tokenizer = load_tokenizer(base_model_dir(config))
    setup = METHOD_BUILDERS[train_cfg.method](base_model(config), train_cfg)
    trainable, total = count_parameters(setup.model)
    bf16 = use_bf16(train_cfg.precision)
    args = training_arguments(train_cfg, output_dir / CHECKPOINTS, bf16)
    collator = task.collator(tokenizer)   # first: it may give the tokenizer the pad token it pads with

    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, setup.model)
    early_stopping = [EarlyStoppingCallback(train_cfg.early_stopping_patience)] if train_cfg.early_stopping_patience else []
    trainer = TunegateTrainer(
        model=setup.model, args=args,
        train_dataset=task.dataset(config, train_frame, tokenizer),
        eval_dataset=task.dataset(config, task.validation_rows(config, validation_frame), tokenizer),
        data_collator=collator,
        compute_metrics=task.validation_metrics(config),
        callbacks=[*setup.callbacks, *early_stopping, StopWhenInterrupted(), *callbacks],
        length_window=train_cfg.length_window, l2sp=train_cfg.l2sp,
        # the Trainer's own optimizer class and settings, with the method's parameter groups if it has any
        optimizer_cls_and_kwargs=(optimizer_cls, {**optimizer_kwargs, "params": setup.param_groups})
        if setup.param_groups else None,
    )
    checkpoint = last_checkpoint(Path(args.output_dir))
    first_step = TrainerState.load_from_json(str(checkpoint / TRAINER_STATE)).global_step if checkpoint else 0
    started, cpu_started = time.perf_counter(), time.process_time()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    world_size = trainer.args.world_size
    samples = samples_trained(len(train_frame), train_cfg.batch_size * world_size, first_step, trainer.state.global_step)
    model_dir = output_dir / "model"
    model = full_model(trainer, lambda: METHOD_BUILDERS[train_cfg.method](base_model(config), train_cfg).model)
    if trainer.is_world_process_zero():
        if train_cfg.wise_ft < 1:
            model = interpolate_from_start(merged(model), base_model(config).load(None), train_cfg.wise_ft)
        save_for_serving(model, tokenizer, model_dir, merge_adapter=setup.merge_adapter, base_model=config.model.base)
    return TrainResult(model_dir=model_dir, method=train_cfg.method, trainable_params=trainable, total_params=total,
                       train_seconds=seconds, train_cpu_seconds=cpu_seconds, train_samples_per_second=samples / seconds,
                       precision="bf16" if bf16 else "fp32", validation_metrics=best_validation(trainer.state),
                       best_step=trainer.state.best_global_step, resumed_from=checkpoint, world_size=world_size)


def merged(model: PreTrainedModel) -> PreTrainedModel:
    """A mergeable adapter folded into its base's weights: the whole model, as it is saved."""
    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def interpolate_from_start(model: PreTrainedModel, start: PreTrainedModel, share: float) -> PreTrainedModel:
    """WiSE-FT (Wortsman et al. 2022): the encoder's weights taken back toward where training started (the base, or
    the champion in a warm start), share x fine-tuned + (1 - share) x start; the head stays as trained. Most of the
    task's gain stays and much of what the encoder knew comes back (README, "Accuracy and forgetting"). The best
    checkpoint is chosen on validation before; the test split scores the interpolated model."""
    tuned, started = backbone(model), backbone(start).state_dict()
    tuned.load_state_dict({name: torch.lerp(started[name], weight, share) if weight.is_floating_point() else weight
                           for name, weight in tuned.state_dict().items()})
    return model


def full_model(trainer: Trainer, rebuild) -> PreTrainedModel:
    """The trained model, whole. Under FSDP each rank holds a shard: every rank gathers the full weights (rank 0
    keeps them) into a model built afresh by the method's builder; otherwise the Trainer's own model."""
    if not trainer.is_fsdp_enabled:
        return trainer.model
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if not trainer.is_world_process_zero():
        return trainer.model
    model = rebuild()
    model.load_state_dict(state)
    return model


def check_best_metric(config: Config) -> None:
    """train.best_metric must be a score the validation produces: the loss, or (classification) one of
    evaluate.metrics' outputs."""
    names = task_type(config).validation_metric_names(config)
    if config.train.best_metric not in names:
        raise ConfigError(f"train.best_metric is {config.train.best_metric!r}, which the validation of task.type "
                          f"{config.task.type} does not produce with evaluate.metrics {config.evaluate.metrics}; use one "
                          f"of: {', '.join(names)}.")


def samples_trained(rows: int, batch_size: int, first_step: int, last_step: int) -> int:
    """Training rows seen between two optimizer steps; each epoch's last batch holds the remainder."""
    steps_per_epoch = math.ceil(rows / batch_size)

    def seen(step: int) -> int:
        epochs, steps = divmod(step, steps_per_epoch)
        return epochs * rows + min(steps * batch_size, rows)

    return seen(last_step) - seen(first_step)


def best_validation(state: TrainerState) -> dict[str, float]:
    """The validation scores of the best checkpoint, as logged when it was evaluated (no second pass)."""
    logged = next(entry for entry in state.log_history
                  if entry.get("step") == state.best_global_step and "eval_loss" in entry)
    return {key.removeprefix("eval_"): value for key, value in logged.items()
            if key.startswith("eval_") and not key.endswith(("runtime", "per_second"))}


def save_for_serving(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_dir: Path,
                     merge_adapter: bool, base_model: str) -> None:
    """safetensors, loadable by modeling.load_classifier (load_causal_lm) either way: a whole model, or an adapter and its base.

    Mergeable adapters are folded into the base weights first. Other adapters record the base model as
    params.yaml named it (never a machine's path) and the classifier's config.json, for its labels.
    """
    if isinstance(model, PeftModel) and not merge_adapter:
        base = model.get_base_model()
        # by its params.yaml name everywhere: the adapter config, and peft's model card (README.md)
        model.active_peft_config.base_model_name_or_path = base_model
        base.name_or_path = base.config.name_or_path = base_model
        base.config.save_pretrained(model_dir)
        # the embeddings are the base model's (no method here trains them): not saved with the adapter
        model.save_pretrained(model_dir, save_embedding_layers=False)
    else:
        merged(model).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
