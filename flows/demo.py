"""`tunegate demo continual`: the continual story on the bundled data, in a folder of its own.

A champion trained on SST-2, then a batch of 600 electronics reviews arrives and one continual step trains two
candidates from the champion, with replay of SST-2 rows and without; a table shows what each learned and forgot.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pandas as pd
import yaml

from flows.continual import ContinualSummary, continual_flow
from flows.retrain import retrain
from pipeline.config import PARAMS_FILE, load_config
from pipeline.data.readers import read_table, write_table
from pipeline.data.versioning import init_repo
from pipeline.governance.store import connect
from pipeline.governance.versions import champion_version
from pipeline.terminal import table

DEMO_DIR = "outputs/demo-continual"
# dvc.yaml's split stage depends on its code: the demo project holds a copy, as any project does.
COPIED = ["data/raw/sst2", "data/raw/eec", "data/raw/stsb", "dvc.yaml", "pipeline"]
BATCH = "data/raw/amazon-electronics/reviews.tsv"
BATCH_ROWS = 600   # reviews of the batch, half of each label: a step in minutes on 2 CPU cores
# Small enough for a CPU: the champion trains on 2,000 SST-2 rows (accuracy ~0.81, hence the lower floor);
# texts are cut at 64 tokens (reviews run to hundreds: at 128, a step's training takes 4x longer).
DEMO_PARAMS = {"split": {"max_train_rows": 2000}, "gates": {"min_accuracy": 0.75}, "model": {"max_length": 64},
               "continual": {"candidates": [["continual.replay_share=0.5"], ["continual.replay_share=0.0"]]}}


def new_project(project_dir: Path, target: Path, changes: dict[str, dict]) -> Path:
    """A fresh project at target: the bundled data, dvc.yaml, params.yaml with the changes (section -> values), a
    tracking store and a DVC repo of its own."""
    shutil.rmtree(target, ignore_errors=True)
    for relative in COPIED:
        source = project_dir / relative
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target / relative, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target / relative)
    params = yaml.safe_load((project_dir / PARAMS_FILE).read_text(encoding="utf-8"))
    for section, values in changes.items():
        params[section].update(values)
    params["registry"]["tracking_uri"] = "sqlite:///mlflow/mlflow.db"   # its own store, whatever the project's
    (target / PARAMS_FILE).write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    init_repo(target)
    return target


def outcome_table(summary: ContinualSummary, champion_metrics: dict[str, float], seconds: float) -> str:
    before = summary.champion_metrics
    header = ["model", "electronics acc", "sst2 acc", "sst2 forgetting", "stsb spearman", "decision"]
    rows = [[f"champion {summary.parent.rsplit('/', 1)[-1]} (before)", f"{before['test_accuracy']:.4f}",
             f"{before['earlier_sst2_accuracy']:.4f}", "-", f"{champion_metrics['general_stsb_spearman']:.4f}", "champion"]]
    for candidate in summary.candidates:
        metrics = candidate.metrics
        rows.append([f"v{candidate.version} {' '.join(candidate.overrides)}", f"{metrics['test_accuracy']:.4f}",
                     f"{metrics['earlier_sst2_accuracy']:.4f}", f"{metrics['task_forgetting_sst2']:.4f}",
                     f"{metrics['general_stsb_spearman']:.4f}", candidate.alias])
    reasons = [f"v{c.version}: {c.reason}" for c in summary.candidates]
    return "\n".join([table([header, *rows]), "", *reasons, "", f"continual step: {seconds:.0f} s"])


def run_demo(project_dir: Path) -> str:
    demo = project_dir / DEMO_DIR
    new_project(project_dir, demo, DEMO_PARAMS)
    first = retrain(str(demo))
    if first.alias != "champion":
        return f"The SST-2 model did not become champion ({first.reason}); the demo needs one.\n{first}"
    before = champion_version(connect(load_config(demo)))
    incoming = demo / "data/incoming"
    incoming.mkdir(parents=True)
    reviews = read_table(project_dir / BATCH)
    batch = pd.concat([group.head(BATCH_ROWS // 2) for _, group in reviews.groupby("label")])
    write_table(batch, incoming / "electronics.csv")
    started = time.perf_counter()
    summary = continual_flow(str(demo))
    return f"{summary}\n\n{outcome_table(summary, before.metrics, time.perf_counter() - started)}"
