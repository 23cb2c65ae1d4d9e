"""Checks before any work: what a run needs around it is there. Each failure is one line naming the thing and
what to do, raised before the audit, so a run that cannot finish never starts (and never half-registers)."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from pipeline.governance.store import check_reachable

from pipeline.data import versioning
from pipeline.config import Config
from pipeline.errors import EnvironmentProblem, ModelError
from pipeline.training.distributed import check_launch
from pipeline.training.models import WEIGHT_FILES, base_model_dir


def output_dirs(config: Config) -> dict[str, Path]:
    """Where a run writes, by the params.yaml key that says so."""
    dirs = {"split.out_dir": config.split.out_dir, "audit.report_dir": config.audit.report_dir,
            "train.output_dir": config.train.output_dir, "evaluate.report_dir": config.evaluate.report_dir,
            "evaluate.base_cache_dir": config.evaluate.base_cache_dir}
    if config.registry.tracking_uri.startswith("sqlite"):
        dirs["registry.artifact_location"] = config.registry.artifact_location
    return {key: config.path(value) for key, value in dirs.items()}


def check_writable(key: str, path: Path, min_free_mb: int) -> None:
    existing = next(parent for parent in (path, *path.parents) if parent.exists())
    free_mb = shutil.disk_usage(existing).free // 2**20
    if free_mb < min_free_mb:
        raise EnvironmentProblem(f"{key}: only {free_mb} MB free on the disk of {path} (a run needs "
                                 f"preflight.min_free_mb = {min_free_mb}): free space, or point {key} at another disk.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise EnvironmentProblem(f"{key}: cannot write to {path} ({exc.strerror}): fix its permissions, or point "
                                 f"{key} in params.yaml at a folder you can write.") from exc


def check_base_model(config: Config) -> None:
    """The base model is there, its config parses and each weight file's header reads (a truncated copy fails here)."""
    from safetensors import SafetensorError, safe_open

    model_dir = base_model_dir(config)
    try:
        json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        for weights in sorted(model_dir.glob(WEIGHT_FILES)):
            with safe_open(weights, framework="pt") as opened:
                opened.keys()
    except (OSError, ValueError, SafetensorError) as exc:
        raise ModelError(f"model.base: {model_dir} is corrupt ({exc}): copy the model again, or point model.base "
                         f"at a good copy.") from exc


def run_preflight(config: Config) -> None:
    for key, path in output_dirs(config).items():
        check_writable(key, path, config.preflight.min_free_mb)
    check_base_model(config)
    check_reachable(config)
    versioning.check_remote(config.project_dir)
    if config.train.distributed.launcher != "none":
        check_launch(config.train.distributed)
