"""Drift of a new data batch against the data the champion was trained on: label balance, text length,
vocabulary overlap and a text-content drift score, each with a threshold and a severity.

The statistics are Evidently's defaults for these column types (Jensen-Shannon distance for categories and
binned numbers; a domain classifier's ROC AUC for text), computed with scipy and scikit-learn: Evidently
0.7.23, its newest release, fails to import with pandas 3 (README, "Continual retraining").
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from pipeline.config import Check, DriftConfig
from pipeline.data.split import LABEL, TEXT

LENGTH_BINS = 10      # quantile bins of the reference's text lengths
CLASSIFIER_FOLDS = 3


@dataclass(frozen=True)
class DriftCheck:
    check: str            # its key under continual.drift
    severity: str
    passed: bool
    score: float
    threshold: str
    detail: str

    def __str__(self) -> str:
        return f"{'passed' if self.passed else self.severity}: {self.check} {self.score:.4f}, {self.threshold}: {self.detail}"


@dataclass(frozen=True)
class DriftReport:
    checks: list[DriftCheck]
    path: Path

    @property
    def errors(self) -> list[DriftCheck]:
        return [c for c in self.checks if not c.passed and c.severity == "error"]

    @property
    def warnings(self) -> list[DriftCheck]:
        return [c for c in self.checks if not c.passed and c.severity == "warning"]

    @property
    def scores(self) -> dict[str, float]:
        return {f"drift_{c.check}": c.score for c in self.checks}


def _shares(values: pd.Series, categories: list) -> np.ndarray:
    return values.value_counts(normalize=True).reindex(categories, fill_value=0.0).to_numpy()


def label_balance(reference: pd.DataFrame, batch: pd.DataFrame, labels: list[int]) -> float:
    return float(jensenshannon(_shares(reference[LABEL], labels), _shares(batch[LABEL], labels), base=2))


def text_length(reference: pd.DataFrame, batch: pd.DataFrame) -> float:
    ref_lengths, batch_lengths = reference[TEXT].str.len(), batch[TEXT].str.len()
    inner = np.unique(np.quantile(ref_lengths, np.linspace(0, 1, LENGTH_BINS + 1))[1:-1])
    edges = np.concatenate([[-np.inf], inner, [np.inf]])
    ref_hist, _ = np.histogram(ref_lengths, edges)
    batch_hist, _ = np.histogram(batch_lengths, edges)
    return float(jensenshannon(ref_hist / ref_hist.sum(), batch_hist / batch_hist.sum(), base=2))


def vocabulary_overlap(reference: pd.DataFrame, batch: pd.DataFrame) -> float:
    """Share of the batch's word occurrences whose word occurs in the reference."""
    known = set(CountVectorizer().fit(reference[TEXT]).vocabulary_)
    counts = CountVectorizer().fit(batch[TEXT])
    totals = np.asarray(counts.transform(batch[TEXT]).sum(axis=0)).ravel()
    words = counts.get_feature_names_out()
    return float(totals[[w in known for w in words]].sum() / totals.sum())


def text_content(reference: pd.DataFrame, batch: pd.DataFrame, seed: int) -> float:
    """ROC AUC of a classifier telling batch texts from reference texts, cross-validated: 0.5 is no drift."""
    rows = min(len(reference), len(batch))
    texts = pd.concat([reference[TEXT].sample(rows, random_state=seed), batch[TEXT].sample(rows, random_state=seed)])
    is_batch = np.r_[np.zeros(rows), np.ones(rows)]
    features = TfidfVectorizer(sublinear_tf=True).fit_transform(texts)
    scores = cross_val_predict(LogisticRegression(max_iter=1000), features, is_batch, cv=CLASSIFIER_FOLDS,
                               method="predict_proba")[:, 1]
    return float(roc_auc_score(is_batch, scores))


def _at_most(name: str, check: Check, score: float, limit: float, detail: str) -> DriftCheck:
    return DriftCheck(name, check.severity, score <= limit, score, f"max {limit}", detail)


def compare(settings: DriftConfig, reference: pd.DataFrame, batch: pd.DataFrame, labels: list[int], seed: int,
            report_dir: Path) -> DriftReport:
    """Every drift check of continual.drift; drift.json in report_dir."""
    ref_shares = dict(zip(labels, _shares(reference[LABEL], labels).round(3).tolist()))
    batch_shares = dict(zip(labels, _shares(batch[LABEL], labels).round(3).tolist()))
    overlap = vocabulary_overlap(reference, batch)
    checks = [
        _at_most("label_balance", settings.label_balance, label_balance(reference, batch, labels),
                 settings.label_balance.max_score, f"label shares {batch_shares} against {ref_shares}"),
        _at_most("text_length", settings.text_length, text_length(reference, batch), settings.text_length.max_score,
                 f"median {batch[TEXT].str.len().median():.0f} characters against "
                 f"{reference[TEXT].str.len().median():.0f}"),
        DriftCheck("vocabulary_overlap", settings.vocabulary_overlap.severity,
                   overlap >= settings.vocabulary_overlap.min_share, overlap,
                   f"min {settings.vocabulary_overlap.min_share}", "share of the batch's words seen in the reference"),
        _at_most("text_content", settings.text_content, text_content(reference, batch, seed),
                 settings.text_content.max_score, "ROC AUC of a classifier telling batch from reference texts"),
    ]
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / "drift.json"
    path.write_text(json.dumps({"reference_rows": len(reference), "batch_rows": len(batch),
                                "checks": [asdict(c) for c in checks]}, indent=2))
    return DriftReport(checks, path)
