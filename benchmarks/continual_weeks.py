"""Three continual steps in a row from the default champion: does each stay promotable, week after week?

    python -m benchmarks.continual_weeks [--rows 1000] [--keep-champion] [-S key=value ...]

A project of its own (outputs/benchmarks/continual-weeks, built as `tunegate demo continual` builds its one, with
params.yaml as it is) trains the default champion on SST-2 with `tunegate retrain`'s flow; then three batches arrive,
one a week, each learned by one `tunegate continual` step (continual.overrides and train.init as params.yaml has them,
-S overrides on top): the electronics reviews' first half, the customer reviews, the electronics reviews' second half
(--rows each, half of each label). After each step: the champion's zero-shot accuracy on the new domain's test split
and the candidate's, SST-2 test accuracy, STS-B forgetting (from the base model), the gates' decision and the step's
wall time. Prints the table with the goals of issue 19 checked and writes benchmarks/results/continual_weeks.json.
--keep-champion reuses the champion of an earlier run (kept in champion-snapshot/) to measure other step settings.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import pandas as pd

import pipeline  # noqa: F401,I001  (offline, quiet, OpenMP threads that sleep: before torch loads)
from benchmarks.sst2_slice import machine, table
from flows.continual import continual_flow
from flows.demo import new_project
from flows.retrain import retrain
from flows.server import start_temporary_server
from pipeline.audit.checks import normalise
from pipeline.config import load_config
from pipeline.data.readers import read_table, write_table
from pipeline.governance.store import connect
from pipeline.governance.versions import champion_version

RESULTS = Path(__file__).parent / "results" / "continual_weeks.json"
WORK = Path("outputs/benchmarks/continual-weeks")
ELECTRONICS, CUSTOMER_REVIEWS, SST2 = "data/raw/amazon-electronics/reviews.tsv", "data/raw/cr/cr.tsv", "data/raw/sst2"
# (batch name, file, which half of each label's rows): the names sort in the order the weeks arrive
WEEKS = [("week1-electronics", ELECTRONICS, 0), ("week2-customer-reviews", CUSTOMER_REVIEWS, 0),
         ("week3-electronics", ELECTRONICS, 1)]
# issue 19's goals for each step
MIN_GAIN, MAX_SST2_DROP, MAX_FORGETTING, MAX_STEP_S = 0.02, 0.01, 0.10, 300


def sst2_texts(project_dir: Path) -> set[str]:
    """SST-2's texts as the audit's pool_leakage check compares them (case and spacing folded)."""
    sst2 = pd.concat([read_table(file) for file in sorted((project_dir / SST2).glob("*.tsv"))])
    return set(normalise(sst2["sentence"]))


def batch_rows(project_dir: Path, path: str, half: int, rows: int, pool: set[str]) -> pd.DataFrame:
    """rows // 2 rows of each label from the given half of that label's rows (the halves never overlap), without the
    texts in the pool (the audit's pool_leakage check would rightly reject the batch: customer reviews share a
    few short phrases with SST-2, e.g. 'good looks')."""
    frame = read_table(project_dir / path)
    frame = frame[~normalise(frame["sentence"]).isin(pool)]
    parts = []
    for _, group in frame.groupby("label"):
        start = half * (len(group) // 2)
        parts.append(group.iloc[start:start + min(rows // 2, len(group) // 2)])
    return pd.concat(parts)


def champion_project(project_dir: Path, overrides: list[str], keep: bool) -> tuple[Path, dict[str, object]]:
    """The project with its default champion (version 1), trained now or copied from the snapshot of an earlier run."""
    project, snapshot, record = WORK / "project", WORK / "champion-snapshot", WORK / "champion.json"
    if not (keep and snapshot.is_dir() and record.is_file()):
        new_project(project_dir, snapshot, {})
        started = time.perf_counter()
        summary = retrain(str(snapshot), overrides)
        if summary.alias != "champion":
            raise SystemExit(f"The default run did not become champion ({summary.reason}): nothing to step from.")
        metrics = champion_version(connect(load_config(snapshot))).metrics
        record.write_text(json.dumps({"retrain_s": time.perf_counter() - started, "metrics": metrics}), "utf-8")
    shutil.rmtree(project, ignore_errors=True)
    shutil.copytree(snapshot, project, symlinks=True)
    return project.resolve(), json.loads(record.read_text("utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000, help="rows of each week's batch, half of each label")
    parser.add_argument("--keep-champion", action="store_true", help="step from the champion of an earlier run")
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="params override, every run")
    args = parser.parse_args()
    project_dir = Path.cwd()
    start_temporary_server()
    project, champion = champion_project(project_dir, args.overrides, args.keep_champion)
    sst2_start = champion["metrics"]["test_accuracy"]
    weeks, pool = [], sst2_texts(project_dir)
    for name, path, half in WEEKS:
        incoming = project / "data/incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        write_table(batch_rows(project_dir, path, half, args.rows, pool), incoming / f"{name}.csv")
        started = time.perf_counter()
        summary = continual_flow(str(project), args.overrides)
        seconds = time.perf_counter() - started
        candidate = summary.candidates[0]
        metrics, zero_shot = candidate.metrics, summary.champion_metrics["test_accuracy"]
        week = {"batch": name, "version": candidate.version, "zero_shot_accuracy": zero_shot,
                "new_domain_accuracy": metrics["test_accuracy"], "gain": metrics["test_accuracy"] - zero_shot,
                "sst2_accuracy": metrics["earlier_sst2_accuracy"],
                "sst2_drop": sst2_start - metrics["earlier_sst2_accuracy"],
                "stsb_forgetting": metrics["forgetting_stsb"], "decision": candidate.alias, "step_s": seconds,
                "reason": candidate.reason}
        week["goals_met"] = (week["decision"] == "champion" and week["gain"] >= MIN_GAIN
                             and week["sst2_drop"] <= MAX_SST2_DROP and week["stsb_forgetting"] <= MAX_FORGETTING
                             and seconds <= MAX_STEP_S)
        weeks.append(week)
        print(table([{k: v for k, v in week.items() if k != "reason"}]), flush=True)
        if candidate.alias != "champion":
            print(f"  {candidate.reason}")

    params = load_config(project, args.overrides)
    results = {"rows_per_batch": args.rows, "overrides": args.overrides,
               "continual_overrides": params.continual.overrides, "train_init": params.train.init,
               "champion": {"sst2_accuracy": sst2_start, "stsb_forgetting": champion["metrics"]["forgetting_stsb"],
                            "retrain_s": champion["retrain_s"]},
               "weeks": weeks, "all_goals_met": all(week["goals_met"] for week in weeks), "machine": machine()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\nchampion v1: SST-2 {sst2_start:.4f}, STS-B forgetting {champion['metrics']['forgetting_stsb']:.4f}")
    print(table([{k: v for k, v in week.items() if k != "reason"} for week in weeks]))
    print(f"goals (gain >= {MIN_GAIN}, SST-2 drop <= {MAX_SST2_DROP}, STS-B forgetting <= {MAX_FORGETTING}, "
          f"step <= {MAX_STEP_S} s, promoted): {'met' if results['all_goals_met'] else 'NOT met'}; wrote {RESULTS}")


if __name__ == "__main__":
    main()
