"""full and freeze: the model's own weights train, block by block.

The model is seen as blocks from the top: the head (classifier, pooler: everything outside the encoder
layers and the embeddings), the encoder layers from the top one down, then the embeddings. `freeze` keeps
the embeddings and the lowest train.layers.freeze_lowest layers fixed; `full` trains every block. Either
can decay the learning rate block by block downwards (discriminative fine-tuning, ULMFiT) and unfreeze the
blocks gradually, the head first (ULMFiT's gradual unfreezing).
"""
from __future__ import annotations

import math

from torch import nn
from transformers import PreTrainedModel, TrainerCallback

from pipeline.config import LayersConfig, TrainConfig
from pipeline.errors import ModelError
from pipeline.training.methods.method import BaseModel, MethodSetup

Block = list[tuple[str, nn.Parameter]]


def build_full(base: BaseModel, train: TrainConfig) -> MethodSetup:
    return _layerwise(base.load(None), train, frozen_layers=None)


def build_freeze(base: BaseModel, train: TrainConfig) -> MethodSetup:
    return _layerwise(base.load(None), train, frozen_layers=train.layers.freeze_lowest)


def blocks_top_down(model: PreTrainedModel) -> list[Block]:
    """[head, top encoder layer, ..., lowest encoder layer, embeddings], each a list of named parameters."""
    count = model.config.num_hidden_layers
    prefix = next((name for name, module in model.named_modules()
                   if isinstance(module, nn.ModuleList) and len(module) == count), None)
    if prefix is None:
        raise ModelError(f"train.method full/freeze with layer-wise settings needs the encoder layers as one list of "
                         f"{count} blocks; {type(model).__name__} has none. Use train.method=lora, or "
                         f"train.layers.lr_decay=1.0 and unfreeze_every=0 with full.")
    head: Block = []
    layers: list[Block] = [[] for _ in range(count)]
    embeddings: Block = []
    for name, param in model.named_parameters():
        if name.startswith(f"{prefix}."):
            layers[int(name.removeprefix(f"{prefix}.").split(".")[0])].append((name, param))
        elif "embed" in name:   # BERT's embeddings.*, Llama's embed_tokens
            embeddings.append((name, param))
        else:
            head.append((name, param))
    return [head, *reversed(layers), embeddings]


def _layerwise(model: PreTrainedModel, train: TrainConfig, frozen_layers: int | None) -> MethodSetup:
    settings = train.layers
    if frozen_layers is None and settings.lr_decay == 1.0 and settings.unfreeze_every == 0:
        return MethodSetup(model)  # plain full fine-tuning: the Trainer's own optimizer groups
    blocks = blocks_top_down(model)
    if frozen_layers is not None:
        layer_count = len(blocks) - 2
        if frozen_layers > layer_count:
            raise ModelError(f"train.layers.freeze_lowest is {frozen_layers} but the model has {layer_count} encoder "
                             f"layers: set it to at most {layer_count}.")
        # the lowest `frozen_layers` layers and the embeddings: the last blocks from the top
        frozen, blocks = blocks[len(blocks) - 1 - frozen_layers:], blocks[:len(blocks) - 1 - frozen_layers]
        for block in frozen:
            for _, param in block:
                param.requires_grad_(False)
    callbacks = [ProgressiveUnfreezing(blocks, settings)] if settings.unfreeze_every else []
    return MethodSetup(model, param_groups=_param_groups(blocks, train), callbacks=callbacks)


def _param_groups(blocks: list[Block], train: TrainConfig) -> list[dict]:
    """Block d from the top trains at learning_rate * lr_decay**d; 1-D weights (biases, norms) without decay.

    Every block that will ever train is in the optimizer from the start, so that blocks unfrozen later
    are optimised too (AdamW skips parameters without a gradient while they are frozen).
    """
    groups = []
    for depth, block in enumerate(blocks):
        lr = train.method_learning_rate * train.layers.lr_decay ** depth
        for decay in (True, False):
            params = [p for _, p in block if (p.ndim > 1) == decay]
            if params:
                groups.append({"params": params, "lr": lr, "weight_decay": train.weight_decay if decay else 0.0})
    return groups


class ProgressiveUnfreezing(TrainerCallback):
    """The head trains first; one more block below it every `unfreeze_every` steps or epochs.

    Which blocks train is a function of the step (or epoch) alone, so a run resumed from a checkpoint
    unfreezes exactly as an uninterrupted one.
    """

    def __init__(self, blocks: list[Block], settings: LayersConfig):
        self.blocks = blocks
        self.settings = settings

    def on_train_begin(self, args, state, control, **kwargs):
        self._apply(state)

    def on_step_begin(self, args, state, control, **kwargs):
        self._apply(state)

    def _apply(self, state) -> None:
        done = state.global_step if self.settings.unfreeze_unit == "steps" else math.floor((state.epoch or 0) + 1e-6)
        open_blocks = 1 + done // self.settings.unfreeze_every
        for depth, block in enumerate(self.blocks):
            for _, param in block:
                param.requires_grad_(depth < open_blocks)
