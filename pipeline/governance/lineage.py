"""Lineage: what a registered version was built from, as one JSON record, and that record as a tree.

The record names the code (git commit, dirty or not), the data (DVC data version and the md5 of every
raw and split file), the params (hash; the full file is logged beside it), the starting weights (the base
model and its sha256, or the parent version for a warm start), the seed, precision and hardware, the
library versions, the Prefect flow run and the report artifacts. Building it needs no torch: the
`tunegate lineage` command only formats records read back from the registry. Git is reached here: the
checkout's state for the record, and the worktree of a recorded commit that `tunegate reproduce` rebuilds in.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import Config
from pipeline.errors import ReproduceError

if TYPE_CHECKING:   # versioning imports DVC, which `tunegate lineage` does not need
    from pipeline.data.versioning import DataVersion

# The libraries whose versions decide what a run computes, as pip names them.
LIBRARIES = ("torch", "transformers", "peft", "mlflow", "prefect", "dvc")
REGISTRY_URI_PREFIX = "models:/"
TAG_PREFIX = "lineage."
# Where a run keeps its lineage, relative to its artifact root.
LINEAGE_DIR = "lineage"
PARENT_TAG = "parent_model"   # a warm start's parent version, models:/NAME/VERSION, also on the version
RECORD_ARTIFACT = f"{LINEAGE_DIR}/lineage.json"
PARAMS_ARTIFACT = f"{LINEAGE_DIR}/params.yaml"
DVC_LOCK_ARTIFACT = f"{LINEAGE_DIR}/dvc.lock"
# The registered version's own weights: each safetensors file's size and sha256, in the record and as
# lineage.weights.<file>.<size|sha256> tags on the version, which promotion checks before an alias moves to it.
WEIGHTS = "weights"
WEIGHTS_TAG_PREFIX = f"{TAG_PREFIX}{WEIGHTS}."
WEIGHT_FILES = "*.safetensors"   # the only weights tunegate reads: safetensors hold tensors, not code


@dataclass(frozen=True)
class GitState:
    commit: str     # HEAD's sha; "unknown" outside a git checkout
    dirty: bool     # tracked files differ from HEAD: the commit alone does not rebuild the run

    def __str__(self) -> str:
        return f"{self.commit}-dirty" if self.dirty else self.commit


def git_state(project_dir: Path) -> GitState:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=project_dir, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return GitState(git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no")))
    except (subprocess.CalledProcessError, FileNotFoundError):
        return GitState("unknown", False)


def identity_tags(code: GitState, data_version: str, params_hash: str) -> dict[str, str] | None:
    """The tags of a version built from this data, these params and this code; None for a work tree with
    uncommitted edits, whose code no commit names."""
    if code.dirty:
        return None
    return {"data_version": data_version, "params_hash": params_hash, "git_commit": code.commit}


def is_registry_uri(name: str) -> bool:
    """model.base names a registered version (warm start) rather than a base model."""
    return name.startswith(REGISTRY_URI_PREFIX)


def hardware(precision: str) -> dict[str, str]:
    """The accelerator a run used: the GPU's name where CUDA is present, else the CPU model."""
    import torch

    if torch.cuda.is_available():
        return {"device": "cuda", "name": torch.cuda.get_device_name(0), "precision": precision}
    # the order of a parallel sum depends on the threads: a rebuild with as many gives equal numbers
    return {"device": "cpu", "name": cpu_model(), "precision": precision, "threads": str(torch.get_num_threads())}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in LIBRARIES}


def starting_weights(config: Config, parent: str | None) -> dict[str, str]:
    """The base model and the sha256 of its weights; for a warm start, the parent version instead."""
    if parent is not None:
        return {"parent": parent}
    from pipeline.training.models import base_model_dir, weights_sha256

    return {"base_model": config.model.base,
            "weights_sha256": weights_sha256(base_model_dir(config))}


def weight_files(model_dir: Path) -> dict[str, dict[str, Any]]:
    """Each safetensors file of a model directory (by name) with its size in bytes and its sha256."""
    files = {}
    for path in sorted(Path(model_dir).glob(WEIGHT_FILES)):
        with path.open("rb") as f:
            files[path.name] = {"size": path.stat().st_size, "sha256": hashlib.file_digest(f, "sha256").hexdigest()}
    return files


