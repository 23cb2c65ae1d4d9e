"""How long `tunegate lineage MODEL_URI` takes, end to end, as a user runs it (a fresh process each time).

    python -m benchmarks.lineage_commands [MODEL_URI] [--rounds N] [--project-dir DIR]

MODEL_URI defaults to models:/<registry.model_name>@champion of the project (default: the current folder),
whose registry must hold it (e.g. after `make run`). The target is 3 s: the command
imports MLflow but neither torch nor transformers. Prints a table and writes
benchmarks/results/lineage_commands.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pipeline.config import load_config

RESULTS = Path(__file__).parent / "results" / "lineage_commands.json"


def time_command(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_uri", nargs="?")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--project-dir", type=Path, default=Path.cwd())
    args = parser.parse_args()
    uri = args.model_uri or f"models:/{load_config(args.project_dir).registry.model_name}@champion"
    rows = []
    for round_ in range(args.rounds):
        load_before = os.getloadavg()[0]
        seconds, result = time_command(["--project-dir", str(args.project_dir), "lineage", uri])
        if result.returncode != 0:
            sys.exit(result.stderr)
        rows.append({"round": round_ + 1, "wall_s": round(seconds, 2), "load_avg_before": load_before,
                     "lines": len(result.stdout.splitlines())})
    walls = [row["wall_s"] for row in rows]
    result = {"model_uri": uri, "project_dir": str(args.project_dir), "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
              "median_wall_s": statistics.median(walls), "max_wall_s": max(walls), "target_s": 3.0, "runs": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    columns = list(rows[0])
    print("  ".join(f"{c:>15}" for c in columns))
    for row in rows:
        print("  ".join(f"{row[c]!s:>15}" for c in columns))
    print(f"median {result['median_wall_s']} s, max {result['max_wall_s']} s (target 3 s); wrote {RESULTS}")


if __name__ == "__main__":
    main()
