"""The causal LM (SmolLM2-135M-Instruct) on SST-2 as instructions: the base model, LoRA and full fine-tuning.

    python -m benchmarks.causal_lm [--rows 400] [--eval-rows 200] [--blimp-pairs 670] [--crows-pairs 300]

Each model runs in its own process (so that its peak memory is its own): trained with `train_model` on
the same stratified sample of SST-2 train (one epoch), evaluated with the causal LM's `evaluate_model`:
the generated and the scored label on a stratified test subset, BLiMP (and forgetting), CrowS-Pairs.
Prints a table and writes benchmarks/results/causal_lm.json. Pass 0 as a size for the whole file.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pipeline  # noqa: F401  (offline, quiet)

RESULTS = Path(__file__).parent / "results" / "causal_lm.json"
OUT = Path.cwd() / "outputs" / "benchmarks" / "causal_lm"
RUNS = {"base": None, "lora": ["train.method=lora"], "full": ["train.method=full"]}
SHOWN = ["test_accuracy", "test_scored_accuracy", "general_blimp_accuracy", "forgetting_blimp", "crows_pairs_score",
         "crows_pairs_gap"]


def run_one(name: str, args: argparse.Namespace) -> dict:
    from pipeline.config import load_config
    from pipeline.training.models import base_model_dir
    from pipeline.data.split import make_splits
    from pipeline.tasks import evaluate_model
    from pipeline.training.loop import train_model

    sizes = {"task.causal_lm.eval_rows": args.eval_rows or None,
             "task.causal_lm.blimp.pairs": args.blimp_pairs or None,
             "task.causal_lm.crows_pairs.pairs": args.crows_pairs or None, "train.epochs": 1}
    overrides = ["task.type=causal_lm", *(f"{k}={json.dumps(v)}" for k, v in sizes.items()), *(RUNS[name] or [])]
    config = load_config(Path.cwd(), overrides)
    config = config.model_copy(update={"split": config.split.model_copy(update={"max_train_rows": args.rows})})
    splits = make_splits(config)
    out = OUT / name
    train: dict = {}
    if RUNS[name] is None:
        model_dir = base_model_dir(config)
    else:
        trained = train_model(config, splits["train"], splits["validation"], out)
        model_dir = trained.model_dir
        train = {"rows": len(splits["train"]), "method": config.train.method,
                 "learning_rate": config.train.method_learning_rate, **trained.as_metrics()}
    started = time.perf_counter()
    report = evaluate_model(config, model_dir, splits["test"], out / "report")
    return {"metrics": report.metrics, "seconds": report.details["seconds"],
            "evaluate_seconds": time.perf_counter() - started, "train": train,
            # ru_maxrss is in KiB on Linux: this process's peak resident memory, loading and training included
            "peak_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "report": str(report.path)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400, help="training rows (stratified sample of SST-2 train)")
    parser.add_argument("--eval-rows", type=int, default=200, help="test rows (stratified; 0: all 1,821)")
    parser.add_argument("--blimp-pairs", type=int, default=670, help="BLiMP pairs (stratified; 0: all 6,700)")
    parser.add_argument("--crows-pairs", type=int, default=300, help="CrowS-Pairs pairs (stratified; 0: all 1,508)")
    parser.add_argument("--only", choices=list(RUNS), help=argparse.SUPPRESS)   # one model, in this process
    args = parser.parse_args()
    if args.only:
        result = json.dumps(run_one(args.only, args))
        # also on disk: a long benchmark's finished runs survive an interrupted parent
        (OUT / args.only / "result.json").write_text(result, encoding="utf-8")
        print(result)
        return
    results = {}
    for name in RUNS:
        command = [sys.executable, "-m", "benchmarks.causal_lm", "--only", name, "--rows", str(args.rows),
                   "--eval-rows", str(args.eval_rows), "--blimp-pairs", str(args.blimp_pairs),
                   "--crows-pairs", str(args.crows_pairs)]
        done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)   # its progress to stderr
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name}: done", file=sys.stderr)
    results["settings"] = vars(args) | {"only": None}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    rows = [*SHOWN, "train_samples_per_second", "peak_memory_mib"]
    width = max(map(len, rows))
    print(f"{'':<{width}}" + "".join(f"{name:>10}" for name in RUNS))
    for metric in rows:
        values = [results[name]["metrics"].get(metric, results[name]["train"].get(metric, results[name].get(metric)))
                  for name in RUNS]
        print(f"{metric:<{width}}" + "".join(f"{v:>10.4f}" if v is not None else f"{'-':>10}" for v in values))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
