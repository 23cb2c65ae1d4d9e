"""params.yaml -> frozen dataclasses, with `-S section.key=value` overrides.

Every value is checked against its field's type when loaded, so a bad value fails
before any work starts, with the key that is wrong and what it should be.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.errors import ConfigError

PARAMS_FILE = "params.yaml"
# train.method -> a builder in pipeline/methods/ (METHOD_BUILDERS); this tuple is what params.yaml may name.
METHODS = ("full", "freeze", "lora", "dora", "ia3", "prompt_tuning", "prefix_tuning", "qlora")
PRECISIONS = ("auto", "bf16", "fp32")
# error: a failed check stops the run; warning: it is reported and the run goes on.
Severity = Literal["error", "warning"]
SCHEDULERS = ("linear", "cosine", "constant_with_warmup")   # transformers SchedulerType names
UNFREEZE_UNITS = ("steps", "epochs")
QUANT_TYPES = ("nf4", "fp4")
INITS = ("base", "champion")   # train.init: what training starts from


@dataclass(frozen=True)
class DataConfig:
    train: str
    validation: str | None
    test: str | None
    text_column: str
    label_column: str
    labels: dict[int, str]

    @property
    def label_values(self) -> list[int]:
        return sorted(self.labels)


@dataclass(frozen=True)
class SplitConfig:
    seed: int
    validation_fraction: float
    test_fraction: float
    max_train_rows: int | None
    out_dir: str


@dataclass(frozen=True)
class Check:
    """One audit check's settings: its severity and, in the subclasses, its threshold."""
    severity: Severity


@dataclass(frozen=True)
class LengthCheck(Check):
    min: int
    max: int


@dataclass(frozen=True)
class MaxShareCheck(Check):
    max_share: float


@dataclass(frozen=True)
class MinShareCheck(Check):
    min_share: float


@dataclass(frozen=True)
class MinRowsCheck(Check):
    min_rows: int


@dataclass(frozen=True)
class MaxGapCheck(Check):
    max_gap: float


@dataclass(frozen=True)
class AuditChecks:
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


@dataclass(frozen=True)
class BiasConfig:
    lexicon: str | None
    positive_label: int
    min_slice_rows: int
    representation: MinShareCheck
    positive_rate_gap: MaxGapCheck


@dataclass(frozen=True)
class AuditConfig:
    report_dir: str
    checks: AuditChecks
    bias: BiasConfig


@dataclass(frozen=True)
class ModelConfig:
    base: str
    max_length: int


@dataclass(frozen=True)
class LayersConfig:
    """full and freeze: which encoder layers train, at which learning rate, from when."""
    freeze_lowest: int
    lr_decay: float
    unfreeze_every: int
    unfreeze_unit: str


@dataclass(frozen=True)
class LoraConfig:
    """lora, dora and qlora."""
    r: int
    alpha: int
    dropout: float
    target_modules: list[str]


@dataclass(frozen=True)
class QloraConfig:
    quant_type: str
    double_quant: bool


@dataclass(frozen=True)
class Ia3Config:
    target_modules: list[str]
    feedforward_modules: list[str]


@dataclass(frozen=True)
class VirtualTokensConfig:
    """prompt_tuning and prefix_tuning."""
    num_virtual_tokens: int


@dataclass(frozen=True)
class TrainConfig:
    method: str
    init: str                           # base: model.base; champion: the registry's champion (warm start)
    seed: int
    epochs: float
    batch_size: int
    eval_batch_size: int
    length_window: int                  # batches whose texts are sorted by length together (1: random batches)
    learning_rate: dict[str, float]     # per method: each family trains at its own scale
    weight_decay: float
    warmup_ratio: float
    lr_scheduler: str
    max_grad_norm: float
    eval_steps: int
    save_steps: int
    save_total_limit: int
    best_metric: str
    early_stopping_patience: int
    logging_steps: int
    retries: int
    precision: str
    output_dir: str
    layers: LayersConfig
    lora: LoraConfig
    qlora: QloraConfig
    ia3: Ia3Config
    prompt_tuning: VirtualTokensConfig
    prefix_tuning: VirtualTokensConfig

    @property
    def method_learning_rate(self) -> float:
        return self.learning_rate[self.method]


