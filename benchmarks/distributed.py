"""Distributed training on this machine: samples/s and memory per rank for 1 and 2 processes, side by side.

    python -m benchmarks.distributed [--rows 2000] [--repeats 2] [-S key=value ...]

Three ways to train LoRA on the same SST-2 slice with the same global batch of 32, each run in a fresh process
and repeated: one process as the flow trains by default (train.distributed.launcher none), torchrun with one rank
of 32 (what launching costs), and torchrun with two DDP ranks of 16 over gloo. On a CPU, two ranks share the
cores one process would use alone (each rank gets its share of the threads): a speed-up comes only from what one
process leaves idle. samples/s is the Trainer's rows trained per second of training (a validation pass at the end
included); peak memory is each rank's maximum resident set (allocated GPU memory on a GPU). Prints a table and
writes benchmarks/results/distributed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pipeline  # noqa: F401,I001  (its environment, OpenMP settings included, before torch loads)
import torch

from benchmarks.sst2_slice import machine, sst2_slice, table
from pipeline.config import load_config
from pipeline.training.distributed import LAUNCH_DIR, launch_training

RESULTS = Path(__file__).parent / "results" / "distributed.json"
# name -> the overrides that make it; every one trains 32 rows a step
SETUPS = {"1 process (launcher none)": ["train.distributed.launcher=none", "train.batch_size=32"],
          "torchrun, 1 rank x 32": ["train.distributed.launcher=torchrun", "train.distributed.nproc_per_node=1",
                                    "train.batch_size=32"],
          "torchrun, 2 DDP ranks x 16": ["train.distributed.launcher=torchrun", "train.distributed.nproc_per_node=2",
                                         "train.batch_size=16"]}


def run_setup(name: str, rows: int, overrides: list[str], out: Path) -> dict[str, object]:
    """Train one setup (launched from this process) and measure it."""
    config = load_config(Path.cwd(), [*SETUPS[name], *overrides])
    data = sst2_slice(config, rows)
    steps = -(-rows // 32)
    # validation once, at the end (eval_steps past the last step would never score it)
    config = config.model_copy(update={"train": config.train.model_copy(update={"eval_steps": steps,
                                                                              "save_steps": steps})})
    started = time.perf_counter()
    trained = launch_training(config, data["train"], data["validation"].head(256), out)
    wall = time.perf_counter() - started
    ranks = [json.loads(path.read_text()) for path in sorted((out / LAUNCH_DIR).glob("rank-*.json"))]
    peaks = ([rank["peak_memory_mb"] for rank in ranks] if ranks else
             [torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available()
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024])
    return {"setup": name, "world_size": trained.world_size, "train_samples_per_s": trained.train_samples_per_second,
            "train_s": trained.train_seconds, "wall_s": wall, "peak_memory_mb_per_rank": peaks,
            "validation_accuracy": trained.validation_metrics["accuracy"], "precision": trained.precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000, help="SST-2 training phrases (stratified sample)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setup, interleaved")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--child", help=argparse.SUPPRESS)   # run one setup here and print its row as JSON
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory() as out:
            print(json.dumps(run_setup(args.child, args.rows, args.overrides, Path(out))))
        return

    runs: dict[str, list[dict]] = {name: [] for name in SETUPS}
    load_at_start = os.getloadavg()[0]
    for repeat in range(args.repeats):   # interleaved: a busy minute on the machine spreads over every setup
        for name in SETUPS:
            command = [sys.executable, "-m", "benchmarks.distributed", "--child", name, "--rows", str(args.rows),
                       *(f"-S{o}" for o in args.overrides)]
            child = subprocess.run(command, capture_output=True, text=True)
            if child.returncode != 0:
                sys.exit(f"{name} failed:\n{child.stderr[-3000:]}")
            runs[name].append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(f"{name} (run {repeat + 1}): {runs[name][-1]}", file=sys.stderr)
    baseline = statistics.median(r["train_samples_per_s"] for r in runs[next(iter(SETUPS))])
    summary = [{"setup": name, "world_size": found[0]["world_size"],
                "samples_per_s": statistics.median(r["train_samples_per_s"] for r in found),
                "samples_per_s_runs": [r["train_samples_per_s"] for r in found],
                "vs_1_process": statistics.median(r["train_samples_per_s"] for r in found) / baseline,
                "peak_memory_mb_per_rank": max(max(r["peak_memory_mb_per_rank"]) for r in found),
                "validation_accuracy": found[0]["validation_accuracy"]} for name, found in runs.items()]
    report = {"rows": args.rows, "repeats": args.repeats, "overrides": args.overrides,
              "machine": {**machine(), "load_avg_at_start": load_at_start, "load_avg_at_end": os.getloadavg()[0]},
              "summary": summary, "runs": runs}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(table([{"setup": s["setup"], "ranks": s["world_size"], "samples/s (median)": s["samples_per_s"],
                  "vs 1 process": s["vs_1_process"], "peak MB per rank": round(s["peak_memory_mb_per_rank"]),
                  "validation acc": s["validation_accuracy"]} for s in summary]))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
