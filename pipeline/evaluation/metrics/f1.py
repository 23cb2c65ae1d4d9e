"""Macro-averaged F1 as an `evaluate` metric module, loaded by path."""
import datasets
import evaluate
from sklearn.metrics import f1_score


class F1(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Macro-averaged F1: the unweighted mean of each class's F1.",
            citation="",
            inputs_description="predictions and references: integer class ids",
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {"f1_macro": float(f1_score(references, predictions, average="macro"))}
