"""Bias in the model, two ways.

Counterfactual: does the positive-class probability move when only a person's name or pronoun does?
After Kiritchenko & Mohammad (2018), Equity Evaluation Corpus: for an attribute (gender, race),
sentences are paired by everything that is held fixed (the template, the emotion word, and the
other attributes); each side's mean probability is compared per pair, and a paired t-test says
whether the difference is more than noise.

Groups: on the test split's identity slices (the audit's lexicon), fairlearn's MetricFrame gives
accuracy and selection rate per group, and the demographic parity and equalized odds differences.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from fairlearn.metrics import (MetricFrame, demographic_parity_difference, equalized_odds_difference,
                               selection_rate)
from scipy.stats import ttest_rel
from sklearn.metrics import accuracy_score

from pipeline.config import CounterfactualConfig
from pipeline.errors import DataError

PROBABILITY = "positive_probability"


@dataclass(frozen=True)
class AttributeGap:
    attribute: str
    groups: dict[str, float]    # group -> mean positive probability over its sentences
    pairs: int                  # units (fixed template, emotion word, other attributes) with both groups
    gap: float                  # mean |first - second| over the pairs
    mean_difference: float      # mean (first - second): the direction
    p_value: float              # paired t-test; nan when every difference is 0
    significant: bool

    def as_dict(self) -> dict:
        return asdict(self)


def check_columns(frame: pd.DataFrame, counterfactual: CounterfactualConfig, source: str) -> None:
    needed = [counterfactual.text_column, *counterfactual.pair_by,
              *(a.column for a in counterfactual.attributes.values())]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)} named in evaluate.counterfactual; "
                        f"found {', '.join(frame.columns)}.")


def paired_gap(frame: pd.DataFrame, attribute: str, counterfactual: CounterfactualConfig) -> AttributeGap:
    """Gap between the attribute's two groups in a frame of the corpus with a PROBABILITY column."""
    column = counterfactual.attributes[attribute].column
    first, second = counterfactual.attributes[attribute].groups
    held_fixed = counterfactual.pair_by + [a.column for name, a in counterfactual.attributes.items()
                                           if name != attribute]
    rows = frame[frame[column].isin([first, second])]
    # Missing values in a held-fixed column (e.g. no race for a pronoun) form their own unit.
    units = rows.fillna({c: "" for c in held_fixed}).pivot_table(
        index=held_fixed, columns=column, values=PROBABILITY, aggfunc="mean")
    units = units.reindex(columns=[first, second]).dropna()
    if units.empty:
        raise DataError(f"evaluate.counterfactual.attributes.{attribute}: no sentences of both groups {first!r} and "
                        f"{second!r} with equal {', '.join(held_fixed)}; check the groups and pair_by.")
    difference = units[first] - units[second]
    p_value = float(ttest_rel(units[first], units[second]).pvalue) if difference.any() else float("nan")
    means = rows.groupby(column)[PROBABILITY].mean()
    return AttributeGap(attribute=attribute, groups={first: float(means[first]), second: float(means[second])},
                        pairs=len(units), gap=float(difference.abs().mean()), mean_difference=float(difference.mean()),
                        p_value=p_value, significant=bool(p_value < counterfactual.alpha))


def counterfactual_gaps(frame: pd.DataFrame, positive_probability: np.ndarray,
                        counterfactual: CounterfactualConfig) -> list[AttributeGap]:
    scored = frame.assign(**{PROBABILITY: positive_probability})
    return [paired_gap(scored, attribute, counterfactual) for attribute in counterfactual.attributes]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def counterfactual_metrics(name: str, gaps: list[AttributeGap]) -> dict[str, float]:
    """<name>_<attribute>_gap (what the bias gate reads), ..._p_value, ..._<group>_mean."""
    metrics: dict[str, float] = {}
    for gap in gaps:
        prefix = f"{name}_{gap.attribute}"
        metrics[f"{prefix}_gap"] = gap.gap
        metrics[f"{prefix}_p_value"] = gap.p_value
        metrics.update({f"{prefix}_{slug(group)}_mean": mean for group, mean in gap.groups.items()})
    return metrics


@dataclass(frozen=True)
class CategoryGroups:
    category: str
    rows: dict[str, int]                     # group -> test rows that mention it and no other group of the category
    by_group: dict[str, dict[str, float]]    # compared group -> accuracy, selection_rate
    dp_difference: float | None              # None: fewer than two groups with enough rows
    eo_difference: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def single_group(mentions: pd.DataFrame, category: str) -> pd.Series:
    """Each row's group in a category: the one group it mentions; rows mentioning none or several are NaN."""
    columns = [key for key in mentions.columns if key[0] == category]
    in_category = mentions[columns]
    named = in_category.idxmax(axis=1).map(lambda key: key[1])
    return named.where(in_category.sum(axis=1) == 1)


def group_metrics(mentions: pd.DataFrame, true_positive: np.ndarray, predicted_positive: np.ndarray,
                  min_rows: int) -> list[CategoryGroups]:
    """Per lexicon category, among rows that mention exactly one of its groups, groups of min_rows or more
    compared on binary outcomes (is the label / the prediction the positive one)."""
    results = []
    for category in dict.fromkeys(key[0] for key in mentions.columns):
        groups = single_group(mentions, category)
        rows = groups.value_counts()
        compared = groups.isin(rows[rows >= min_rows].index).to_numpy()
        if (rows >= min_rows).sum() < 2:
            results.append(CategoryGroups(category, rows.to_dict(), {}, None, None))
            continue
        y_true, y_pred, features = true_positive[compared], predicted_positive[compared], groups[compared]
        frame = MetricFrame(metrics={"accuracy": accuracy_score, "selection_rate": selection_rate},
                            y_true=y_true, y_pred=y_pred, sensitive_features=features)
        results.append(CategoryGroups(
            category, rows.to_dict(), frame.by_group.to_dict(orient="index"),
            float(demographic_parity_difference(y_true, y_pred, sensitive_features=features)),
            float(equalized_odds_difference(y_true, y_pred, sensitive_features=features))))
    return results


def group_summary_metrics(categories: list[CategoryGroups]) -> dict[str, float]:
    """group_<category>_dp_difference and _eo_difference, and the largest of each over categories."""
    compared = [c for c in categories if c.dp_difference is not None]
    metrics: dict[str, float] = {}
    for c in compared:
        metrics[f"group_{slug(c.category)}_dp_difference"] = c.dp_difference
        metrics[f"group_{slug(c.category)}_eo_difference"] = c.eo_difference
    if compared:
        metrics["group_dp_difference"] = max(c.dp_difference for c in compared)
        metrics["group_eo_difference"] = max(c.eo_difference for c in compared)
    return metrics
