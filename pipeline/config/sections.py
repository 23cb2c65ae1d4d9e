"""The sections of params.yaml (data, split, audit, model, train, evaluate, gates, ...) as frozen pydantic models.

Types, ranges and allowed values are declared on the fields, and what a field cannot say alone (a rate for the
chosen method, save_steps a multiple of eval_steps) is checked by a validator of the section that holds both.
The root model that holds them all, and the reading of params.yaml, are in pipeline.config.loading.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

# train.method -> a builder in pipeline/training/methods/ (METHOD_BUILDERS); this is what params.yaml may name.
Method = Literal["full", "freeze", "lora", "dora", "ia3", "prompt_tuning", "prefix_tuning", "qlora"]
METHODS: tuple[str, ...] = Method.__args__
# Methods whose registered model is an adapter on the unchanged base (pipeline/training/methods/adapters.py): prompt
# and prefix tuning add inputs, QLoRA's adapter was trained against 4-bit weights that a merge would re-round.
SAVED_AS_ADAPTER: tuple[str, ...] = ("prompt_tuning", "prefix_tuning", "qlora")
# error: a failed check stops the run; warning: it is reported and the run goes on.
Severity = Literal["error", "warning"]


def _yaml_number(value: Any) -> Any:
    # YAML 1.1 reads `2e-5` (no dot) as a string; users mean the number.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Number = Annotated[float, BeforeValidator(_yaml_number)]
Positive = Annotated[Number, Field(gt=0)]
NonNegative = Annotated[Number, Field(ge=0)]
Share = Annotated[Number, Field(ge=0, le=1)]            # a fraction of rows, or a probability
OpenShare = Annotated[Number, Field(gt=0, lt=1)]
PositiveInt = Annotated[int, Field(gt=0)]
Count = Annotated[int, Field(ge=0)]
Names = Annotated[list[str], Field(min_length=1)]


class Section(BaseModel):
    # strict: `epochs: two` or `batch_size: 1.5` is an error, not a guess; numbers in strings are read above
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


# table: rows of a text and a label (CSV, TSV, Parquet, JSON Lines); instructions: JSON Lines of chat
# conversations ({"messages": [...]}, the last an assistant's turn) or {"prompt": ..., "response": ...}
DataFormat = Literal["table", "instructions"]


class DataConfig(Section):
    format: DataFormat
    train: str
    validation: str | None
    test: str | None
    text_column: str      # table only, as are label_column and labels
    label_column: str
    labels: Annotated[dict[int, str], Field(min_length=2)]   # label value in the file -> name

    @property
    def label_values(self) -> list[int]:
        return sorted(self.labels)


class SplitConfig(Section):
    seed: int
    validation_fraction: OpenShare
    test_fraction: OpenShare
    max_train_rows: PositiveInt | None
    out_dir: str


class Check(Section):
    """One audit check's settings: its severity and, in the subclasses, its threshold."""
    severity: Severity


class LengthCheck(Check):
    min: Count
    max: Count

    @model_validator(mode="after")
    def _ordered(self) -> LengthCheck:
        if self.min > self.max:
            raise ValueError(f"needs 0 <= min <= max, got min {self.min} and max {self.max}")
        return self


class MaxShareCheck(Check):
    max_share: Share


class MinShareCheck(Check):
    min_share: Share


class MinRowsCheck(Check):
    min_rows: Count


class MaxGapCheck(Check):
    max_gap: Share


class AuditChecks(Section):
    columns: Check
    text_type: Check
    label_type: Check
    not_null: Check
    text_not_blank: Check
    label_in_set: Check
    text_chars: LengthCheck
    truncated: MaxShareCheck
    duplicates: MaxShareCheck
    conflicting_labels: MaxShareCheck
    class_balance: MinShareCheck
    rows_per_class: MinRowsCheck
    leakage: MaxShareCheck
    pool_leakage: MaxShareCheck     # a continual batch's rows whose text is in the pool's splits already


