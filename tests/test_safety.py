"""Models load from safetensors only, and never run code shipped with a model."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from pipeline.config import load_config
from pipeline.errors import ModelError
from pipeline.modeling import load_classifier, resolve_model_path
from pipeline.redaction import RedactingFilter, redact
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


def test_log_records_are_masked_before_any_handler_writes_them():
    record = logging.LogRecord("tunegate", logging.INFO, __file__, 1, "connecting to %s", (f"https://u:{SECRET}@h",),
                               None)
    assert RedactingFilter().filter(record) and record.getMessage() == "connecting to https://u:***@h"
