"""Forgetting of LoRA vs full fine-tuning on SST-2, through the evaluation suite.

    python -m benchmarks.forgetting [--rows 4000] [-S key=value ...]

Trains the repo's params.yaml LoRA run and a full fine-tuning run (learning rate 5e-5, the usual
one for full BERT-sized fine-tuning) on the same stratified sample of SST-2 train, then evaluates
the base model and both candidates with `evaluate_model`: task metrics, STS-B Spearman and
forgetting, EEC gaps. Prints a table and writes benchmarks/results/forgetting.json.
The base model's classification head is untrained (random), so its task and EEC rows say nothing
about the task: they are listed for completeness; its STS-B score is the reference.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pipeline  # noqa: F401  (offline, quiet)
from pipeline.config import load_config
from pipeline.tasks import evaluate_model
from pipeline.training.models import resolve_model_path
from pipeline.data.split import make_splits
from pipeline.training.loop import train_model

RESULTS = Path(__file__).parent / "results" / "forgetting.json"
RUNS = {"lora": [], "full": ["train.method=full", "train.learning_rate.full=5e-5"]}
SHOWN = ["test_accuracy", "test_f1_macro", "test_ece", "general_stsb_spearman", "forgetting_stsb", "retained_stsb",
         "eec_gender_gap", "eec_gender_p_value", "eec_race_gap", "eec_race_p_value", "group_dp_difference",
         "group_eo_difference"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000, help="training rows (stratified sample of SST-2 train)")
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="params override for both runs")
    args = parser.parse_args()
    out = Path.cwd() / "outputs" / "benchmarks" / "forgetting"
    configs = {}
    for name, overrides in {"base": [], **RUNS}.items():
        config = load_config(Path.cwd(), [*args.overrides, *overrides])
        configs[name] = config.model_copy(update={"split": config.split.model_copy(update={"max_train_rows": args.rows})})
    splits = make_splits(configs["base"])
    results = {}
    for name, config in configs.items():
        if name == "base":
            model_dir, train = resolve_model_path(config.model.base), {}
        else:
            trained = train_model(config, splits["train"], splits["validation"], out / name)
            model_dir = trained.model_dir
            train = {"rows": len(splits["train"]), "method": config.train.method,
                     "learning_rate": config.train.learning_rate, "epochs": config.train.epochs, **trained.as_metrics()}
        report = evaluate_model(config, model_dir, splits["test"], out / name / "report")
        results[name] = {"metrics": report.metrics, "seconds": report.details["seconds"], "train": train,
                         "report": str(report.path)}

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    width = max(map(len, SHOWN))
    print(f"{'':<{width}}" + "".join(f"{name:>10}" for name in results))
    for metric in SHOWN:
        values = (r["metrics"].get(metric, float("nan")) for r in results.values())
        print(f"{metric:<{width}}" + "".join(f"{value:>10.4f}" for value in values))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
