"""DVC: the one module that reproduces the data stages and reads the data version from dvc.lock."""
from __future__ import annotations

import hashlib
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml
from dvc.exceptions import DvcException
from dvc.repo import Repo

from pipeline.errors import DataError, EnvironmentProblem

SPLIT_STAGE = "split"


@dataclass(frozen=True)
class DataVersion:
    version: str                 # md5 of the split files' folder, as dvc.lock records it
    md5s: dict[str, str]         # path -> md5, deps and outs, as dvc.lock records them
    input_files: dict[str, str]  # each file of the split stage's deps (raw data, split code) -> md5
    split_files: dict[str, str]  # each file of its outs (the splits) -> md5

    def as_tags(self) -> dict[str, str]:
        return {"data_version": self.version, **{f"data_md5.{path}": md5 for path, md5 in self.md5s.items()}}

    def as_record(self) -> dict[str, object]:
        return {"version": self.version, "inputs": self.input_files, "splits": self.split_files}


@contextmanager
def _quiet_dvc() -> Iterator[None]:
    """DVC's own progress and its hints for a person at a shell ("git add dvc.lock", "enable auto staging") are
    noise in a run's log; warnings and errors still show, and the flow logs the data version."""
    dvc_log = logging.getLogger("dvc")
    level = dvc_log.level
    dvc_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        dvc_log.setLevel(level)


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
        with _in_project(project_dir), _quiet_dvc(), Repo(str(project_dir)) as repo:
            repo.reproduce(SPLIT_STAGE)
            if repo.config["core"].get("remote"):
                repo.push()
    except DvcException as exc:
        raise DataError(f"DVC could not reproduce the '{SPLIT_STAGE}' stage in {project_dir}: {exc}") from exc
    return read_data_version(project_dir)


def check_remote(project_dir: Path) -> None:
    """The default DVC remote (if any) can be reached and written: a split is pushed there before training."""
    with _in_project(project_dir), _quiet_dvc(), Repo(str(project_dir)) as repo:
        name = repo.config["core"].get("remote")
        if not name:
            return
        url = repo.config["remote"][name]["url"]
        try:
            remote = repo.cloud.get_remote_odb(name)
            remote.fs.makedirs(remote.path, exist_ok=True)   # a first push creates it; a vanished mount fails here
            if not remote.fs.exists(remote.path):
                raise FileNotFoundError(url)
        except (DvcException, OSError) as exc:
            raise EnvironmentProblem(f"DVC remote {name!r} at {url} cannot be reached ({exc}): restore it, or point "
                                     f"it elsewhere with `dvc remote modify {name} url NEW_URL`.") from exc


def read_data_version(project_dir: Path) -> DataVersion:
    lock_path = project_dir / "dvc.lock"
    try:
        lock = yaml.safe_load(lock_path.read_text(encoding="utf-8"))
        stage = lock["stages"][SPLIT_STAGE]
    except (OSError, KeyError, TypeError) as exc:
        raise DataError(f"{lock_path} has no '{SPLIT_STAGE}' stage: run `dvc repro {SPLIT_STAGE}` first.") from exc
    md5s = {entry["path"]: entry["md5"] for key in ("deps", "outs") for entry in stage.get(key, [])}
    return DataVersion(version=stage["outs"][0]["md5"], md5s=md5s,
                       input_files=_file_md5s(project_dir, [e["path"] for e in stage.get("deps", [])]),
                       split_files=_file_md5s(project_dir, [e["path"] for e in stage["outs"]]))


def _file_md5s(project_dir: Path, paths: list[str]) -> dict[str, str]:
    """md5 of each file under these dvc.lock paths: what DVC's `hash: md5` gives a file (its bytes' md5),
    listed in its .dir manifests for a folder."""
    files = sorted(f for p in paths for f in ([project_dir / p] if (project_dir / p).is_file()
                                              else (project_dir / p).rglob("*")) if f.is_file())
    return {str(f.relative_to(project_dir)): hashlib.md5(f.read_bytes()).hexdigest() for f in files}


def default_remote_url(project_dir: Path) -> str:
    """The URL of the project's default DVC remote, a relative local path made absolute."""
    with Repo(str(project_dir)) as repo:
        name = repo.config["core"].get("remote")
        if not name:
            raise DataError(f"{project_dir} has no default DVC remote, so no data version can be pulled: "
                            f"`dvc remote add -d NAME URL`, then re-run the flow (it pushes the splits).")
        # DVC's config resolves a local remote's relative path against the config file's folder.
        return repo.config["remote"][name]["url"]


def checkout_data_version(checkout_dir: Path, remote_url: str, version: str) -> DataVersion:
    """Pull the splits dvc.lock records in checkout_dir from remote_url, and check they are `version`."""
    try:
        with _in_project(checkout_dir), Repo(str(checkout_dir)) as repo:
            name = repo.config["core"].get("remote") or "origin"
            with repo.config.edit("local") as local:
                local.setdefault("core", {})["remote"] = name
                local.setdefault("remote", {})[name] = {"url": remote_url}
            repo.pull(targets=[SPLIT_STAGE])
    except DvcException as exc:
        raise DataError(f"Data version {version} cannot be pulled from the DVC remote {remote_url}: {exc}. "
                        f"Push it from the checkout that made it (`dvc push`).") from exc
    pulled = read_data_version(checkout_dir)
    if pulled.version != version:
        raise DataError(f"The recorded dvc.lock names data version {pulled.version}, not {version}.")
    return pulled


def init_repo(project_dir: Path) -> None:
    """A DVC repository in a folder outside git (the demo's), if there is none yet."""
    if not (project_dir / ".dvc").is_dir():
        Repo.init(str(project_dir), no_scm=True).close()
