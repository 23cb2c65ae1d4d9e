"""Models load from safetensors only, and never run code shipped with a model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from pipeline.config import load_config
from pipeline.errors import ModelError
from pipeline.training.models import load_classifier, resolve_model_path
from pipeline.redaction import redact
from tests.conftest import REPO

TINY_BERT = BertConfig(vocab_size=64, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)


def _tiny_model(model_dir: Path, pickled_weights: str | None = None) -> Path:
    model = BertForSequenceClassification(TINY_BERT)
    model.save_pretrained(model_dir)
    if pickled_weights:   # as older tools saved models: the weights in a pickle
        (model_dir / "model.safetensors").unlink()
        torch.save(model.state_dict(), model_dir / pickled_weights)
    return model_dir


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.pkl"])
def test_a_model_directory_with_only_pickled_weights_is_refused(tmp_path: Path, weights: str):
    model_dir = _tiny_model(tmp_path / "model", pickled_weights=weights)
    for load in (lambda: resolve_model_path(str(model_dir)), lambda: load_classifier(model_dir)):
        with pytest.raises(ModelError, match=rf"holds no safetensors weights \(found {weights}\).*never from pickle"):
            load()


def test_a_safetensors_model_loads(tmp_path: Path):
    model_dir = _tiny_model(tmp_path / "model")
    assert resolve_model_path(str(model_dir)) == model_dir
    assert load_classifier(model_dir).config.hidden_size == 8


def test_code_shipped_with_a_model_is_never_run(tmp_path: Path):
    model_dir = _tiny_model(tmp_path / "model")
    marker = tmp_path / "code-ran"
    (model_dir / "configuration_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
        "from transformers import PretrainedConfig\nclass EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    config = json.loads((model_dir / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "configuration_evil.EvilConfig"})
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="contains custom code"):
        load_classifier(model_dir)
    assert not marker.exists()


SECRET = "pl4nted-s3cret"


def test_credentials_in_uris_and_secret_environment_values_are_masked(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", SECRET + "-token")
    text = (f"postgresql://postgres:{SECRET}@127.0.0.1:5432/test, https://user:{SECRET}@mlflow.example/api, "
            f"bearer {SECRET}-token, http://127.0.0.1:5000/ and sqlite:///mlflow/mlflow.db")
    assert redact(text) == ("postgresql://postgres:***@127.0.0.1:5432/test, https://user:***@mlflow.example/api, "
                            "bearer ***, http://127.0.0.1:5000/ and sqlite:///mlflow/mlflow.db")


def test_params_never_hold_a_tracking_uri_password():
    config = load_config(REPO, [f"registry.tracking_uri=postgresql://postgres:{SECRET}@127.0.0.1:5432/test"])
    assert SECRET in config.registry.tracking_uri            # the store is still reached with it
    assert SECRET not in json.dumps(config.as_dict())        # what is logged and hashed never shows it


def test_log_records_are_masked_as_they_are_made_in_any_process_that_runs_a_flow():
    """A scheduled run executes in a process of Prefect's, with handlers set up there: importing flows (as that
    process does to load the flow) masks every record it logs and drops a user error's traceback."""
    script = ("import logging, sys\n"
              "import flows\n"
              "from pipeline.errors import DataError\n"
              "logging.basicConfig(stream=sys.stdout, level=logging.INFO)\n"
              f"logging.getLogger('prefect.flow_runs').info('store %s', 'https://u:{SECRET}@h')\n"
              "try:\n"
              "    raise DataError('train.csv: line 3 is not valid JSON')\n"
              "except DataError:\n"
              "    logging.getLogger('prefect.flow_runs').exception('Finished in state Failed')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    assert "store https://u:***@h" in result.stdout and SECRET not in result.stdout + result.stderr
    assert "Finished in state Failed" in result.stdout and "Traceback" not in result.stdout + result.stderr
