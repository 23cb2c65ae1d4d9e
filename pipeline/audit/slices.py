"""Bias in the data: identity slices found with a lexicon, and each slice's share and positive-label rate.

A slice is the set of rows whose text mentions a group (e.g. religion: muslim) by one of the
lexicon's terms. Slices overlap: a row can mention several groups.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import yaml

from pipeline.errors import ConfigError

SHIPPED_LEXICON = Path(__file__).parent / "resources" / "identity_lexicon.yaml"

Lexicon = dict[tuple[str, str], list[str]]   # (category, group) -> terms


def load_lexicon(path: Path | None) -> Lexicon:
    """The shipped lexicon, or the file at path (same shape: category -> group -> list of terms)."""
    path = path or SHIPPED_LEXICON
    fix = (f"Set audit.bias.lexicon in params.yaml to a YAML file of category -> group -> [terms], "
           f"or to null for the shipped {SHIPPED_LEXICON.name}.")
    if not path.is_file():
        raise ConfigError(f"Identity lexicon {path}: no such file. {fix}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Identity lexicon {path} is not valid UTF-8 YAML: {exc}. {fix}") from exc
    if not isinstance(raw, dict) or not raw or not all(isinstance(groups, dict) and groups for groups in raw.values()):
        raise ConfigError(f"Identity lexicon {path} is not a mapping of category -> group -> [terms]. {fix}")
    lexicon: Lexicon = {}
    for category, groups in raw.items():
        for group, terms in groups.items():
            if not (isinstance(terms, list) and terms and all(isinstance(t, str) and t.strip() for t in terms)):
                raise ConfigError(f"Identity lexicon {path}: {category} -> {group} must be a non-empty list of "
                                  f"terms. {fix}")
            lexicon[(str(category), str(group))] = terms
    return lexicon


def _pattern(terms: list[str]) -> str:
    # Word edges are spelled out instead of \b: pandas runs \b on non-ASCII text with Python's re,
    # about ten times slower than pyarrow's RE2. Terms of several words match across runs of spaces.
    alternatives = "|".join(" +".join(re.escape(word) for word in term.split()) for term in terms)
    return rf"(?:^|[^a-z0-9_])(?:{alternatives})(?:[^a-z0-9_]|$)"


def find_mentions(texts: pd.Series, lexicon: Lexicon) -> pd.DataFrame:
    """One boolean column per slice: does the text mention one of the group's terms, as a whole word, in any case."""
    return pd.DataFrame({key: texts.str.contains(_pattern(terms), case=False, regex=True, na=False)
                         for key, terms in lexicon.items()}, index=texts.index)


def slice_table(mentions: pd.DataFrame, positive: pd.Series) -> pd.DataFrame:
    """Per slice: its rows and share of all rows, the positive-label rate in it and in the rest, and their gap."""
    records = []
    for (category, group), in_slice in mentions.items():
        # Size and positive rate of the slice (True) and of the rest (False); a side without rows is NaN.
        sides = positive.groupby(in_slice).agg(["size", "mean"]).reindex([True, False])
        rows = int(sides["size"].fillna(0)[True])
        records.append({"category": category, "group": group, "rows": rows, "share": rows / len(positive),
                        "positive_rate": sides.loc[True, "mean"], "rest_positive_rate": sides.loc[False, "mean"]})
    table = pd.DataFrame.from_records(records)
    table["gap"] = table["positive_rate"] - table["rest_positive_rate"]
    return table
