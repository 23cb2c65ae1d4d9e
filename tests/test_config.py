import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pipeline.config import json_schema, load_config, load_continual_config, profile_overrides
from pipeline.errors import ConfigError
from tests.conftest import DROP, REPO, make_project


def test_loads_repo_params_into_a_frozen_config():
    config = load_config(REPO)
    assert config.train.method == "lora"
    assert config.data.labels == {0: "negative", 1: "positive"}
    assert config.train.lora.target_modules == ["query", "key", "value", "dense"]
    with pytest.raises(ValidationError, match="frozen"):
        config.train.method = "full"


def test_overrides_are_parsed_as_yaml_values():
    config = load_config(REPO, ["train.method=full", "train.epochs=2", "train.learning_rate.full=2e-5",
                                "train.lora.target_modules=[query, value]"])
    assert (config.train.method, config.train.epochs, config.train.method_learning_rate) == ("full", 2.0, 2e-5)
    assert config.train.lora.target_modules == ["query", "value"]


def test_a_continual_step_trains_with_continual_overrides_under_the_users_own(tmp_path: Path):
    project = make_project(tmp_path / "project", parts=(),
                           continual={"overrides": ["train.l2sp=0.5", "train.learning_rate.lora=5e-4"]})
    assert load_config(project).train.l2sp == load_config(REPO).train.l2sp != 0.5, "a retrain does not read them"
    step = load_continual_config(project)
    assert (step.train.l2sp, step.train.method_learning_rate, step.train.init) == (0.5, 5e-4, "champion")
    assert load_continual_config(project, ["train.l2sp=0.1"]).train.l2sp == 0.1
    with pytest.raises(ConfigError, match="train.l2sp"):
        load_continual_config(project, ["continual.overrides=[train.l2sp=-1]"])


def test_params_hash_changes_with_any_value_and_only_then():
    base = load_config(REPO)
    assert base.params_hash() == load_config(REPO).params_hash()
    assert base.params_hash() != load_config(REPO, ["train.seed=7"]).params_hash()


