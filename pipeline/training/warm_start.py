"""Where training starts: model.base as written, a registered parent (a warm start from `models:/…`), or the
champion (a continual step's train.init=champion). A start from a registered version needs a whole model."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.errors import ModelError
from pipeline.governance import lineage
from pipeline.governance.store import Store, connect
from pipeline.governance.versions import download_model, find_version
from pipeline.training.models import ADAPTER_CONFIG


def with_base(config: Config, model_dir: Path) -> Config:
    """The config with model.base pointing at a model directory."""
    return config.model_copy(update={"model": config.model.model_copy(update={"base": str(model_dir)})})


def _require_whole_model(model_dir: Path, uri: str, fix: str) -> None:
    if (model_dir / ADAPTER_CONFIG).is_file():
        raise ModelError(f"{uri} holds an adapter that is not merged into its base ({model_dir}); training can "
                         f"start only from a whole model (train.method full, freeze, lora or dora): {fix}.")


def resolve_parent(store: Store, model_uri: str) -> tuple[Path, str]:
    """A warm start's parent: its transformers directory and its URI with the version number
    (an alias moves; the lineage must name the version it started from)."""
    uri = find_version(store, model_uri).uri
    model_dir = download_model(store, uri)
    _require_whole_model(model_dir, uri, "set model.base to a version trained with one of those")
    return model_dir, uri


def from_parent(config: Config) -> tuple[Config, str | None]:
    """A warm start (model.base: models:/NAME/VERSION or @ALIAS): the config the steps run with, its base
    the parent's downloaded model, and the parent's URI with its number, for the lineage."""
    if not lineage.is_registry_uri(config.model.base):
        return config, None
    model_dir, parent = resolve_parent(connect(config), config.model.base)
    return with_base(config, model_dir), parent


def from_champion(config: Config, champion_dir: Path | None, champion_uri: str | None) -> Config:
    """train.init=champion: the champion's weights are the model training starts from; train.init=base: model.base."""
    if config.train.init == "base":
        return config
    if champion_dir is None:
        raise ModelError("train.init is champion, but no version is champion yet: run `tunegate retrain` first, "
                         "or set train.init=base.")
    _require_whole_model(champion_dir, champion_uri, "set train.init=base, or promote a merged model")
    return with_base(config, champion_dir)
