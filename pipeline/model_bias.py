"""Bias in the model: does its positive-class probability move when only a person's name or pronoun does?

Counterfactual test after Kiritchenko & Mohammad (2018), Equity Evaluation Corpus: for an attribute
(gender, race), sentences are paired by everything that is held fixed (the template, the emotion
word, and the other attributes); each side's mean probability is compared per pair, and a paired
t-test says whether the difference is more than noise.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.stats import ttest_rel

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