class BiasConfig(Section):
    lexicon: str | None
    positive_label: int
    min_slice_rows: PositiveInt
    representation: MinShareCheck
    positive_rate_gap: MaxGapCheck


class AuditConfig(Section):
    report_dir: str
    checks: AuditChecks
    bias: BiasConfig


class ModelConfig(Section):
    base: str
    max_length: PositiveInt
    cache_dir: str      # bundled GGUF models, converted once to safetensors directories, by the file's hash


class PairBenchmark(Section):
    """A file of sentence pairs scored by a causal LM, and how much of it a run scores."""
    path: str
    pairs: PositiveInt | None   # a stratified subset of this many pairs (null: all of them)


class CausalLmConfig(Section):
    """task.type causal_lm: instructions (from a labelled table, or data.format instructions), and the LM's own
    evaluation suites."""
    system_prompt: str | None       # the first turn of every conversation that has no system turn of its own
    prompt_template: Annotated[str, Field(pattern=r"\{text\}")]   # table: {text} is replaced by the row's text; the
                                                                    # response is its label's name
    max_new_tokens: PositiveInt     # generated per prompt when evaluating (the label word, or a whole response)
    eval_rows: PositiveInt | None   # test rows evaluated (stratified by label in a table, else random; null: all)
    validation_rows: PositiveInt | None   # validation rows scored during training (as eval_rows; null: all)
    blimp: PairBenchmark | None     # general knowledge: forgetting_blimp = base - candidate accuracy
    crows_pairs: PairBenchmark | None   # bias: crows_pairs_gap = |stereotype share - 0.5|
    defaults: dict[str, Any]        # `section.key: value` set when task.type is causal_lm; -S overrides win


class TaskConfig(Section):
    # -> a TaskType in pipeline/tasks/ (TASK_TYPES)
    type: Literal["classification", "causal_lm"]
    causal_lm: CausalLmConfig


class LayersConfig(Section):
    """full and freeze: which encoder layers train, at which learning rate, from when."""
    freeze_lowest: Count
    lr_decay: Annotated[Number, Field(gt=0, le=1)]   # 1: off
    unfreeze_every: Count                            # 0: off
    unfreeze_unit: Literal["steps", "epochs"]


class LoraConfig(Section):
    """lora, dora and qlora."""
    r: PositiveInt
    alpha: PositiveInt
    dropout: Annotated[Number, Field(ge=0, lt=1)]
    target_modules: Names


class QloraConfig(Section):
    quant_type: Literal["nf4", "fp4"]
    double_quant: bool


class Ia3Config(Section):
    target_modules: Names
    feedforward_modules: list[str]

    @model_validator(mode="after")
    def _feedforward_within_targets(self) -> Ia3Config:
        if not set(self.feedforward_modules) <= set(self.target_modules):
            raise ValueError(f"feedforward_modules must be a subset of target_modules, got {self.feedforward_modules}")
        return self


class VirtualTokensConfig(Section):
    """prompt_tuning and prefix_tuning."""
    num_virtual_tokens: PositiveInt


class DistributedConfig(Section):
    """How training is launched: in this process, or under torchrun on several processes and machines."""
    launcher: Literal["none", "torchrun"]       # none: one process, as a plain run
    nproc_per_node: PositiveInt                 # ranks on this machine: GPUs on a GPU machine, cores on a CPU
    nnodes: PositiveInt                         # machines; each runs `tunegate train-node` but node 0 (the flow)
    node_rank: Count                            # this machine's number, 0 for the one that runs the flow
    master_addr: str                            # node 0's address, where every rank meets
    master_port: Annotated[int, Field(ge=1, le=65535)]
    strategy: Literal["ddp", "fsdp"]            # fsdp: parameters sharded across ranks (the causal LM on GPUs)
    rendezvous_timeout_s: Positive              # how long a node waits for the others before it gives up

    @model_validator(mode="after")
    def _rank_in_range(self) -> DistributedConfig:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank must be below nnodes ({self.nnodes}), got {self.node_rank}")
        return self

    @property
    def world_size(self) -> int:
        return 1 if self.launcher == "none" else self.nproc_per_node * self.nnodes


