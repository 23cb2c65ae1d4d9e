"""params.yaml -> a typed, frozen configuration (pydantic), with `-S section.key=value` overrides.

The schema is the section models in `sections` (types, ranges, allowed values, cross-field validators);
`loading` holds the root `Config`, reads params.yaml, applies overrides and turns a validation error into
`key: what is wrong`. Everything is re-exported here, so callers import from `pipeline.config` alone.
"""
from pipeline.config.loading import (DVC_VERSIONED_SECTIONS, PARAMS_FILE, Config, apply_override,
                                     apply_task_defaults, json_schema, load_config,
                                     load_continual_config, profile_overrides)
from pipeline.config.sections import (METHODS, SAVED_AS_ADAPTER, AuditChecks, AuditConfig, BiasConfig, CausalLmConfig,
                                      Check, ContinualConfig, Count, CounterfactualAttribute, CounterfactualConfig,
                                      DataConfig, DataFormat, DistributedConfig, DriftConfig, EarlierTask,
                                      EvaluateConfig, GatesConfig, GeneralBenchmark, Ia3Config, LayersConfig,
                                      LengthCheck, LoraConfig, MaxGapCheck, MaxScoreCheck, MaxShareCheck, Method,
                                      MinRowsCheck, MinShareCheck, ModelConfig, Names, NonNegative, Number, OpenShare,
                                      Override, PairBenchmark, Positive, PositiveInt, PreflightConfig,
                                      PromotionLockConfig, QloraConfig, RegistryConfig, ReproduceConfig, Section,
                                      Severity, Share, SplitConfig, TaskConfig, TrainConfig, VirtualTokensConfig)

__all__ = [
    # loading
    "DVC_VERSIONED_SECTIONS", "PARAMS_FILE", "Config", "apply_override", "apply_task_defaults", "json_schema",
    "load_config", "load_continual_config", "profile_overrides",
    # sections: value types
    "METHODS", "SAVED_AS_ADAPTER", "Count", "DataFormat", "Method", "Names", "NonNegative", "Number", "OpenShare",
    "Override", "Positive", "PositiveInt", "Severity", "Share",
    # sections: models
    "AuditChecks", "AuditConfig", "BiasConfig", "CausalLmConfig", "Check", "ContinualConfig",
    "CounterfactualAttribute", "CounterfactualConfig", "DataConfig", "DistributedConfig", "DriftConfig", "EarlierTask", "EvaluateConfig",
    "GatesConfig", "GeneralBenchmark", "Ia3Config", "LayersConfig", "LengthCheck", "LoraConfig", "MaxGapCheck",
    "MaxScoreCheck", "MaxShareCheck", "MinRowsCheck", "MinShareCheck", "ModelConfig", "PairBenchmark",
    "PreflightConfig", "PromotionLockConfig", "QloraConfig", "RegistryConfig", "ReproduceConfig", "Section",
    "SplitConfig", "TaskConfig", "TrainConfig", "VirtualTokensConfig",
]
