"""params.yaml -> a Config (every section, validated), with `-S section.key=value` overrides.

A bad value fails before any work starts, with the key that is wrong and what it should be.
`params.schema.json` (from `json_schema()`) lets editors check params.yaml as it is typed.
"""
from __future__ import annotations

import hashlib
import json
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from pipeline.config.sections import (AuditConfig, ContinualConfig, DataConfig, EvaluateConfig, GatesConfig,
                                      ModelConfig, PreflightConfig, RegistryConfig, ReproduceConfig, Section,
                                      SplitConfig, TaskConfig, TrainConfig)
from pipeline.errors import ConfigError
from pipeline.redaction import redact_values

PARAMS_FILE = "params.yaml"


class Config(Section):
    task: TaskConfig
    data: DataConfig
    split: SplitConfig
    audit: AuditConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    gates: GatesConfig
    registry: RegistryConfig
    preflight: PreflightConfig
    reproduce: ReproduceConfig
    continual: ContinualConfig
    # The folder holding params.yaml; relative paths in the config resolve against it. Not a parameter.
    project_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _positive_label_is_a_label(self) -> Config:
        if self.audit.bias.positive_label not in self.data.labels:
            raise ValueError(f"audit.bias.positive_label must be one of data.labels "
                             f"({', '.join(map(str, self.data.labels))}), got {self.audit.bias.positive_label}")
        return self

    def path(self, relative: str) -> Path:
        return (self.project_dir / relative).resolve()

    def as_dict(self) -> dict[str, Any]:
        """Every parameter, credentials in URIs masked: this is what is logged, hashed and shown."""
        return redact_values(self.model_dump())

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
    if not isinstance(raw, dict):
        raise ConfigError(f"{params_path} must be a mapping of sections (data, split, ...), got {raw!r}.")
    for override in overrides:
        apply_override(raw, override)
    apply_task_defaults(raw)
    for override in overrides:   # again: the user's overrides win over the task type's defaults
        apply_override(raw, override)
    try:
        return Config.model_validate({**raw, "project_dir": project_dir})
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc


def load_continual_config(project_dir: str | Path = ".", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A continual step's config: continual.overrides (its warm start and how it trains) under the given ones."""
    step = load_config(project_dir, overrides).continual.overrides
    return load_config(project_dir, [*step, *overrides])


def profile_overrides(path: Path) -> list[str]:
    """A params profile (params-full.yaml): a mapping of `section.key: value`, as -S overrides."""
    try:
        profile = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"Cannot read the params profile {path}: {exc.strerror}.") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"The params profile {path} is not valid YAML: {exc}") from exc
    if not isinstance(profile, dict) or not all(isinstance(key, str) and "." in key for key in profile):
        raise ConfigError(f"The params profile {path} must be a mapping of `section.key: value` lines, "
                          f"e.g. `train.method: full`.")
    return [f"{key}={json.dumps(value)}" for key, value in profile.items()]


def apply_task_defaults(raw: dict[str, Any]) -> None:
    """The chosen task type's `defaults` (its base model, gates, learning rates...) over params.yaml's values."""
    task = raw.get("task")
    if not isinstance(task, dict) or not isinstance(task.get(task.get("type")), dict):
        return   # no type, or one without a section of its own (classification): nothing to apply
    for key, value in (task[task["type"]].get("defaults") or {}).items():
        apply_override(raw, f"{key}={json.dumps(value)}")


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set one `a.b.c=value` in the raw mapping; the value is parsed as YAML (`2`, `1e-4`, `[a, b]`).

    A key of a DVC-versioned section may only be stated with the value params.yaml has: a profile can say which split
    it needs (params-full.yaml: all rows), and a run stops before any work when params.yaml's split differs."""
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"Override {override!r} is not of the form section.key=value, e.g. train.epochs=2.")
    key = key.strip()
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"Override {key!r}: {'.'.join(parts[: i + 1])!r} is not a section of {PARAMS_FILE}.")
        node = node[part]
    if parts[-1] not in node:
        known = ", ".join(sorted(node)) or "none"
        raise ConfigError(f"Override {key!r}: unknown key {parts[-1]!r}; known keys here: {known}.")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"Override {override!r}: the value is not valid YAML ({exc}).") from exc
    if parts[0] in DVC_VERSIONED_SECTIONS and parsed != node[parts[-1]]:
        raise ConfigError(
            f"Override {key}={value} (-S or a -P profile): the {parts[0]!r} section decides the DVC-versioned splits "
            f"and {PARAMS_FILE} has {key}: {json.dumps(node[parts[-1]])}; set {key}: {value} in {PARAMS_FILE} itself, "
            f"so that dvc.lock records the split it makes.")
    node[parts[-1]] = parsed


def _describe(exc: ValidationError) -> str:
    """The first problem (and how many more) as `key: what is wrong, got value`."""
    problems = []
    for error in exc.errors(include_url=False):
        key = _key(error["loc"])
        if error["type"] == "missing":
            problems.append(f"Missing key {key!r} in {PARAMS_FILE}.")
        elif error["type"] == "extra_forbidden":
            problems.append(f"Unknown key {key!r} in {PARAMS_FILE}; known: {', '.join(_known(error['loc']))}.")
        else:
            message = error["msg"].removeprefix("Value error, ")
            got = "" if error["type"] == "value_error" else f", got {error['input']!r}"
            problems.append(f"{key or PARAMS_FILE}: {message}{got}.")
    more = f" ({len(problems) - 1} more problem(s) after fixing it)" if len(problems) > 1 else ""
    return problems[0] + more


def _key(loc: tuple) -> str:
    """`evaluate.general[0].name`: the path of a value in params.yaml."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _known(loc: tuple) -> list[str]:
    """The keys the section holding loc's last key allows."""
    model: Any = Config
    parts = list(loc[:-1])
    while parts:
        field = model.model_fields.get(parts.pop(0))
        if field is None:
            return []
        hint = field.annotation
        sections = [t for t in (hint, *typing.get_args(hint)) if _is_section(t)]
        if not sections:
            return []
        if typing.get_origin(hint) in (list, dict) and parts:
            parts.pop(0)   # the item's index or key
        model = sections[0]
    return [name for name, field in model.model_fields.items() if not field.exclude]


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, BaseModel)


def json_schema() -> dict[str, Any]:
    """The JSON schema of params.yaml, for editors (params.schema.json)."""
    return Config.model_json_schema()