class TrainConfig(Section):
    method: Method
    init: Literal["base", "champion"]   # a continual step's start: model.base, or the registry's champion
    seed: int
    epochs: Positive
    batch_size: PositiveInt
    eval_batch_size: PositiveInt
    length_window: PositiveInt                  # batches whose texts are sorted by length together (1: random)
    learning_rate: dict[Method, Positive]       # per method: each family trains at its own scale
    weight_decay: NonNegative
    warmup_ratio: Annotated[Number, Field(ge=0, lt=1)]
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"]   # transformers SchedulerType names
    max_grad_norm: Positive
    l2sp: NonNegative                           # L2-SP weight: pull toward the starting weights (0: off)
    wise_ft: Annotated[Number, Field(gt=0, le=1)]   # share of the fine-tuned encoder kept (WiSE-FT; 1: off)
    eval_steps: PositiveInt
    save_steps: PositiveInt
    save_total_limit: PositiveInt
    best_metric: str
    early_stopping_patience: Count              # 0: never stop early
    logging_steps: PositiveInt
    retries: Count
    precision: Literal["auto", "bf16", "fp32"]
    output_dir: str
    gradient_checkpointing: bool                # recompute activations in the backward pass: less memory, ~30% slower
    distributed: DistributedConfig
    layers: LayersConfig
    lora: LoraConfig
    qlora: QloraConfig
    ia3: Ia3Config
    prompt_tuning: VirtualTokensConfig
    prefix_tuning: VirtualTokensConfig

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.method not in self.learning_rate:
            raise ValueError(f"learning_rate has no rate for method={self.method}: add e.g. "
                             f"train.learning_rate.{self.method}: 1.0e-4")
        if self.save_steps % self.eval_steps:
            raise ValueError(f"save_steps must be a multiple of eval_steps ({self.eval_steps}), got {self.save_steps}: "
                             f"every checkpoint needs its validation score for the best one to be kept")
        if self.wise_ft < 1 and self.method in SAVED_AS_ADAPTER:
            raise ValueError(f"wise_ft {self.wise_ft} interpolates the encoder's weights, which method={self.method} "
                             f"leaves as they were (it saves an adapter): set train.wise_ft: 1.0, or use a method "
                             f"among {', '.join(m for m in METHODS if m not in SAVED_AS_ADAPTER)}")
        if self.distributed.world_size > 1 and self.layers.unfreeze_every and self.method in ("full", "freeze"):
            # DDP (and FSDP) fix the set of trained parameters when they wrap the model
            raise ValueError("layers.unfreeze_every must be 0 when training is distributed (train.distributed): "
                             "the parameters that train cannot change during a distributed run")
        return self

    @property
    def method_learning_rate(self) -> float:
        return self.learning_rate[self.method]


class GeneralBenchmark(Section):
    name: str       # metrics: general_<name>_<score>, forgetting_<name>, retained_<name>
    kind: str       # a key of pipeline.evaluation.benchmarks.KINDS: how the file is read and scored
    path: str


class EarlierTask(Section):
    name: str       # metrics: earlier_<name>_<metric>
    path: str
    text_column: str
    label_column: str


class CounterfactualAttribute(Section):
    column: str
    groups: Annotated[list[str], Field(min_length=2, max_length=2)]   # gaps are first minus second


class CounterfactualConfig(Section):
    name: str           # metrics: <name>_<attribute>_gap, ..._p_value, ..._<group>_mean
    path: str
    text_column: str
    pair_by: list[str]
    attributes: Annotated[dict[str, CounterfactualAttribute], Field(min_length=1)]
    alpha: OpenShare


