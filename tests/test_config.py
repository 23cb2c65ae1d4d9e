from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.errors import ConfigError
from tests.conftest import REPO


def test_loads_repo_params_into_frozen_dataclasses():
    config = load_config(REPO)
    assert config.train.method == "lora"
    assert config.data.labels == {0: "negative", 1: "positive"}
    assert config.train.lora.target_modules == ["query", "key", "value", "dense"]
    with pytest.raises(AttributeError):
        config.train.method = "full"


def test_overrides_are_parsed_as_yaml_values():
    config = load_config(REPO, ["train.method=full", "train.epochs=2", "train.learning_rate.full=2e-5",
                                "train.lora.target_modules=[query, value]"])
    assert (config.train.method, config.train.epochs, config.train.method_learning_rate) == ("full", 2.0, 2e-5)
    assert config.train.lora.target_modules == ["query", "value"]


def test_params_hash_changes_with_any_value_and_only_then():
    base = load_config(REPO)
    assert base.params_hash() == load_config(REPO).params_hash()
    assert base.params_hash() != load_config(REPO, ["train.seed=7"]).params_hash()


@pytest.mark.parametrize("override, message", [
    ("train.epochs=two", "train.epochs must be float, got 'two'"),
    ("train.method=bogus", "train.method must be one of full, freeze, lora, dora, ia3, prompt_tuning, prefix_tuning, qlora"),
    ("train.epoch=2", "unknown key 'epoch'; known keys here:"),
    ("nosuch.key=1", "'nosuch' is not a section"),
    ("train.epochs", "not of the form section.key=value"),
    ("split.seed=3", "edit it in params.yaml so that dvc.lock records it"),
    ("train.batch_size=0", "train.batch_size must be positive"),
    ("gates.max_forgetting=-0.1", "gates.max_forgetting must be 0 or more, or null to skip the gate"),
    ("gates.max_bias_gap=2", "gates.max_bias_gap must be in [0, 1], or null to skip the gate"),
    ("evaluate.metric_options={ece2: {n_bins: 3}}", "evaluate.metric_options.ece2: 'ece2' is not in evaluate.metrics"),
    ("evaluate.counterfactual.attributes.gender.groups=[female]",
     "evaluate.counterfactual.attributes.gender.groups must name exactly two groups"),
    ("evaluate.earlier_tasks=[{name: stsb, path: a.tsv, text_column: t, label_column: l}]",
     "evaluate.general and evaluate.earlier_tasks need distinct names"),
    ("audit.checks.duplicates.severity=fatal", "audit.checks.duplicates.severity must be one of error, warning"),
    ("audit.checks.duplicates.max_share=1.5", "audit.checks.duplicates.max_share must be in [0, 1], got 1.5"),
    ("audit.checks.text_chars.min=5000", "audit.checks.text_chars needs 0 <= min <= max, got min 5000 and max 2000"),
    ("audit.bias.positive_label=5", "audit.bias.positive_label must be one of data.labels (0, 1), got 5"),
    ("audit.checks.leakage={severity: warning}", "Missing key 'audit.checks.leakage.max_share'"),
    ("train.learning_rate={full: 1.0e-4}", "train.learning_rate has no rate for train.method=lora"),
    ("train.save_steps=300", "train.save_steps must be a positive multiple of train.eval_steps (250), got 300"),
    ("train.layers.lr_decay=1.5", "train.layers.lr_decay must be in (0, 1] (1: off), got 1.5"),
    ("train.layers.unfreeze_unit=batches", "train.layers.unfreeze_unit must be one of steps, epochs"),
    ("train.ia3.feedforward_modules=[query]", "train.ia3.feedforward_modules must be a subset of train.ia3.target_modules"),
    ("train.prompt_tuning.num_virtual_tokens=0", "train.prompt_tuning.num_virtual_tokens must be positive"),
    ("train.qlora.quant_type=int3", "train.qlora.quant_type must be one of nf4, fp4"),
])
def test_bad_overrides_name_the_key_and_the_fix(override, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(REPO, [override])
    assert message in str(info.value)


def test_bad_params_file_names_the_missing_key(tmp_path: Path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    del params["gates"]["min_accuracy"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="Missing key 'gates.min_accuracy'"):
        load_config(tmp_path)


def test_missing_params_file_says_where_it_looked(tmp_path: Path):
    with pytest.raises(ConfigError, match=f"No params.yaml in {tmp_path}"):
        load_config(tmp_path)
