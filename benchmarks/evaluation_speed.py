"""How long evaluating one candidate takes: test split, STS-B (candidate, and the base once), EEC.

    python -m benchmarks.evaluation_speed [MODEL_DIR]     # default: the base model's architecture and weights

Inference cost depends on the architecture, not the weights, so the base model stands in for the
default run's candidate (a LoRA fine-tune merged into all-MiniLM-L6-v2) when no MODEL_DIR is given.
Runs twice: with an empty base-score cache (the first evaluation for a base model) and with it
filled (every later one). Prints a table and writes benchmarks/results/evaluation_speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

import pipeline  # noqa: F401  (offline, quiet)
from pipeline.config import load_config
from pipeline.tasks import evaluate_model
from pipeline.training.models import resolve_model_path
from pipeline.data.split import make_splits

RESULTS = Path(__file__).parent / "results" / "evaluation_speed.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?", type=Path)
    args = parser.parse_args()
    config = load_config(Path.cwd())
    model_dir = args.model_dir or resolve_model_path(config.model.base)
    test = make_splits(config)["test"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        config = config.model_copy(update={"evaluate": config.evaluate.model_copy(update={"base_cache_dir": tmp})})
        for cache in ("empty", "filled"):
            load_before, cpu_before, started = os.getloadavg()[0], time.process_time(), time.perf_counter()
            report = evaluate_model(config, model_dir, test, Path(tmp) / f"report-{cache}")
            rows.append({"base cache": cache, "wall_s": round(time.perf_counter() - started, 1),
                         "cpu_s": round(time.process_time() - cpu_before, 1), "load_avg_before": load_before,
                         **report.details["seconds"]})
    counterfactual = config.evaluate.counterfactual
    result = {"model_dir": str(model_dir), "test_rows": len(test), "torch_threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
              "benchmarks": [b.path for b in config.evaluate.general],
              "counterfactual": counterfactual.path if counterfactual else None, "runs": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    columns = list(rows[0])
    print("  ".join(f"{c:>12}" for c in columns))
    for row in rows:
        print("  ".join(f"{row[c]:>12}" for c in columns))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