@pytest.mark.parametrize("override, message", [
    ("train.epochs=two", "train.epochs: Input should be a valid number, got 'two'"),
    ("train.method=bogus", "train.method: Input should be 'full', 'freeze', 'lora', 'dora', 'ia3', 'prompt_tuning', "
                           "'prefix_tuning' or 'qlora', got 'bogus'"),
    ("train.epoch=2", "unknown key 'epoch'; known keys here:"),
    ("nosuch.key=1", "'nosuch' is not a section"),
    ("train.epochs", "not of the form section.key=value"),
    ("split.seed=3", "params.yaml has split.seed: 42; set split.seed: 3 in params.yaml itself, so that dvc.lock"),
    ("train.batch_size=0", "train.batch_size: Input should be greater than 0, got 0"),
    ("gates.max_forgetting=-0.1", "gates.max_forgetting: Input should be greater than or equal to 0, got -0.1"),
    ("gates.max_bias_gap=2", "gates.max_bias_gap: Input should be less than or equal to 1, got 2"),
    ("evaluate.metric_options={ece2: {n_bins: 3}}", "evaluate: metric_options.ece2: 'ece2' is not in metrics"),
    ("evaluate.counterfactual.attributes.gender.groups=[female]",
     "evaluate.counterfactual.attributes.gender.groups: List should have at least 2 items"),
    ("evaluate.earlier_tasks=[{name: stsb, path: a.tsv, text_column: t, label_column: l}]",
     "evaluate: general and earlier_tasks need distinct names"),
    ("audit.checks.duplicates.severity=fatal", "audit.checks.duplicates.severity: Input should be 'error' or 'warning', got 'fatal'"),
    ("audit.checks.duplicates.max_share=1.5", "audit.checks.duplicates.max_share: Input should be less than or equal to 1, got 1.5"),
    ("audit.checks.text_chars.min=5000", "audit.checks.text_chars: needs 0 <= min <= max, got min 5000 and max 2000"),
    ("audit.bias.positive_label=5", "audit.bias.positive_label must be one of data.labels (0, 1), got 5"),
    ("audit.checks.leakage={severity: warning}", "Missing key 'audit.checks.leakage.max_share' in params.yaml"),
    ("train.learning_rate={full: 1.0e-4}", "train: learning_rate has no rate for method=lora"),
    ("train.save_steps=300", "train: save_steps must be a multiple of eval_steps (250), got 300"),
    ("train.layers.lr_decay=1.5", "train.layers.lr_decay: Input should be less than or equal to 1, got 1.5"),
    ("train.layers.unfreeze_unit=batches", "train.layers.unfreeze_unit: Input should be 'steps' or 'epochs', got 'batches'"),
    ("train.ia3.feedforward_modules=[query]", "train.ia3: feedforward_modules must be a subset of target_modules"),
    ("train.prompt_tuning.num_virtual_tokens=0", "train.prompt_tuning.num_virtual_tokens: Input should be greater than 0, got 0"),
    ("train.qlora.quant_type=int3", "train.qlora.quant_type: Input should be 'nf4' or 'fp4', got 'int3'"),
])
def test_bad_overrides_name_the_key_and_the_fix(override, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(REPO, [override])
    assert message in str(info.value)


def test_bad_params_file_names_the_missing_key(tmp_path: Path):
    make_project(tmp_path, parts=(), gates={"min_accuracy": DROP})
    with pytest.raises(ConfigError, match="Missing key 'gates.min_accuracy'"):
        load_config(tmp_path)


def test_missing_params_file_says_where_it_looked(tmp_path: Path):
    with pytest.raises(ConfigError, match=f"No params.yaml in {tmp_path}"):
        load_config(tmp_path)


def test_the_full_quality_profile_sets_its_values_and_minus_s_wins_over_it(tmp_path: Path):
    # the profile needs all of SST-2's rows: params.yaml's split, which DVC versions, must say so
    project = make_project(tmp_path, parts=(), split={"max_train_rows": None})
    profile = yaml.safe_load((REPO / "params-full.yaml").read_text(encoding="utf-8"))
    config = load_config(project, profile_overrides(REPO / "params-full.yaml")).as_dict()
    for key, value in profile.items():
        section, *path = key.split(".")
        node = config[section]
        for part in path:
            node = node[part]
        assert node == value, key
    assert load_config(project, [*profile_overrides(REPO / "params-full.yaml"), "train.epochs=1"]).train.epochs == 1


def test_a_profile_that_needs_another_split_stops_and_says_to_edit_params_yaml():
    rows = load_config(REPO).split.max_train_rows
    with pytest.raises(ConfigError, match=rf"Override split.max_train_rows=null \(-S or a -P profile\): .* "
                                          rf"params.yaml has split.max_train_rows: {rows}; "
                                          rf"set split.max_train_rows: null in params.yaml itself"):
        load_config(REPO, profile_overrides(REPO / "params-full.yaml"))


def test_a_split_key_may_be_stated_with_the_value_params_yaml_has():
    assert load_config(REPO, [f"split.seed={load_config(REPO).split.seed}"]) == load_config(REPO)


@pytest.mark.parametrize(("profile", "message"), [
    ("nope.yaml", "Cannot read the params profile nope.yaml: No such file or directory."),
    ("bad.yaml", "must be a mapping of `section.key: value` lines"),
    (str(REPO / "params-full.yaml"),
     "params.yaml has split.max_train_rows: 20000; set split.max_train_rows: null in params.yaml itself"),
])
def test_cli_rejects_a_bad_profile_before_loading_prefect_or_torch(tmp_path: Path, profile: str, message: str):
    (tmp_path / "bad.yaml").write_text("train:\n  epochs: 2\n", encoding="utf-8")
    script = ("import sys; from flows.cli import main; code = main(['--project-dir', sys.argv[1], 'retrain', "
              "'-P', sys.argv[2]]); print(code, sorted(m for m in ('torch', 'prefect', 'mlflow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script, str(REPO), profile], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.stdout.split() == ["1", "[]"]
    assert message in done.stderr


def test_cli_rejects_a_bad_override_before_loading_prefect_or_torch():
    # The user waits for neither: the config is read before the flow (and its libraries) is imported.
    script = ("import sys; from flows.cli import main; code = main(['--project-dir', sys.argv[1], 'retrain', "
              "'-S', 'train.learning_rate.lora=-1']); "
              "print(code, sorted(m for m in ('torch', 'prefect', 'mlflow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script, str(REPO)], capture_output=True, text=True, cwd=REPO)
    assert done.stdout.split() == ["1", "[]"]
    assert "train.learning_rate.lora: Input should be greater than 0, got -1." in done.stderr


def test_the_committed_json_schema_is_the_configs():
    # editors check params.yaml against this file; regenerate it with `tunegate schema > params.schema.json`
    assert json.loads((REPO / "params.schema.json").read_text()) == json_schema()
