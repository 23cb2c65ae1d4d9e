"""Ten retraining runs at once against one MLflow tracking server on PostgreSQL: every version, artifact and alias
move is kept, and `champion` ends on the best passing version.

    python benchmarks/concurrent_runs.py [--runs 10]

Starts an MLflow server (127.0.0.1, a free port) on a scratch database of the PostgreSQL server the tests use
(tests/conftest.py, trust auth), its artifacts in a temp folder; makes RUNS tiny projects (the tests' SST-2 slice,
TRAIN_ROWS training rows, a few steps) and starts `tunegate retrain` in each at the same moment, each with its own
seed and learning rate, all registering the same model. Then reads the store back: each run registered a version;
each version's model, reports, decision and lineage are there, and its lineage tags; the alias history holds each
version's move, every move starting from the version the one before it left; `champion` is on the version with
the best test accuracy of those that pass the gates on their own. Prints a table and the time, writes
benchmarks/results/concurrent_runs.json, and exits 1 if a check fails.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
# The tests' project maker and tracking server: the benchmark runs on the same harness (offline, quiet; see there).
from tests.conftest import make_project, mlflow_server, scratch_database, small_params  # noqa: E402

from pipeline.governance import gates, lineage, versions  # noqa: E402
from pipeline.governance.aliases import AliasMove, alias_history  # noqa: E402
from pipeline.governance.store import connect  # noqa: E402
from pipeline.config import Config, load_config  # noqa: E402
from pipeline.errors import ModelError  # noqa: E402

RESULT = PROJECT / "benchmarks/results/concurrent_runs.json"
RUNS = 10
TRAIN_ROWS = 96                  # 12 steps of 8
# Full fine-tuning learns in a dozen steps (LoRA does not); its rates go from too slow to learn in 12 steps to too
# fast to keep what the base knew (forgetting); with a seed each, the runs score differently.
LEARNING_RATES = [3.0e-5, 1.0e-4, 2.0e-4, 3.0e-4, 1.0e-3]
RUN_TIMEOUT_S = 1800
# Ten runs on a few cores: each trains on one thread, and waits long for its own Prefect API to start.
RUN_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "900"}
PARAMS = small_params(
    split={"max_train_rows": TRAIN_ROWS}, model={"max_length": 64},
    train={"method": "full", "batch_size": 8, "eval_steps": 12, "save_steps": 12, "logging_steps": 4,
           "precision": "fp32", "warmup_ratio": 0.0, "lr_scheduler": "constant_with_warmup"},
    # every promotion of ten waits its turn for the lock: a wait as long as the runs may take
    gates={"min_accuracy": 0.55, "lock": {"lease_s": 600, "wait_s": RUN_TIMEOUT_S, "poll_s": 0.5}})
# Where each version keeps what `tunegate reproduce`, `lineage` and the model card read, relative to its run.
RUN_ARTIFACTS = ["reports/audit.json", "reports/evaluation.json", versions.MODEL_CARD_ARTIFACT, "decision.json",
                 lineage.RECORD_ARTIFACT, lineage.PARAMS_ARTIFACT, lineage.DVC_LOCK_ARTIFACT]
MODEL_FILES = ["config.json", "model.safetensors", "tokenizer.json"]
LINEAGE_TAGS = ["git_commit", "data_version", "params_hash", "base_model"]
REGISTERED = re.compile(r"^registered\s+\S+ version (\d+)$", re.MULTILINE)


def overrides(run: int) -> list[str]:
    return [f"train.seed={42 + run}", f"train.learning_rate.full={LEARNING_RATES[run % len(LEARNING_RATES)]}"]


def start_runs(root: Path, count: int, tracking_uri: str) -> list[dict]:
    """`tunegate retrain` in `count` projects at once, each with its own Prefect home; returns when all ended."""
    projects = [make_project(root / f"run-{run}", PARAMS) for run in range(count)]
    started = []
    for run, project in enumerate(projects):
        env = {**os.environ, **RUN_ENV, "MLFLOW_TRACKING_URI": tracking_uri, "PREFECT_HOME": str(project / ".prefect")}
        command = [sys.executable, "-m", "flows.cli", "--project-dir", str(project), "retrain",
                   *(arg for override in overrides(run) for arg in ("-S", override))]
        with (project / "retrain.log").open("w") as log:
            started.append((run, project, time.perf_counter(),
                            subprocess.Popen(command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)))
    ended: dict[int, float] = {}
    while len(ended) < count:   # each run's own time: when it ended, whatever the order
        for run, project, began, process in started:
            if run in ended:
                continue
            if process.poll() is not None:
                ended[run] = time.perf_counter() - began
            elif time.perf_counter() - began > RUN_TIMEOUT_S:
                raise TimeoutError(f"run {run} did not end within {RUN_TIMEOUT_S} s: {project / 'retrain.log'}")
        time.sleep(0.5)
    runs = []
    for run, project, _, process in started:
        registered = REGISTERED.findall((project / "retrain.log").read_text())
        runs.append({"run": run, "overrides": overrides(run), "exit": process.returncode,
                     "seconds": round(ended[run], 1), "version": registered[-1] if registered else None,
                     "log": str(project / "retrain.log")})
    return runs


def missing_artifacts(config: Config, version: str, run_id: str) -> list[str]:
    """What the store cannot give back of a version: files of its run, files of its model (present, not empty)."""
    missing = []
    for path in RUN_ARTIFACTS:
        try:
            versions.read_run_text(connect(config), run_id, path)
        except ModelError:
            missing.append(path)
    try:
        model_dir = versions.download_model(connect(config), f"models:/{config.registry.model_name}/{version}")
    except ModelError:
        return [*missing, "model"]
    return missing + [f"model/{name}" for name in MODEL_FILES
                      if not (model_dir / name).is_file() or (model_dir / name).stat().st_size == 0]


REGISTERED_ALL, ARTIFACTS, LINEAGE, HISTORY, CHAMPION = (
    "every run registered a version", "every version has its artifacts", "every version has its lineage tags",
    "the history has every alias move, each from where the one before left the alias",
    "champion is on the best passing version")


def check_store(config: Config, runs: list[dict]) -> tuple[list[dict], list[AliasMove], dict[str, list[str]]]:
    """Each version's row for the table, the alias history, and for each check what failed, in words (nothing: it
    held)."""
    store = connect(config)
    client = store.client
    rows = {row.version: row for row in versions.list_versions(store)}
    moves = alias_history(store)
    problems: dict[str, list[str]] = {check: [] for check in (REGISTERED_ALL, ARTIFACTS, LINEAGE, HISTORY, CHAMPION)}
    problems[REGISTERED_ALL] += [f"run {run['run']} exited {run['exit']} without registering: {run['log']}"
                                 for run in runs if run["exit"] != 0 or run["version"] is None]
    if len(rows) != len(runs):
        problems[REGISTERED_ALL].append(f"{len(runs)} runs, {len(rows)} versions in the registry")
    table = []
    for row in sorted(rows.values(), key=lambda row: int(row.version)):
        run_id = client.get_model_version(config.registry.model_name, row.version).run_id
        missing = missing_artifacts(config, row.version, run_id)
        tags = [tag for tag in LINEAGE_TAGS if not row.tags.get(tag)]
        if not any(tag.startswith(lineage.TAG_PREFIX) for tag in row.tags):
            tags.append(f"{lineage.TAG_PREFIX}*")
        own = {name: value for name, value in row.metrics.items() if not name.startswith(gates.CHAMPION_PREFIX)}
        passes = gates.decide(own, None, config.gates).promote   # every gate but the comparison with a champion
        moved = [move.alias for move in moves if move.to_version == row.version]
        run = next((run for run in runs if run["version"] == row.version), None)
        table.append({"version": row.version, "run": run["run"] if run else "-",
                      "overrides": " ".join(run["overrides"]) if run else "-",
                      "test_accuracy": row.metrics[gates.task_metric(row.metrics)], "passes_gates": passes,
                      "decision": row.tags.get("promotion_decision", "-"), "aliases": ",".join(row.aliases) or "-",
                      "alias_moves": len(moved), "missing_artifacts": missing, "missing_lineage_tags": tags})
        problems[ARTIFACTS] += [f"version {row.version}: no {path}" for path in missing]
        problems[LINEAGE] += [f"version {row.version}: no tag {tag}" for tag in tags]
        if moved != [row.tags.get("promotion_decision")]:
            problems[HISTORY].append(f"version {row.version}: decided {row.tags.get('promotion_decision')}, "
                                     f"moves in the history {moved}")
    # each move starts where the one before it (of the same alias) left the alias: none lost, none overwritten
    left: dict[str, str | None] = {}
    for move in moves:
        if move.from_version != left.get(move.alias):
            problems[HISTORY].append(f"{move.alias} moved {move.from_version} -> {move.to_version}, but the move "
                                     f"before it left it on {left.get(move.alias)}")
        left[move.alias] = move.to_version
    aliases = {alias: version for version, row in rows.items() for alias in row.aliases}
    if aliases != left:
        problems[HISTORY].append(f"the aliases are {aliases}, the history left them {left}")
    best = max((row["test_accuracy"] for row in table if row["passes_gates"]), default=None)
    champion = next((row for row in table if row["version"] == aliases.get(versions.CHAMPION)), None)
    if (champion["test_accuracy"] if champion else None) != best or (champion and not champion["passes_gates"]):
        problems[CHAMPION].append(f"champion is version {aliases.get(versions.CHAMPION)}, the best accuracy of a "
                                  f"passing version is {best}")
    return table, moves, problems


def print_table(rows: list[dict]) -> None:
    columns = ["version", "run", "overrides", "test_accuracy", "passes_gates", "decision", "aliases", "alias_moves",
               "artifacts", "lineage_tags"]
    cells = [[str(row["version"]), str(row["run"]), row["overrides"], f"{row['test_accuracy']:.4f}",
              "yes" if row["passes_gates"] else "no", row["decision"], row["aliases"], str(row["alias_moves"]),
              "all" if not row["missing_artifacts"] else "MISSING " + ",".join(row["missing_artifacts"]),
              "all" if not row["missing_lineage_tags"] else "MISSING " + ",".join(row["missing_lineage_tags"])]
             for row in rows]
    widths = [max(len(column), *(len(cell[i]) for cell in cells)) for i, column in enumerate(columns)]
    for line in [columns, *cells]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS, help=f"runs at once (default {RUNS})")
    args = parser.parse_args()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tunegate-concurrent-") as scratch, \
            scratch_database("tg_concurrent") as database, mlflow_server(database, Path(scratch)) as url:
        server_ready = time.perf_counter() - began
        runs_began = time.perf_counter()
        runs = start_runs(Path(scratch), args.runs, url)
        runs_s = time.perf_counter() - runs_began
        os.environ["MLFLOW_TRACKING_URI"] = url
        config = load_config(Path(scratch) / "run-0")
        table, history, problems = check_store(config, runs)
        for run in runs:
            if run["exit"] != 0:
                print(f"run {run['run']} exited {run['exit']}; its log's end:\n"
                      f"{Path(run['log']).read_text()[-3000:]}", file=sys.stderr)
    total_s = time.perf_counter() - began
    print_table(table)
    print()
    print("alias history (oldest first):")
    for move in history:
        print(f"  {move.alias}: {move.from_version or '-'} -> {move.to_version}  {move.reason}")
    print()
    for check, failures in problems.items():
        print(f"{'FAILED' if failures else 'held  '}  {check}")
        for failure in failures:
            print(f"          {failure}")
    seconds = sorted(run["seconds"] for run in runs)
    print(f"\n{args.runs} runs at once: {runs_s:.0f} s (each {seconds[0]:.0f}-{seconds[-1]:.0f} s); MLflow server "
          f"ready in {server_ready:.0f} s; {total_s:.0f} s in all on {os.cpu_count()} CPUs")
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps({
        "runs": args.runs, "train_rows": TRAIN_ROWS, "checks": {check: not failed for check, failed in problems.items()},
        "failures": problems, "versions": table,
        "alias_history": [dataclasses.asdict(move) for move in history],
        "run_seconds": [{key: run[key] for key in ("run", "overrides", "exit", "seconds", "version")} for run in runs],
        "seconds": {"server_start": round(server_ready, 1), "runs": round(runs_s, 1), "total": round(total_s, 1)},
        "cpus": os.cpu_count()}, indent=2) + "\n")
    print(f"wrote {RESULT.relative_to(PROJECT)}")
    return 1 if any(problems.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
