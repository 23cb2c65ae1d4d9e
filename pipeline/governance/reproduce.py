"""Rebuild a registered version from its lineage alone and compare its metrics with the recorded ones.

In a scratch git worktree of the recorded commit, with the recorded params.yaml and dvc.lock and the
splits pulled from the DVC remote, the commit's own code retrains and evaluates (no registration, no
promotion). Everything that can be missing (commit, params, data version, parent) is fetched first, so a
version that cannot be rebuilt fails before any training.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.governance import lineage
from pipeline.governance.store import connect
from pipeline.governance.versions import find_version, read_lineage, read_run_text, run_metrics

from pipeline.data import versioning
from pipeline.config import Config
from pipeline.errors import ReproduceError

# Seconds and throughput depend on the machine's load, not on what was built: not compared.
TIMING_METRICS = ("train_seconds", "train_cpu_seconds", "train_samples_per_second")
METRICS_FILE = "reproduced_metrics.json"
# Run in the checkout, so that the recorded commit's code trains and evaluates, not this one's: the
# library's train and evaluate entry points, as the flow calls them, writing the metrics as JSON.
TRAIN_AND_EVALUATE = """
import json, sys
from pathlib import Path
from pipeline.config import load_config
try:                                                  # the layout of pipeline/ by stage
    from pipeline.data.split import read_split, split_paths
    from pipeline.tasks import evaluate_model
    from pipeline.training.loop import train_model
except ImportError:                                   # a commit from before it: flat modules
    from pipeline.split import read_split, split_paths
    from pipeline.training import train_model
    try:
        from pipeline.tasks import evaluate_model    # by task type
    except ImportError:                               # a commit from before task types: classification only
        from pipeline.evaluation import evaluate_model
config = load_config(".", sys.argv[2:])
paths = split_paths(config)
trained = train_model(config, read_split(paths.train), read_split(paths.validation),
                      config.path(config.train.output_dir) / "reproduce")
evaluation = evaluate_model(config, trained.model_dir, read_split(paths.test),
                            config.path(config.evaluate.report_dir) / "reproduce")
Path(sys.argv[1]).write_text(json.dumps({**trained.as_metrics(), **evaluation.metrics}))
"""


@dataclass(frozen=True)
class MetricComparison:
    name: str
    original: float
    reproduced: float
    tolerance: float

    @property
    def difference(self) -> float:
        return self.reproduced - self.original

    @property
    def within(self) -> bool:
        return abs(self.difference) <= self.tolerance


@dataclass(frozen=True)
class Reproduction:
    version: str                 # models:/NAME/N
    commit: str
    data_version: str
    dirty: bool                  # the recorded tree had uncommitted changes the commit lacks
    library_changes: list[str]   # libraries whose version here is not the recorded one
    comparisons: list[MetricComparison]
    tolerance: float

    @property
    def reproduced(self) -> bool:
        return all(c.within for c in self.comparisons)

    def __str__(self) -> str:
        width = max(len(c.name) for c in self.comparisons)
        lines = [f"{self.version}: commit {self.commit}, data version {self.data_version}"]
        if self.dirty:
            lines.append("warning: the recorded tree had uncommitted changes; the commit lacks them")
        lines += [f"warning: {change}" for change in self.library_changes]
        lines.append(f"{'metric':<{width}}  {'original':>16}  {'reproduced':>16}  {'difference':>11}")
        lines += [f"{c.name:<{width}}  {c.original:>16.6f}  {c.reproduced:>16.6f}  {c.difference:>+11.2e}"
                  f"{'' if c.within else '  differs'}" for c in self.comparisons]
        differing = sum(not c.within for c in self.comparisons)
        verdict = (f"reproduced: {len(self.comparisons)} metrics within {self.tolerance:g} (reproduce.tolerance)"
                   if self.reproduced else
                   f"NOT reproduced: {differing} of {len(self.comparisons)} metrics differ by more than "
                   f"{self.tolerance:g} (reproduce.tolerance)")
        return "\n".join([*lines, verdict])


def reproduce(config: Config, model_uri: str) -> Reproduction:
    """Rebuild model_uri in <reproduce.work_dir>/<name>-<version> and compare every recorded metric."""
    store = connect(config)
    version = find_version(store, model_uri)
    uri, record = read_lineage(store, version.uri)
    params = read_run_text(store, version.run_id, lineage.PARAMS_ARTIFACT)
    dvc_lock = read_run_text(store, version.run_id, lineage.DVC_LOCK_ARTIFACT)
    commit, data_version = record["code"]["git_commit"], record["data"]["version"]
    if commit == "unknown":
        raise ReproduceError(f"{uri} was trained outside a git checkout: no commit to rebuild it from.")
    overrides = []
    if (parent := lineage.parent_of(record)) is not None:
        from pipeline.training.warm_start import resolve_parent   # torch: only for a warm start's parent

        overrides.append(f"model.base={resolve_parent(store, parent)[0]}")
    checkout = config.path(config.reproduce.work_dir) / f"{version.name}-{version.version}"
    lineage.add_worktree(config.project_dir, commit, checkout)
    try:
        (checkout / "params.yaml").write_text(params, encoding="utf-8")
        (checkout / "dvc.lock").write_text(dvc_lock, encoding="utf-8")
        versioning.checkout_data_version(checkout, versioning.default_remote_url(config.project_dir), data_version)
        reproduced = _train_and_evaluate(checkout, overrides, record.get("hardware", {}).get("threads"))
    finally:
        lineage.remove_worktree(config.project_dir, checkout)
    original = run_metrics(store, version.run_id)
    names = sorted(set(original) & set(reproduced) - set(TIMING_METRICS))
    here = lineage.library_versions()
    changes = [f"{name} {version} recorded, {here.get(name)} here"
               for name, version in record.get("libraries", {}).items() if here.get(name) != version]
    return Reproduction(uri, commit, data_version, bool(record["code"].get("dirty")), changes,
                        [MetricComparison(n, original[n], reproduced[n], config.reproduce.tolerance) for n in names],
                        config.reproduce.tolerance)


def _train_and_evaluate(checkout: Path, overrides: list[str], threads: str | None) -> dict[str, float]:
    out = checkout / METRICS_FILE
    # The checkout's own pipeline package first; this interpreter and its libraries (the lineage records
    # the versions it was trained with); on the CPU, as many threads as the run had.
    env = {**os.environ, "PYTHONPATH": str(checkout), **({"OMP_NUM_THREADS": threads} if threads else {})}
    run = subprocess.run([sys.executable, "-c", TRAIN_AND_EVALUATE, str(out), *overrides], cwd=checkout, env=env,
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise ReproduceError(f"Retraining in {checkout} failed:\n{run.stderr.strip()[-3000:]}")
    return json.loads(out.read_text())