class EvaluateConfig(Section):
    metrics: Names
    metric_options: dict[str, dict[str, Any]] | None
    batch_size: PositiveInt
    report_dir: str
    general: list[GeneralBenchmark]
    base_cache_dir: str
    earlier_tasks: list[EarlierTask]
    counterfactual: CounterfactualConfig | None

    @model_validator(mode="after")
    def _consistent(self) -> EvaluateConfig:
        names = [b.name for b in self.general] + [t.name for t in self.earlier_tasks]
        if len(names) != len(set(names)):
            raise ValueError(f"general and earlier_tasks need distinct names (they name metrics), got {names}")
        stray = [metric for metric in self.metric_options or {} if metric not in self.metrics]
        if stray:
            raise ValueError(f"metric_options.{stray[0]}: {stray[0]!r} is not in metrics {self.metrics}")
        return self


class PromotionLockConfig(Section):
    lease_s: Positive     # a holder that crashed loses the lock after this long
    wait_s: Positive      # how long a promotion waits for the lock before it gives up
    poll_s: Positive      # how often a waiting promotion tries again

    @model_validator(mode="after")
    def _poll_within_wait(self) -> PromotionLockConfig:
        if self.poll_s > self.wait_s:
            raise ValueError(f"poll_s must be at most wait_s ({self.wait_s}), got {self.poll_s}")
        return self


class GatesConfig(Section):
    min_accuracy: Share             # task accuracy floor on the test split (labelled data)
    min_rouge_l: Share              # ROUGE-L floor of the generated responses (data.format instructions)
    champion_tolerance: NonNegative
    max_forgetting: NonNegative | None   # null: not checked
    max_bias_gap: Share | None           # null: not checked
    max_task_forgetting: NonNegative | None   # continual: drop on each earlier task's test split; null: not checked
    lock: PromotionLockConfig            # the promotion lock in the tracking store
    approval: Literal["none", "required"]   # required: a version that passes every gate waits for a reviewer
    approval_timeout: Positive           # seconds a version waits for its reviewer; then challenger
    approval_poll_s: Positive            # how often the waiting flow asks Prefect whether it was resumed


class RegistryConfig(Section):
    tracking_uri: str
    artifact_location: str
    experiment: str
    model_name: str


class PreflightConfig(Section):
    min_free_mb: Count            # free disk space every output folder needs before a run starts
    store_timeout_s: Positive     # how long to wait for the tracking store to answer


class ReproduceConfig(Section):
    tolerance: NonNegative    # largest |original - reproduced| of a metric that still counts as reproduced
    work_dir: str             # scratch checkouts: <work_dir>/<model name>-<version>


class MaxScoreCheck(Check):
    max_score: Number


class DriftConfig(Section):
    reference_rows: PositiveInt         # rows of the champion's training data the batch is compared with
    report_dir: str
    label_balance: MaxScoreCheck        # Jensen-Shannon distance of the label shares
    text_length: MaxScoreCheck          # normed Wasserstein distance of the text lengths (characters)
    vocabulary_overlap: MinShareCheck   # share of the batch's words that occur in the reference
    text_content: MaxScoreCheck         # ROC AUC of a classifier telling batch texts from reference texts


Override = Annotated[str, Field(pattern=r"^[^=]+=")]   # section.key=value


class ContinualConfig(Section):
    incoming: str
    pool_dir: str
    quarantine_dir: str                 # batches the audit or drift checks rejected, each with why
    initial_task: str                   # name of the data section's task among the earlier tasks
    replay_share: Annotated[Number, Field(ge=0, lt=1)]
    drift: DriftConfig
    overrides: list[Override]           # every step's, under -S and a candidate's: its warm start, its training
    candidates: list[list[Override]]    # each a list of overrides; []: one candidate, params as they are
    dask_address: str | None            # an existing Dask scheduler; null: a local cluster
