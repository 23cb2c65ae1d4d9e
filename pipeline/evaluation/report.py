"""The evaluation report: JSON for machines, one HTML page with its plots for people."""
from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import jinja2
import matplotlib

matplotlib.use("Agg")   # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

TEMPLATE = Path(__file__).parent / "resources" / "evaluation_report.html.j2"


def plot_confusion_matrix(task: dict[str, Any], path: Path) -> None:
    names = [task["labels"][value] for value in sorted(task["labels"])]
    figure, axes = plt.subplots(figsize=(4, 3.5))
    ConfusionMatrixDisplay(np.array(task["confusion_matrix"]), display_labels=names).plot(
        ax=axes, cmap="Blues", colorbar=False, values_format="d")
    axes.set_title(f"Test split, {task['rows']} rows")
    _save(figure, path)


def plot_general(general: dict[str, dict[str, Any]], path: Path) -> None:
    names = list(general)
    x = np.arange(len(names))
    figure, axes = plt.subplots(figsize=(max(4.0, 1.5 + 1.6 * len(names)), 3.5))
    for offset, side in ((-0.2, "base"), (0.2, "candidate")):
        bars = axes.bar(x + offset, [general[n][side] for n in names], width=0.4, label=side)
        axes.bar_label(bars, fmt="%.3f", fontsize=8)
    axes.set_xticks(x, [f"{n}\n({general[n]['score']})" for n in names])
    axes.set_ylim(0, 1.15)
    axes.legend(loc="upper center", ncols=2, fontsize=8)
    axes.set_title("General benchmarks")
    _save(figure, path)


def plot_counterfactual(counterfactual: dict[str, Any], path: Path) -> None:
    attributes = counterfactual["attributes"]
    figure, panels = plt.subplots(1, len(attributes), figsize=(3.2 * len(attributes), 3.5), squeeze=False)
    for axes, gap in zip(panels[0], attributes):
        bars = axes.bar(list(gap["groups"]), list(gap["groups"].values()), color=["tab:purple", "tab:olive"])
        axes.bar_label(bars, fmt="%.3f", fontsize=8)
        axes.set_ylim(0, 1.05)
        axes.set_title(f"{gap['attribute']}: gap {gap['gap']:.3f}, p {gap['p_value']:.2g}", fontsize=9)
    panels[0][0].set_ylabel("mean positive-class probability")
    figure.suptitle(f"Counterfactual sentences ({counterfactual['name']})", fontsize=10)
    _save(figure, path)


def plot_groups(categories: list[dict[str, Any]], path: Path) -> None:
    compared = [c for c in categories if c["by_group"]]
    figure, panels = plt.subplots(1, len(compared), figsize=(3.6 * len(compared), 3.5), squeeze=False)
    for axes, category in zip(panels[0], compared):
        names = list(category["by_group"])
        x = np.arange(len(names))
        for offset, metric in ((-0.2, "accuracy"), (0.2, "selection_rate")):
            bars = axes.bar(x + offset, [category["by_group"][n][metric] for n in names], width=0.4,
                            label=metric.replace("_", " "))
            axes.bar_label(bars, fmt="%.2f", fontsize=7)
        axes.set_xticks(x, [f"{n}\n({category['rows'][n]} rows)" for n in names], fontsize=8)
        axes.set_ylim(0, 1.15)
        axes.set_title(f"{category['category']}: DP diff {category['dp_difference']:.3f}, "
                       f"EO diff {category['eo_difference']:.3f}", fontsize=9)
    panels[0][0].legend(loc="upper center", ncols=2, fontsize=8)
    figure.suptitle("Test split by identity group", fontsize=10)
    _save(figure, path)


def _save(figure: plt.Figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _json_safe(value: Any) -> Any:
    """NaN (e.g. a p-value of identical samples) is not JSON: write null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_report(report_dir: Path, metrics: dict[str, float], details: dict[str, Any]) -> tuple[Path, list[Path]]:
    """evaluation.json, the plots as PNG and evaluation.html (plots embedded) in report_dir."""
    report_dir.mkdir(parents=True, exist_ok=True)
    # labelled rows have a confusion matrix and identity groups; free-form responses (samples) have neither
    plots = {"confusion_matrix.png": (plot_confusion_matrix, details["task"])} if "labels" in details["task"] else {}
    if details.get("general"):
        plots["general_base_vs_candidate.png"] = (plot_general, details["general"])
    if details.get("groups") and any(c["by_group"] for c in details["groups"]["categories"]):
        plots["groups.png"] = (plot_groups, details["groups"]["categories"])
    if details.get("counterfactual"):
        plots["counterfactual_groups.png"] = (plot_counterfactual, details["counterfactual"])
    images = []
    for name, (plot, data) in plots.items():
        plot(data, report_dir / name)
        images.append(report_dir / name)
    json_path = report_dir / "evaluation.json"
    json_path.write_text(json.dumps(_json_safe({"metrics": metrics, **details}), indent=2), encoding="utf-8")
    html = jinja2.Template(TEMPLATE.read_text(encoding="utf-8"), autoescape=True).render(
        metrics=metrics, details=details,
        images={p.name: base64.b64encode(p.read_bytes()).decode() for p in images})
    html_path = report_dir / "evaluation.html"
    html_path.write_text(html, encoding="utf-8")
    return json_path, [json_path, html_path, *images]
