"""Model cards in the Hugging Face format: YAML metadata (base model, datasets, metrics, model-index) and the
sections a reviewer reads, written with huggingface_hub's ModelCard classes (offline: nothing is pushed)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from pipeline.config import Config
from pipeline.governance.gates import BIAS_GAP_SUFFIX
from pipeline.governance.registration import DESCRIPTION_END
from pipeline.tasks import task_type

TEMPLATE = Path(__file__).parent / "resources" / "model_card.md.j2"
TASK_METRIC_PREFIX = "test_"
# The section of params.yaml's train that each method reads, as the comment on train.method says.
METHOD_SECTIONS = {"full": "layers", "freeze": "layers", "lora": "lora", "dora": "lora", "qlora": "lora",
                   "ia3": "ia3", "prompt_tuning": "prompt_tuning", "prefix_tuning": "prefix_tuning"}
SUMMARY_SECTIONS = ("Intended use and limits",)   # of the template: what a reviewer reads besides the gates
GROUP_GAP_SUFFIX = "_difference"   # group_<category>_dp_difference and their largest (pipeline.evaluation.suites)


@dataclass(frozen=True)
class CardInputs:
    version: str                      # models:/NAME/N
    lineage: dict[str, Any]           # pipeline.governance.lineage.build_record's
    data_version: str
    split_rows: dict[str, int]        # split name -> rows
    metrics: dict[str, float]         # the version's run metrics
    evaluation: dict[str, Any]        # EvaluationReport.details
    audit: dict[str, Any]             # pipeline.audit.report.as_json
    decision: dict[str, Any]          # the promote step's decision record (decision.json)


def _eval_results(config: Config, inputs: CardInputs) -> list[EvalResult]:
    dataset = Path(config.data.test or config.data.train).parent.name or "data"
    return [EvalResult(task_type=task_type(config).pipeline_tag, dataset_type=dataset, dataset_name=dataset, dataset_split="test",
                       dataset_revision=inputs.data_version, metric_type=name.removeprefix(TASK_METRIC_PREFIX),
                       metric_value=value)
            for name, value in _task_metrics(inputs.metrics).items()]


def _task_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {name: value for name, value in sorted(metrics.items()) if name.startswith(TASK_METRIC_PREFIX)}


def _slices(audit: dict[str, Any]) -> list[dict[str, str]]:
    """The audit's identity slices that occur in the data (those that do not are a known limitation)."""
    def rate(value: float | None, sign: str = "") -> str:
        return "-" if value is None or math.isnan(value) else f"{value:{sign}.3f}"

    return [{"file": Path(file["source"]).name, "slice": f"{row['category']}: {row['group']}", "rows": row["rows"],
             "rate": rate(row["positive_rate"]), "rest": rate(row["rest_positive_rate"]), "gap": rate(row["gap"], "+")}
            for file in audit["files"] for row in file.get("slices") or [] if row["rows"]]


def _limitations(audit: dict[str, Any]) -> list[str]:
    return [f"{check['source']}: {check['check']} ({check['column']}): {check['detail']}"
            for file in audit["files"] for check in file["checks"] if check["status"] == "warning"]


def build_card(config: Config, inputs: CardInputs) -> ModelCard:
    model = inputs.lineage.get("model", {})
    base = model.get("parent") or model.get("base_model", config.model.base)
    base_line = (f"Warm start from the registered version `{model['parent']}`; its own lineage names its base."
                 if "parent" in model else f"`{base}`, weights sha256 `{model.get('weights_sha256', '?')}`.")
    metrics = inputs.metrics
    task_metrics = _task_metrics(metrics)
    card_data = ModelCardData(
        model_name=inputs.version, base_model=base, library_name="transformers",
        pipeline_tag=task_type(config).pipeline_tag,
        datasets=sorted({Path(p).parent.name for p in (config.data.train, config.data.validation, config.data.test)
                         if p}),
        metrics=[name.removeprefix(TASK_METRIC_PREFIX) for name in task_metrics],
        eval_results=_eval_results(config, inputs) or None, tags=["tunegate", config.train.method])
    hardware = inputs.lineage.get("hardware", {})
    summary, intended_use = task_type(config).purpose(config)
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE),
        title=inputs.version, version=inputs.version, method=config.train.method, base=base, base_line=base_line,
        summary=summary, intended_use=intended_use,
        hyperparameters=_hyperparameters(config), seed=config.train.seed, epochs=config.train.epochs,
        precision=hardware.get("precision", "?"), hardware=hardware.get("name", "?"),
        params_hash=config.params_hash(), commit=inputs.lineage.get("code", {}).get("git_commit", "?"),
        data_version=inputs.data_version, split_rows=inputs.split_rows, task_metrics=task_metrics,
        general=[{"name": name, **row} for name, row in inputs.evaluation.get("general", {}).items()],
        slices=_slices(inputs.audit),
        gaps={name: value for name, value in sorted(metrics.items())
              if name.endswith((BIAS_GAP_SUFFIX, GROUP_GAP_SUFFIX))},
        decision=inputs.decision, limitations=_limitations(inputs.audit), description_end=DESCRIPTION_END)


def _hyperparameters(config: Config) -> dict[str, Any]:
    train = config.train
    name = METHOD_SECTIONS[train.method]
    return {"method": train.method, "learning rate": train.method_learning_rate, "batch size": train.batch_size,
            "epochs": train.epochs, "weight decay": train.weight_decay, "warm-up ratio": train.warmup_ratio,
            "scheduler": train.lr_scheduler, "max grad norm": train.max_grad_norm, "L2-SP": train.l2sp,
            "WiSE-FT": train.wise_ft, "max length": config.model.max_length,
            **{f"{name}.{key}": ", ".join(value) if isinstance(value, list) else value
               for key, value in getattr(train, name).model_dump().items()}}


def card_summary(card: str) -> str:
    """A card's head for a reviewer in a hurry: its title, what the model is, and its intended use and limits,
    without the YAML metadata (the gates' table, which the card also holds, the reviewer sees beside it)."""
    head, *sections = ModelCard(card).text.split("\n## ")
    return "\n\n## ".join([head.strip(), *(s.strip() for s in sections if s.startswith(SUMMARY_SECTIONS))])
