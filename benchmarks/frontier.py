"""The accuracy-forgetting frontier: SST-2 test accuracy against STS-B retention and train time, per method and setting.

    python -m benchmarks.frontier [--only NAME ...] [--rows N] [--fresh]

Each setting (SETTINGS: params overrides) trains with train_model, as the flow does, on the same split (params.yaml's
split section, or --rows training rows of it; the full-quality profile names its own split: all rows), then
evaluate_model scores the saved model as the registry loads it: SST-2 test accuracy and STS-B Spearman of the
mean-pooled encoder (retention = candidate / base). Settings run one after the other in this process, side by side on
one machine; train time is wall and CPU seconds (CPU seconds are not inflated by another job on the machine). Each
finished setting is written at once to benchmarks/results/frontier.json, and a run again skips the settings there with
the same overrides and rows (--fresh: measure all again). Prints a table; draws benchmarks/results/frontier.png
(accuracy against retention, the Pareto front joined, train time in the labels).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pipeline  # noqa: F401,I001  (offline, quiet, OpenMP threads that sleep: before torch loads)
from benchmarks.sst2_slice import machine, table
from pipeline.config import Config, SplitConfig, apply_override, load_config, profile_overrides
from pipeline.data.split import make_splits
from pipeline.tasks import evaluate_model
from pipeline.training.loop import train_model

RESULTS = Path(__file__).parent / "results" / "frontier.json"
PLOT = RESULTS.with_suffix(".png")
GOAL_ACCURACY, GOAL_RETENTION = 0.90, 0.95   # issue 19's goals for the default run
# Only what the frontier reads: the task's accuracy and the general benchmark (the EEC bias suite takes ~25 s a model).
EVALUATION = ["evaluate.metrics=[accuracy]", "evaluate.metric_options={}", "evaluate.counterfactual=null"]


def lora(learning_rate: str, l2sp: str = "0", *extra: str) -> list[str]:
    """A LoRA setting, its rate and L2-SP written out: the settings must not move when params.yaml's defaults do."""
    return ["train.method=lora", f"train.learning_rate.lora={learning_rate}", f"train.l2sp={l2sp}", *extra]


def full(learning_rate: str, l2sp: str = "0") -> list[str]:
    return ["train.method=full", f"train.learning_rate.full={learning_rate}", f"train.l2sp={l2sp}"]


FULL_PROFILE = profile_overrides(Path(__file__).parents[1] / "params-full.yaml")
# LoRA: r 16 on every linear layer (query, key, value, dense) unless named; one epoch of params.yaml's split.
SETTINGS: dict[str, list[str]] = {
    "lora lr 1e-3": lora("1e-3"),
    "lora lr 1e-3 l2sp 0.01": lora("1e-3", "0.01"),
    "lora lr 1e-3 l2sp 0.1": lora("1e-3", "0.1"),
    "lora lr 5e-4": lora("5e-4"),
    "lora lr 3e-4": lora("3e-4"),
    "lora lr 5e-4 l2sp 0.01": lora("5e-4", "0.01"),
    "lora lr 5e-4 l2sp 0.003": lora("5e-4", "0.003"),
    "lora r8 query,value lr 1e-3": lora("1e-3", "0", "train.lora.r=8", "train.lora.alpha=16",
                                        "train.lora.target_modules=[query, value]"),
    "full lr 5e-5": full("5e-5"),
    "full lr 5e-5 l2sp 0.1": full("5e-5", "0.1"),
    "full lr 2e-5": full("2e-5"),
    # WiSE-FT: the encoder taken back toward the base after training
    "full lr 5e-5 wise_ft 0.7": [*full("5e-5"), "train.wise_ft=0.7"],
    "lora lr 5e-4 wise_ft 0.9": lora("5e-4", "0", "train.wise_ft=0.9"),
    # the full-quality profile, for a team with more time (`tunegate retrain -P params-full.yaml`)
    "params-full.yaml": FULL_PROFILE,
    "params-full.yaml wise_ft 0.8": [*FULL_PROFILE, "train.wise_ft=0.8"],
}


def without_split(overrides: list[str]) -> list[str]:
    return [override for override in overrides if not override.startswith("split.")]


def setting_config(overrides: list[str], rows: int | None) -> Config:
    """params.yaml with a setting's overrides and the frontier's evaluation. The benchmark splits the data itself, not
    through DVC: a setting's split keys apply here, `rows` over them."""
    config = load_config(Path.cwd(), [*without_split(overrides), *EVALUATION])
    split = config.split.model_dump()
    for override in overrides:
        if override.startswith("split."):
            apply_override(split, override.removeprefix("split."))
    if rows is not None:
        split["max_train_rows"] = rows
    return config.model_copy(update={"split": SplitConfig.model_validate(split)})


