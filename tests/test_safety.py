"""Models load from safetensors only, and never run code shipped with a model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from pipeline.errors import ModelError
from pipeline.modeling import load_classifier, resolve_model_path

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
