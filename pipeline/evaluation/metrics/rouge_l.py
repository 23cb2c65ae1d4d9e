"""ROUGE-L as an `evaluate` metric module, loaded by path (evaluate.load("rouge") would fetch it from the hub).

ROUGE-L (Lin 2004): the longest common subsequence (LCS) of a prediction's and its reference's words;
precision = LCS / prediction words, recall = LCS / reference words, F = their harmonic mean. Computed by
Google's rouge-score package (its tokenizer: lower case, letters and digits only); reported is the mean F.
"""
import datasets
import evaluate
from rouge_score import rouge_scorer


class RougeL(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Mean ROUGE-L F-measure of each prediction against its reference (longest common "
                        "subsequence of words).",
            citation="Lin, C.-Y. (2004). ROUGE: A Package for Automatic Evaluation of Summaries. ACL Workshop "
                     "Text Summarization Branches Out.",
            inputs_description="predictions and references: texts, one reference per prediction; use_stemmer: "
                               "Porter-stem words before matching",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, use_stemmer: bool = False):
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
        scores = [scorer.score(reference, prediction)["rougeL"].fmeasure
                  for prediction, reference in zip(predictions, references)]
        return {"rouge_l": sum(scores) / len(scores)}