def measure(name: str, overrides: list[str], rows: int | None, out: Path) -> dict[str, object]:
    config = setting_config(overrides, rows)
    splits = make_splits(config)
    started = time.perf_counter()
    trained = train_model(config, splits["train"], splits["validation"], out / name.replace(" ", "_"))
    report = evaluate_model(config, trained.model_dir, splits["test"], out / name.replace(" ", "_") / "report")
    metrics = report.metrics
    return {"setting": name, "overrides": overrides, "rows": len(splits["train"]),
            "sst2_test_accuracy": metrics["test_accuracy"], "stsb_spearman": metrics["general_stsb_spearman"],
            "stsb_retained": metrics["retained_stsb"], "stsb_forgetting": metrics["forgetting_stsb"],
            "train_s": trained.train_seconds, "train_cpu_s": trained.train_cpu_seconds,
            "best_step": trained.best_step, "precision": trained.precision,
            "wall_s": time.perf_counter() - started}


def pareto(points: list[dict[str, object]]) -> list[dict[str, object]]:
    """The settings no other beats on both accuracy and retention, by retention."""
    def score(point: dict[str, object]) -> tuple[float, float]:
        return point["sst2_test_accuracy"], point["stsb_retained"]

    def dominated(point: dict[str, object]) -> bool:
        return any(score(other) != score(point) and all(a >= b for a, b in zip(score(other), score(point)))
                   for other in points)

    return sorted((point for point in points if not dominated(point)), key=lambda point: point["stsb_retained"])


def plot(points: list[dict[str, object]], default: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 6.5))
    rows = [point["rows"] for point in points]
    common_rows = max(set(rows), key=rows.count)
    front = pareto(points)
    axes.plot([p["stsb_retained"] for p in front], [p["sst2_test_accuracy"] for p in front], "--", color="grey",
              label="frontier")
    labelled: list[tuple[float, float]] = []
    for point in sorted(points, key=lambda point: point["setting"] == default):   # the default's star on top
        is_default = point["setting"] == default
        x, y = point["stsb_retained"], point["sst2_test_accuracy"]
        axes.scatter(x, y, s=150 if is_default else 60, marker="*" if is_default else "o",
                     color="tab:red" if is_default else "tab:blue", zorder=4 if is_default else 3)
        other_rows = f", {point['rows']:,} rows" if point["rows"] != common_rows else ""
        # a label near an earlier one goes a line below it
        below = sum(abs(x - other_x) < 0.03 and abs(y - other_y) < 0.003 for other_x, other_y in labelled)
        labelled.append((x, y))
        axes.annotate(f"{point['setting']} ({point['train_s'] / 60:.1f} min{other_rows})", (x, y),
                      textcoords="offset points", xytext=(5, 4 - 12 * below), fontsize=8)
    axes.axhline(GOAL_ACCURACY, color="tab:green", linewidth=0.8, linestyle=":")
    axes.axvline(GOAL_RETENTION, color="tab:green", linewidth=0.8, linestyle=":",
                 label=f"goal: accuracy {GOAL_ACCURACY}, retention {GOAL_RETENTION:.0%}")
    axes.set_xlabel("STS-B retention (candidate / base Spearman)")
    axes.set_ylabel("SST-2 test accuracy")
    axes.set_title(f"all-MiniLM-L6-v2 on SST-2, {common_rows:,} rows: accuracy vs forgetting "
                   f"(red star: params.yaml)", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), help="settings to measure (default: all)")
    parser.add_argument("--rows", type=int, help="training rows (default: params.yaml's split.max_train_rows)")
    parser.add_argument("--fresh", action="store_true", help="measure every setting again")
    args = parser.parse_args()
    out = Path.cwd() / "outputs" / "benchmarks" / "frontier"
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() and not args.fresh else {"points": []}
    results["machine"] = machine()
    for name in args.only or SETTINGS:
        overrides = SETTINGS[name]
        kept = [p for p in results["points"] if p["setting"] == name and p["overrides"] == overrides
                and (args.rows is None or p["rows"] == args.rows)]
        if kept:
            print(f"{name}: measured already ({RESULTS})")
            continue
        point = measure(name, overrides, args.rows, out)
        results["points"] = [p for p in results["points"] if p["setting"] != name] + [point]
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(table([point]), flush=True)
    default = load_config(Path.cwd())
    default_name = next((name for name, overrides in SETTINGS.items()
                         if load_config(Path.cwd(), without_split(overrides)).train == default.train), None)
    results["default"] = default_name
    results["frontier"] = [p["setting"] for p in pareto(results["points"])]
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    plot(results["points"], default_name, PLOT)
    print(table([{k: p[k] for k in ("setting", "rows", "sst2_test_accuracy", "stsb_retained", "train_s",
                                    "train_cpu_s")} | {"frontier": p["setting"] in results["frontier"]}
                 for p in results["points"]]))
    print(f"params.yaml is {default_name!r}; wrote {RESULTS} and {PLOT}")


if __name__ == "__main__":
    main()
