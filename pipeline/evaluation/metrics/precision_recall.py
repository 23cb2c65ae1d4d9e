"""Per-class precision and recall as an `evaluate` metric module, loaded by path."""
import datasets
import evaluate
from sklearn.metrics import precision_recall_fscore_support


class PrecisionRecall(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Precision and recall of each class, named precision_<class id> and recall_<class id>; "
                        "a class never predicted has precision 0.",
            citation="",
            inputs_description="predictions and references: integer class ids",
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        classes = sorted(set(references) | set(predictions))
        precision, recall, _, _ = precision_recall_fscore_support(references, predictions, labels=classes,
                                                                  average=None, zero_division=0)
        return {**{f"precision_{c}": float(p) for c, p in zip(classes, precision)},
                **{f"recall_{c}": float(r) for c, r in zip(classes, recall)}}
