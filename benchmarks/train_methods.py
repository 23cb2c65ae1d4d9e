"""Every train.method on the same SST-2 slice: trainable parameters, test accuracy, samples/s, time, peak memory.

    python -m benchmarks.train_methods [--rows 2000] [--epochs 1] [--methods lora full ...] [-S key=value ...]

Each method runs train_model as the flow does, with params.yaml (its own learning rate and options), in a
fresh process: peak memory (max RSS on the CPU, max allocated on a GPU) is then the method's own, and no
method inherits another's caches. Test accuracy is that of the saved model loaded back as the registry
loads it. Prints a table and writes benchmarks/results/train_methods.json.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pipeline  # noqa: F401,I001  (its environment, OpenMP settings included, before torch loads)
import torch

from benchmarks.sst2_slice import machine, saved_model_accuracy, sst2_slice, table
from pipeline.config import METHODS, load_config
from pipeline.errors import TunegateError
from pipeline.training.loop import train_model

RESULTS = Path(__file__).parent / "results" / "train_methods.json"


def run_method(method: str, rows: int, overrides: list[str], out: Path) -> dict[str, object]:
    """Train one method (in this process) and measure it."""
    config = load_config(Path.cwd(), [f"train.method={method}", *overrides])
    data = sst2_slice(config, rows)
    started = time.perf_counter()
    try:
        trained = train_model(config, data["train"], data["validation"], out)
    except TunegateError as exc:
        return {"method": method, "refused": str(exc)}
    wall = time.perf_counter() - started
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"method": method, "trainable_params": trained.trainable_params,
            "test_accuracy": saved_model_accuracy(trained.model_dir, config, data["test"]),
            "validation_accuracy": trained.validation_metrics["accuracy"],
            "train_samples_per_s": trained.train_samples_per_second, "train_s": trained.train_seconds,
            "wall_s": wall, "peak_memory_mb": peak / 2**20, "precision": trained.precision,
            "learning_rate": config.train.method_learning_rate, "best_step": trained.best_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000, help="SST-2 training phrases (stratified sample)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a params.yaml override for every method, e.g. -S train.batch_size=16")
    parser.add_argument("--child", help=argparse.SUPPRESS)   # run one method here and print its row as JSON
    args = parser.parse_args()
    overrides = [f"train.epochs={args.epochs}", *args.overrides]
    if args.child:
        with tempfile.TemporaryDirectory() as out:
            print(json.dumps(run_method(args.child, args.rows, overrides, Path(out))))
        return

    results = []
    for method in args.methods:
        command = [sys.executable, "-m", "benchmarks.train_methods", "--child", method, "--rows", str(args.rows),
                   "--epochs", str(args.epochs), *(f"-S{o}" for o in args.overrides)]
        child = subprocess.run(command, capture_output=True, text=True)
        if child.returncode != 0:
            sys.exit(f"{method} failed:\n{child.stderr[-3000:]}")
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(f"{method}: {results[-1]}", file=sys.stderr)
    report = {"rows": args.rows, "epochs": args.epochs, "overrides": args.overrides, "machine": machine(),
              "methods": results}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    trained = [r for r in results if "refused" not in r]
    print(table([{"method": r["method"], "trainable params": f"{r['trainable_params']:,}",
                  "test acc": r["test_accuracy"], "samples/s": r["train_samples_per_s"], "train s": r["train_s"],
                  "wall s": r["wall_s"], "peak MB": round(r["peak_memory_mb"])} for r in trained]))
    for r in results:
        if "refused" in r:
            print(f"{r['method']}: refused: {r['refused']}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