@dataclass(frozen=True)
class GeneralBenchmark:
    name: str       # metrics: general_<name>_<score>, forgetting_<name>, retained_<name>
    kind: str       # a key of pipeline.general.KINDS: how the file is read and scored
    path: str


@dataclass(frozen=True)
class EarlierTask:
    name: str       # metrics: earlier_<name>_<metric>
    path: str
    text_column: str
    label_column: str


@dataclass(frozen=True)
class CounterfactualAttribute:
    column: str
    groups: list[str]   # exactly two; gaps are first minus second


@dataclass(frozen=True)
class CounterfactualConfig:
    name: str           # metrics: <name>_<attribute>_gap, ..._p_value, ..._<group>_mean
    path: str
    text_column: str
    pair_by: list[str]
    attributes: dict[str, CounterfactualAttribute]
    alpha: float


@dataclass(frozen=True)
class EvaluateConfig:
    metrics: list[str]
    metric_options: dict[str, dict[str, Any]] | None
    batch_size: int
    report_dir: str
    general: list[GeneralBenchmark]
    base_cache_dir: str
    earlier_tasks: list[EarlierTask]
    counterfactual: CounterfactualConfig | None


@dataclass(frozen=True)
class GatesConfig:
    min_accuracy: float
    champion_tolerance: float
    max_forgetting: float | None
    max_bias_gap: float | None


@dataclass(frozen=True)
class RegistryConfig:
    tracking_uri: str
    artifact_location: str
    experiment: str
    model_name: str


@dataclass(frozen=True)
class MaxScoreCheck(Check):
    max_score: float


@dataclass(frozen=True)
class DriftConfig:
    reference_rows: int                 # rows of the champion's training data the batch is compared with
    report_dir: str
    label_balance: MaxScoreCheck        # Jensen-Shannon distance of the label shares
    text_length: MaxScoreCheck          # normed Wasserstein distance of the text lengths (characters)
    vocabulary_overlap: MinShareCheck   # share of the batch's words that occur in the reference
    text_content: MaxScoreCheck         # ROC AUC of a classifier telling batch texts from reference texts


@dataclass(frozen=True)
class ContinualConfig:
    incoming: str
    pool_dir: str
    initial_task: str                   # name of the data section's task among the earlier tasks
    replay_share: float
    max_task_forgetting: float | None
    drift: DriftConfig
    candidates: list[list[str]]
    dask_address: str | None