def recorded_weights(tags: dict[str, str]) -> dict[str, dict[str, str]]:
    """The weight files a version's lineage.weights.* tags record, by name: {"size": ..., "sha256": ...}."""
    files: dict[str, dict[str, str]] = {}
    for key, value in tags.items():
        if key.startswith(WEIGHTS_TAG_PREFIX):
            name, attribute = key.removeprefix(WEIGHTS_TAG_PREFIX).rsplit(".", 1)
            files.setdefault(name, {})[attribute] = value
    return files


def build_record(config: Config, git: GitState, data_version: DataVersion, precision: str, parent: str | None,
                 flow_run_id: str | None, reports: dict[str, list[str]]) -> dict[str, Any]:
    """The lineage of one run. config is the run's own (model.base as the user wrote it); git, the checkout
    as the run started (a commit made while it trains is not its code); parent, the warm start's version
    resolved to a number (models:/NAME/N); reports, artifact paths by report."""
    return {
        "code": {"git_commit": git.commit, "dirty": git.dirty},
        "data": data_version.as_record(),
        "params": {"hash": config.params_hash(), "file": PARAMS_ARTIFACT},
        "model": {**starting_weights(config, parent), "method": config.train.method},
        "seed": config.train.seed,
        "hardware": hardware(precision),
        "libraries": library_versions(),
        "flow_run_id": flow_run_id,
        "reports": reports,
    }


def as_tags(record: dict[str, Any]) -> dict[str, str]:
    """Flat, prefixed tags (lineage.code.git_commit, lineage.data.raw.<path>, ...), searchable in MLflow."""
    flat: dict[str, str] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for name, inner in value.items():
                walk(inner, f"{key}.{name}")
        elif isinstance(value, list):
            flat[key] = ", ".join(map(str, value))
        elif value is not None:
            flat[key] = str(value)

    walk(record, TAG_PREFIX.rstrip("."))
    return flat


def parent_of(record: dict[str, Any]) -> str | None:
    return record.get("model", {}).get("parent")


def format_tree(chain: list[tuple[str, dict[str, Any]]]) -> str:
    """Records from a version back through its parents to the base model, as a tree: each parent's record
    is the last branch of its child's."""
    lines: list[str] = []
    indent = ""
    for depth, (uri, record) in enumerate(chain):
        has_parent = depth + 1 < len(chain)
        lines += _branch(record, indent, last_is_final=not has_parent)
        if has_parent:
            lines.append(f"{indent}└── parent {chain[depth + 1][0]}")
            indent += "    "
    return "\n".join([chain[0][0], *lines])


def _branch(value: dict[str, Any], indent: str, last_is_final: bool = True) -> list[str]:
    lines = []
    items = list(value.items())
    for i, (key, inner) in enumerate(items):
        last = last_is_final and i == len(items) - 1
        joint, below = ("└── ", "    ") if last else ("├── ", "│   ")
        if isinstance(inner, dict) and inner:
            lines.append(f"{indent}{joint}{key}")
            lines += _branch(inner, indent + below)
        else:
            shown = ", ".join(map(str, inner)) if isinstance(inner, list) else inner
            lines.append(f"{indent}{joint}{key}: {shown}")
    return lines


def add_worktree(project_dir: Path, commit: str, checkout_dir: Path) -> None:
    """A detached git worktree of commit at checkout_dir (replacing one left there by an earlier try)."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=project_dir, capture_output=True, text=True)

    if git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        raise ReproduceError(f"Commit {commit} is not in the git repository at {project_dir}: fetch it "
                             f"(`git fetch --all`) or run from the repository the version was trained in.")
    remove_worktree(project_dir, checkout_dir)
    checkout_dir.parent.mkdir(parents=True, exist_ok=True)
    added = git("worktree", "add", "--detach", "--force", str(checkout_dir), commit)
    if added.returncode != 0:
        raise ReproduceError(f"git could not check out {commit} at {checkout_dir}: {added.stderr.strip()}")


def remove_worktree(project_dir: Path, checkout_dir: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(checkout_dir)], cwd=project_dir, capture_output=True)
    shutil.rmtree(checkout_dir, ignore_errors=True)
    subprocess.run(["git", "worktree", "prune"], cwd=project_dir, capture_output=True)
