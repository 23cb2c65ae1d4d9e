"""DVC: the one module that reproduces the data stages and reads the data version from dvc.lock."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml
from dvc.exceptions import DvcException
from dvc.repo import Repo

from pipeline.errors import DataError

SPLIT_STAGE = "split"


@dataclass(frozen=True)
class DataVersion:
    version: str                 # md5 of the split files' folder, as dvc.lock records it
    md5s: dict[str, str]         # path -> md5, deps and outs, as dvc.lock records them

    def as_tags(self) -> dict[str, str]:
        return {"data_version": self.version, **{f"data_md5.{path}": md5 for path, md5 in self.md5s.items()}}


@contextmanager
def _in_project(project_dir: Path) -> Iterator[None]:
    # DVC resolves targets and runs stage commands relative to the cwd, and dvc.yaml's
    # commands call `python`: run in the project, with this interpreter first on PATH.
    old_cwd, old_path = Path.cwd(), os.environ.get("PATH", "")
    os.chdir(project_dir)
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{old_path}"
    try:
        yield
    finally:
        os.chdir(old_cwd)
        os.environ["PATH"] = old_path


def reproduce_splits(project_dir: Path) -> DataVersion:
    """`dvc repro split` (a no-op when data and params are unchanged), push to the default remote, read dvc.lock."""
    try:
        with _in_project(project_dir), Repo(str(project_dir)) as repo:
            repo.reproduce(SPLIT_STAGE)
            if repo.config["core"].get("remote"):
                repo.push()
    except DvcException as exc:
        raise DataError(f"DVC could not reproduce the '{SPLIT_STAGE}' stage in {project_dir}: {exc}") from exc
    return read_data_version(project_dir)


def read_data_version(project_dir: Path) -> DataVersion:
    lock_path = project_dir / "dvc.lock"
    try:
        lock = yaml.safe_load(lock_path.read_text(encoding="utf-8"))
        stage = lock["stages"][SPLIT_STAGE]
    except (OSError, KeyError, TypeError) as exc:
        raise DataError(f"{lock_path} has no '{SPLIT_STAGE}' stage: run `dvc repro {SPLIT_STAGE}` first.") from exc
    md5s = {entry["path"]: entry["md5"] for key in ("deps", "outs") for entry in stage.get(key, [])}
    return DataVersion(version=stage["outs"][0]["md5"], md5s=md5s)


def init_repo(project_dir: Path) -> None:
    """A DVC repository in a folder outside git (the demo's), if there is none yet."""
    if not (project_dir / ".dvc").is_dir():
        Repo.init(str(project_dir), no_scm=True).close()
