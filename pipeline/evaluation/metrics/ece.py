"""Expected calibration error as an `evaluate` metric module, loaded by path.

ECE (Naeini et al. 2015; Guo et al. 2017): predictions are put in equal-width bins of their
confidence (the top class probability); ECE is the bins' mean |accuracy - mean confidence|,
weighted by the share of predictions in each bin. 0 is perfectly calibrated.
"""
import datasets
import evaluate
import numpy as np


class ExpectedCalibrationError(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Expected calibration error of the top-class confidence, over n_bins equal-width bins.",
            citation="Guo, C. et al. (2017). On Calibration of Modern Neural Networks. ICML.",
            inputs_description="predictions: class probabilities, one list per example; references: integer class ids; "
                               "n_bins: number of confidence bins",
            features=datasets.Features({"predictions": datasets.List(datasets.Value("float64")),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, n_bins: int = 10):
        if not isinstance(n_bins, int) or n_bins < 1:
            raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
        probs = np.asarray(predictions, dtype=np.float64)
        confidence = probs.max(axis=1)
        correct = probs.argmax(axis=1) == np.asarray(references)
        # Bin b holds confidences in (b/n, (b+1)/n]; a confidence of exactly 0 cannot occur for a top class.
        bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
        ece = sum(abs(correct[bins == b].mean() - confidence[bins == b].mean()) * np.mean(bins == b)
                  for b in np.unique(bins))
        return {"ece": float(ece)}
