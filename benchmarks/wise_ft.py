"""WiSE-FT's trade from one training: a setting's fine-tuned encoder taken back toward the base at several shares.

    python -m benchmarks.wise_ft [--setting NAME] [--shares 1 0.9 0.8 ...] [--rows N]

Trains one of benchmarks/frontier.py's settings (its split and evaluation; default the full-quality profile) with
train.wise_ft 1, then applies what train.wise_ft does after training (interpolate_from_start, toward the base) to the
saved model at each share, and scores each model on SST-2 validation (dev, the split that picks checkpoints) and
test accuracy and STS-B retention, as the frontier does. The frontier's `params-full.yaml wise_ft 0.8` trains with
the setting itself, end to end. Prints a table; writes benchmarks/results/wise_ft.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pipeline  # noqa: F401,I001  (offline, quiet, OpenMP threads that sleep: before torch loads)
from benchmarks.frontier import SETTINGS, setting_config
from benchmarks.sst2_slice import machine, saved_model_accuracy, table
from pipeline.data.split import make_splits
from pipeline.tasks import base_model, evaluate_model
from pipeline.training.loop import interpolate_from_start, save_for_serving, train_model
from pipeline.training.models import load_classifier, load_tokenizer

RESULTS = Path(__file__).parent / "results" / "wise_ft.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", default="params-full.yaml", choices=list(SETTINGS), help="what trains")
    parser.add_argument("--shares", nargs="+", type=float, default=[1.0, 0.9, 0.8, 0.7, 0.6, 0.5],
                        help="train.wise_ft values: the share of the fine-tuned encoder kept")
    parser.add_argument("--rows", type=int, help="training rows (default: the setting's split)")
    args = parser.parse_args()
    out = Path.cwd() / "outputs" / "benchmarks" / "wise-ft" / args.setting.replace(" ", "_")
    overrides = [*SETTINGS[args.setting], "train.wise_ft=1"]
    config = setting_config(overrides, args.rows)
    splits = make_splits(config)
    trained = train_model(config, splits["train"], splits["validation"], out / "train")
    start, tokenizer = base_model(config).load(None), load_tokenizer(trained.model_dir)
    points = []
    for share in args.shares:
        model_dir = out / f"wise_ft-{share}"
        model = interpolate_from_start(load_classifier(trained.model_dir), start, share)
        save_for_serving(model, tokenizer, model_dir, merge_adapter=True, base_model=config.model.base)
        metrics = evaluate_model(config, model_dir, splits["test"], model_dir / "report").metrics
        points.append({"wise_ft": share, "validation_accuracy": saved_model_accuracy(model_dir, config,
                                                                                      splits["validation"]),
                       "sst2_test_accuracy": metrics["test_accuracy"], "stsb_retained": metrics["retained_stsb"],
                       "stsb_forgetting": metrics["forgetting_stsb"]})
        print(table(points[-1:]), flush=True)
    results = {"setting": args.setting, "overrides": overrides, "rows": len(splits["train"]),
               "train_s": trained.train_seconds, "best_step": trained.best_step, "points": points,
               "machine": machine()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(table(points))
    print(f"{args.setting}, {len(splits['train']):,} rows, trained once ({trained.train_seconds / 60:.1f} min); "
          f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