@dataclass(frozen=True)
class Config:
    data: DataConfig
    split: SplitConfig
    audit: AuditConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    gates: GatesConfig
    registry: RegistryConfig
    continual: ContinualConfig
    # The folder holding params.yaml; relative paths in the config resolve against it.
    project_dir: Path = field(default=Path("."), compare=False)

    def path(self, relative: str) -> Path:
        return (self.project_dir / relative).resolve()

    def as_dict(self) -> dict[str, Any]:
        raw = dataclasses.asdict(self)
        raw.pop("project_dir")
        return raw

    def params_hash(self) -> str:
        """A short, stable hash of every parameter: equal hashes, equal configuration."""
        canonical = json.dumps(self.as_dict(), sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


# Sections that decide the data splits: DVC versions them from params.yaml itself,
# so a one-run override would make the recorded data version a lie.
DVC_VERSIONED_SECTIONS = ("data", "split")


def load_config(project_dir: str | Path = ".", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read `params.yaml` in project_dir and apply `section.key=value` overrides."""
    project_dir = Path(project_dir).resolve()
    params_path = project_dir / PARAMS_FILE
    if not params_path.is_file():
        raise ConfigError(f"No {PARAMS_FILE} in {project_dir}: run tunegate from the project folder or pass --project-dir.")
    try:
        raw = yaml.safe_load(params_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{params_path} is not valid YAML: {exc}") from exc
    for override in overrides:
        apply_override(raw, override)
    config = _build(Config, {**raw, "project_dir": project_dir}, "")
    _validate(config)
    return config


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set one `a.b.c=value` in the raw mapping; the value is parsed as YAML (`2`, `1e-4`, `[a, b]`)."""
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"Override {override!r} is not of the form section.key=value, e.g. train.epochs=2.")
    parts = key.strip().split(".")
    if parts[0] in DVC_VERSIONED_SECTIONS:
        raise ConfigError(
            f"Override {key!r}: the {parts[0]!r} section decides the DVC-versioned splits; "
            f"edit it in {PARAMS_FILE} so that dvc.lock records it."
        )
    node = raw
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"Override {key!r}: {'.'.join(parts[: i + 1])!r} is not a section of {PARAMS_FILE}.")
        node = node[part]
    if parts[-1] not in node:
        known = ", ".join(sorted(node)) or "none"
        raise ConfigError(f"Override {key!r}: unknown key {parts[-1]!r}; known keys here: {known}.")
    try:
        node[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"Override {override!r}: the value is not valid YAML ({exc}).") from exc


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or PARAMS_FILE} must be a mapping, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"Unknown key(s) {', '.join(_join(where, u) for u in unknown)} in {PARAMS_FILE}; "
                          f"known: {', '.join(fields)}.")
    values = {}
    for name, spec in fields.items():
        key = _join(where, name)
        if name not in raw:
            if spec.default is not dataclasses.MISSING:
                continue
            raise ConfigError(f"Missing key {key!r} in {PARAMS_FILE}.")
        values[name] = _coerce(hints[name], raw[name], key)
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}.")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not value:
            raise ConfigError(f"{key} must be a non-empty mapping, got {value!r}.")
        return {_coerce(args[0], k, f"{key} key"): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, args))}, got {value!r}.")
        return value
    if hint is Path:
        return Path(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads `2e-5` (no dot) as a string; users mean the number.
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ConfigError(f"{key} must be {hint.__name__}, got {value!r} ({type(value).__name__}).")
    return value


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _validate(config: Config) -> None:
    checks = [
        *_train_checks(config.train),
        (0 < config.split.validation_fraction < 1, f"split.validation_fraction must be in (0, 1), got {config.split.validation_fraction}."),
        (0 < config.split.test_fraction < 1, f"split.test_fraction must be in (0, 1), got {config.split.test_fraction}."),
        (config.split.max_train_rows is None or config.split.max_train_rows > 0,
         f"split.max_train_rows must be positive or null, got {config.split.max_train_rows}."),
        (len(config.data.labels) >= 2, f"data.labels needs at least two labels, got {config.data.labels}."),
        (0 <= config.gates.min_accuracy <= 1, f"gates.min_accuracy must be in [0, 1], got {config.gates.min_accuracy}."),
        (config.model.max_length > 0, f"model.max_length must be positive, got {config.model.max_length}."),
        *_evaluate_checks(config),
        *_audit_checks(config),
        *_continual_checks(config.continual),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _audit_checks(config: Config) -> list[tuple[bool, str]]:
    checks, bias = config.audit.checks, config.audit.bias
    shares = {
        "audit.checks.truncated.max_share": checks.truncated.max_share,
        "audit.checks.duplicates.max_share": checks.duplicates.max_share,
        "audit.checks.conflicting_labels.max_share": checks.conflicting_labels.max_share,
        "audit.checks.class_balance.min_share": checks.class_balance.min_share,
        "audit.checks.leakage.max_share": checks.leakage.max_share,
        "audit.bias.representation.min_share": bias.representation.min_share,
        "audit.bias.positive_rate_gap.max_gap": bias.positive_rate_gap.max_gap,
    }
    chars = checks.text_chars
    return [
        *((0 <= value <= 1, f"{key} must be in [0, 1], got {value}.") for key, value in shares.items()),
        (0 <= chars.min <= chars.max,
         f"audit.checks.text_chars needs 0 <= min <= max, got min {chars.min} and max {chars.max}."),
        (checks.rows_per_class.min_rows >= 0,
         f"audit.checks.rows_per_class.min_rows must be 0 or more, got {checks.rows_per_class.min_rows}."),
        (bias.min_slice_rows > 0, f"audit.bias.min_slice_rows must be positive, got {bias.min_slice_rows}."),
        (bias.positive_label in config.data.labels,
         f"audit.bias.positive_label must be one of data.labels ({', '.join(map(str, config.data.labels))}), "
         f"got {bias.positive_label}."),
    ]


def _train_checks(train: TrainConfig) -> list[tuple[bool, str]]:
    layers, lora, ia3 = train.layers, train.lora, train.ia3
    unknown_lr = sorted(set(train.learning_rate) - set(METHODS))
    return [
        (train.init in INITS, f"train.init must be one of {', '.join(INITS)}, got {train.init!r}."),
        (train.method in METHODS, f"train.method must be one of {', '.join(METHODS)}, got {train.method!r}."),
        (not unknown_lr, f"train.learning_rate has unknown method(s) {', '.join(unknown_lr)}; methods: {', '.join(METHODS)}."),
        (train.method in train.learning_rate,
         f"train.learning_rate has no rate for train.method={train.method}: add e.g. train.learning_rate.{train.method}: 1.0e-4."),
        (all(lr > 0 for lr in train.learning_rate.values()), f"train.learning_rate values must be positive, got {train.learning_rate}."),
        (train.precision in PRECISIONS, f"train.precision must be one of {', '.join(PRECISIONS)}, got {train.precision!r}."),
        (train.epochs > 0, f"train.epochs must be positive, got {train.epochs}."),
        (train.batch_size > 0, f"train.batch_size must be positive, got {train.batch_size}."),
        (train.eval_batch_size > 0, f"train.eval_batch_size must be positive, got {train.eval_batch_size}."),
        (train.length_window >= 1, f"train.length_window must be at least 1 (1: random batches), got {train.length_window}."),
        (train.weight_decay >= 0, f"train.weight_decay must be >= 0, got {train.weight_decay}."),
        (0 <= train.warmup_ratio < 1, f"train.warmup_ratio must be in [0, 1), got {train.warmup_ratio}."),
        (train.lr_scheduler in SCHEDULERS, f"train.lr_scheduler must be one of {', '.join(SCHEDULERS)}, got {train.lr_scheduler!r}."),
        (train.max_grad_norm > 0, f"train.max_grad_norm must be positive, got {train.max_grad_norm}."),
        (train.eval_steps > 0, f"train.eval_steps must be positive, got {train.eval_steps}."),
        (train.save_steps > 0 and train.save_steps % train.eval_steps == 0,
         f"train.save_steps must be a positive multiple of train.eval_steps ({train.eval_steps}), got {train.save_steps}: "
         f"every checkpoint needs its validation score for the best one to be kept."),
        (train.save_total_limit >= 1, f"train.save_total_limit must be at least 1, got {train.save_total_limit}."),
        (train.early_stopping_patience >= 0, f"train.early_stopping_patience must be >= 0 (0: off), got {train.early_stopping_patience}."),
        (train.logging_steps > 0, f"train.logging_steps must be positive, got {train.logging_steps}."),
        (train.retries >= 0, f"train.retries must be >= 0, got {train.retries}."),
        (layers.freeze_lowest >= 0, f"train.layers.freeze_lowest must be >= 0, got {layers.freeze_lowest}."),
        (0 < layers.lr_decay <= 1, f"train.layers.lr_decay must be in (0, 1] (1: off), got {layers.lr_decay}."),
        (layers.unfreeze_every >= 0, f"train.layers.unfreeze_every must be >= 0 (0: off), got {layers.unfreeze_every}."),
        (layers.unfreeze_unit in UNFREEZE_UNITS,
         f"train.layers.unfreeze_unit must be one of {', '.join(UNFREEZE_UNITS)}, got {layers.unfreeze_unit!r}."),
        (lora.r > 0, f"train.lora.r must be positive, got {lora.r}."),
        (lora.alpha > 0, f"train.lora.alpha must be positive, got {lora.alpha}."),
        (0 <= lora.dropout < 1, f"train.lora.dropout must be in [0, 1), got {lora.dropout}."),
        (bool(lora.target_modules), "train.lora.target_modules must name at least one module, e.g. [query, value]."),
        (train.qlora.quant_type in QUANT_TYPES,
         f"train.qlora.quant_type must be one of {', '.join(QUANT_TYPES)}, got {train.qlora.quant_type!r}."),
        (bool(ia3.target_modules), "train.ia3.target_modules must name at least one module, e.g. [key, value, output.dense]."),
        (set(ia3.feedforward_modules) <= set(ia3.target_modules),
         f"train.ia3.feedforward_modules must be a subset of train.ia3.target_modules, got {ia3.feedforward_modules}."),
        (train.prompt_tuning.num_virtual_tokens > 0,
         f"train.prompt_tuning.num_virtual_tokens must be positive, got {train.prompt_tuning.num_virtual_tokens}."),
        (train.prefix_tuning.num_virtual_tokens > 0,
         f"train.prefix_tuning.num_virtual_tokens must be positive, got {train.prefix_tuning.num_virtual_tokens}."),
    ]
def _evaluate_checks(config: Config) -> list[tuple[bool, str]]:
    evaluate, gates = config.evaluate, config.gates
    names = [b.name for b in evaluate.general] + [t.name for t in evaluate.earlier_tasks]
    checks = [
        (evaluate.batch_size > 0, f"evaluate.batch_size must be positive, got {evaluate.batch_size}."),
        (len(names) == len(set(names)),
         f"evaluate.general and evaluate.earlier_tasks need distinct names (they name metrics), got {names}."),
        *((metric in evaluate.metrics,
           f"evaluate.metric_options.{metric}: {metric!r} is not in evaluate.metrics {evaluate.metrics}.")
          for metric in evaluate.metric_options or {}),
        (gates.max_forgetting is None or gates.max_forgetting >= 0,
         f"gates.max_forgetting must be 0 or more, or null to skip the gate, got {gates.max_forgetting}."),
        (gates.max_bias_gap is None or 0 <= gates.max_bias_gap <= 1,
         f"gates.max_bias_gap must be in [0, 1], or null to skip the gate, got {gates.max_bias_gap}."),
    ]
    counterfactual = evaluate.counterfactual
    if counterfactual is not None:
        checks += [
            (0 < counterfactual.alpha < 1,
             f"evaluate.counterfactual.alpha must be in (0, 1), got {counterfactual.alpha}."),
            *((len(attribute.groups) == 2,
               f"evaluate.counterfactual.attributes.{name}.groups must name exactly two groups, "
               f"got {attribute.groups}.")
              for name, attribute in counterfactual.attributes.items()),
        ]
    return checks


def _continual_checks(continual: ContinualConfig) -> list[tuple[bool, str]]:
    drift = continual.drift
    return [
        (0 <= continual.replay_share < 1, f"continual.replay_share must be in [0, 1), got {continual.replay_share}."),
        (continual.max_task_forgetting is None or continual.max_task_forgetting >= 0,
         f"continual.max_task_forgetting must be 0 or more, or null to skip the gate, "
         f"got {continual.max_task_forgetting}."),
        (drift.reference_rows > 0, f"continual.drift.reference_rows must be positive, got {drift.reference_rows}."),
        (0 <= drift.vocabulary_overlap.min_share <= 1,
         f"continual.drift.vocabulary_overlap.min_share must be in [0, 1], got {drift.vocabulary_overlap.min_share}."),
        *((not candidate or all("=" in override for override in candidate),
           f"continual.candidates[{i}] must be a list of key=value overrides, got {candidate}.")
          for i, candidate in enumerate(continual.candidates)),
    ]
