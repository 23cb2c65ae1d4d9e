"""The audit's checks as Great Expectations expectations: one Spec per check in params.yaml (`audit.checks`,
`audit.bias`), with its threshold in words and how its result is observed and described for the report.

Specs are built for the three tables pipeline.audit.checks makes of a file (its rows, its classes, its identity
slices), which runs them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import great_expectations as gx
import pandas as pd
from great_expectations.expectations import Expectation
from great_expectations.expectations.row_conditions import Column

from pipeline.config import Check, Config
from pipeline.data.readers import RESPONSE

# Columns that pipeline.audit.checks derives in a file's row table for the expectations to read.
TOKENS, LABELS_PER_TEXT, IN_TRAIN, IN_POOL = "tokens", "labels_per_text", "in_train", "in_pool"
# An instruction's prompt as text: its conversation's turns but the system's (boilerplate shared by every row, which
# would hide a blank or a leaked prompt), one per line.
PROMPT = "prompt"
INTEGER = r"^-?\d+$"

Describe = Callable[[dict[str, Any]], str]


@dataclass(frozen=True)
class Spec:
    """One check: its name and settings in params.yaml, the expectation that runs it, how to report what it saw."""
    name: str
    check: Check
    column: str                                  # the column a reviewer should look at
    expectation: Expectation
    threshold: str
    observe: Callable[[dict[str, Any]], Any]     # GX result -> the observed value
    describe: Describe                           # GX result -> what was found, in words


def _clip(value: Any, width: int = 60) -> str:
    text = repr(value) if isinstance(value, str) else str(value)   # quotes show a text's spaces
    return text if len(text) <= width else text[: width - 4] + "...'"


def _count(result: dict[str, Any]) -> int:
    return int(result["unexpected_count"])


def _share(result: dict[str, Any]) -> float:
    # GX gives no percentage when the column holds no non-null value to check (the null check reports those)
    return round((result["unexpected_percent"] or 0.0) / 100, 6)


def _found(problem: str, show: Callable[[int], str]) -> Describe:
    """Describes a row-level result: how many rows, which (data rows from 1, header not counted), what they hold."""
    def describe(result: dict[str, Any]) -> str:
        if not _count(result):
            return f"no rows {problem}"
        examples = ", ".join(f"row {i + 1}: {show(i)}" for i in result["partial_unexpected_index_list"])
        return f"{_count(result)} row(s) ({_share(result) * 100:.3g}%) {problem}; e.g. {examples}"
    return describe


def _mostly(max_share: float) -> float:
    """GX's `mostly` (the share of rows that must pass) for a check that allows max_share of rows to fail."""
    return 1.0 - max_share


def column_specs(config: Config, table: pd.DataFrame, found_columns: list[str]) -> list[Spec]:
    def describe(column: str, key: str) -> Describe:
        return lambda _: "present" if column in table else (
            f"column {column!r} is missing; the file has {', '.join(map(repr, found_columns))}. "
            f"Fix data.{key} in params.yaml or the file's header.")
    return [Spec("columns", config.audit.checks.columns, column, gx.expectations.ExpectColumnToExist(column=column),
                 "present", observe=lambda _, column=column: "present" if column in table else "missing",
                 describe=describe(column, key))
            for column, key in ((config.data.text_column, "text_column"), (config.data.label_column, "label_column"))]


def _value(table: pd.DataFrame, column: str) -> Callable[[int], str]:
    return lambda i: _clip(table[column].iloc[i])


def text_specs(config: Config, table: pd.DataFrame, text: str) -> list[Spec]:
    """The checks of a text column that a table and instructions share: its length in characters and, as trained,
    in tokens; exact duplicates."""
    checks, E, max_length = config.audit.checks, gx.expectations, config.model.max_length
    chars, truncated, duplicates, value = checks.text_chars, checks.truncated, checks.duplicates, _value(table, text)

    def too_long(r: dict[str, Any]) -> str:
        found = _found(f"have more than {max_length} tokens and would be truncated", value)(r)
        return f"{found}; the longest has {table[TOKENS].max()} tokens"

    return [
        Spec("text_chars", chars, text,
             E.ExpectColumnValueLengthsToBeBetween(column=text, min_value=chars.min, max_value=chars.max),
             f"{chars.min}-{chars.max} characters", observe=_count,
             describe=_found(f"are shorter than {chars.min} or longer than {chars.max} characters", value)),
        Spec("truncated", truncated, text,
             E.ExpectColumnValuesToBeBetween(column=TOKENS, max_value=max_length, mostly=_mostly(truncated.max_share)),
             f"<= {truncated.max_share:g} of rows over {max_length} tokens", observe=_share, describe=too_long),
        Spec("duplicates", duplicates, text,
             E.ExpectColumnValuesToBeUnique(column=text, mostly=_mostly(duplicates.max_share)),
             f"<= {duplicates.max_share:g} of rows", observe=_share,
             describe=_found("share their exact text with another row", value)),
    ]


def leakage_specs(config: Config, table: pd.DataFrame, text: str) -> list[Spec]:
    """Leakage, when the table has IN_TRAIN (a file audited beside train); pool leakage, when it has IN_POOL (a
    continual batch audited against the pool's splits)."""
    checks = config.audit.checks
    found = {"leakage": (IN_TRAIN, checks.leakage, "the training file"),
             "pool_leakage": (IN_POOL, checks.pool_leakage, "an earlier split of the pool")}
    return [Spec(name, check, text,
                 gx.expectations.ExpectColumnValuesToBeInSet(column=column, value_set=[False],
                                                             mostly=_mostly(check.max_share)),
                 f"<= {check.max_share:g} of rows", observe=_share,
                 describe=_found(f"also appear in {where} (ignoring case and spacing)", _value(table, text)))
            for name, (column, check, where) in found.items() if column in table]


def not_blank_spec(config: Config, table: pd.DataFrame, column: str) -> Spec:
    return Spec("text_not_blank", config.audit.checks.text_not_blank, column,
                gx.expectations.ExpectColumnValuesToMatchRegex(column=column, regex=r"\S"), "0 rows", observe=_count,
                describe=_found("are blank (whitespace only)", _value(table, column)))


def instruction_specs(config: Config, table: pd.DataFrame) -> list[Spec]:
    """Blank prompts and responses; the prompts' length, duplicates and leakage."""
    return [not_blank_spec(config, table, PROMPT), not_blank_spec(config, table, RESPONSE),
            *text_specs(config, table, PROMPT), *leakage_specs(config, table, PROMPT)]


def content_specs(config: Config, table: pd.DataFrame) -> list[Spec]:
    """Checks of the texts and labels, and their leakage."""
    data, checks, E = config.data, config.audit.checks, gx.expectations
    text, label = data.text_column, data.label_column
    label_set = [str(value) for value in data.label_values]
    conflicting = checks.conflicting_labels

    def text_and_label(i: int) -> str:
        return f"{_clip(table[text].iloc[i])} labelled {table[label].iloc[i]}"

    def text_type(r: dict[str, Any]) -> str:
        if "observed_value" in r:      # a column of one type (text, or e.g. all numbers) is checked as a whole
            return f"column {text!r} has type {r['observed_value']}"
        return _found("are not text", _value(table, text))(r)

    return [
        Spec("text_type", checks.text_type, text, E.ExpectColumnValuesToBeOfType(column=text, type_="str"), "text",
             observe=lambda r: r.get("observed_value", r.get("unexpected_count")), describe=text_type),
        *(Spec("not_null", checks.not_null, column, E.ExpectColumnValuesToNotBeNull(column=column), "0 rows",
               observe=_count, describe=_found("are empty", _value(table, column))) for column in (text, label)),
        not_blank_spec(config, table, text),
        Spec("label_type", checks.label_type, label, E.ExpectColumnValuesToMatchRegex(column=label, regex=INTEGER),
             "0 rows", observe=_count, describe=_found("are not integers", _value(table, label))),
        Spec("label_in_set", checks.label_in_set, label,
             E.ExpectColumnValuesToBeInSet(column=label, value_set=label_set), "0 rows", observe=_count,
             describe=_found(f"are outside the label set {label_set}", _value(table, label))),
        *text_specs(config, table, text),
        Spec("conflicting_labels", conflicting, text,
             E.ExpectColumnValuesToBeBetween(column=LABELS_PER_TEXT, max_value=1,
                                             mostly=_mostly(conflicting.max_share)),
             f"<= {conflicting.max_share:g} of rows", observe=_share,
             describe=_found("share their text (ignoring case and spacing) with a row of another label",
                             text_and_label)),
        *leakage_specs(config, table, text),
    ]


def class_specs(config: Config, classes: pd.DataFrame) -> list[Spec]:
    """The smallest class's share and rows (a label that never occurs has 0)."""
    checks, E, label = config.audit.checks, gx.expectations, config.data.label_column
    listing = ", ".join(f"{c.label} ({c.name}) {c.rows} rows, {c.share:.1%}" for c in classes.itertuples())

    def smallest(column: str) -> Describe:
        value, name = classes.loc[classes[column].idxmin(), ["label", "name"]]
        return lambda _: f"smallest class: {value} ({name}); all: {listing}"
    return [
        Spec("class_balance", checks.class_balance, label,
             E.ExpectColumnMinToBeBetween(column="share", min_value=checks.class_balance.min_share),
             f">= {checks.class_balance.min_share:g} of rows in the smallest class",
             observe=lambda r: round(float(r["observed_value"]), 6), describe=smallest("share")),
        Spec("rows_per_class", checks.rows_per_class, label,
             E.ExpectColumnMinToBeBetween(column="rows", min_value=checks.rows_per_class.min_rows),
             f">= {checks.rows_per_class.min_rows} rows per class", observe=lambda r: int(r["observed_value"]),
             describe=smallest("rows")),
    ]


def slice_specs(config: Config, slice_rows: pd.DataFrame) -> list[Spec]:
    """Under-represented identity slices, and positive-rate gaps in the slices large enough to measure one."""
    settings, E, text = config.audit.bias, gx.expectations, config.data.text_column
    measured = slice_rows[slice_rows["rows"] >= settings.min_slice_rows]
    largest = measured["gap"].abs().idxmax() if measured["gap"].notna().any() else None

    def slice_name(i: int) -> str:
        return f"{slice_rows.loc[i, 'category']}: {slice_rows.loc[i, 'group']}"

    def named(i: int) -> str:
        return f"{slice_name(i)} ({slice_rows.loc[i, 'rows']} rows)"

    def with_rates(i: int) -> str:
        return (f"{named(i)}: positive rate {slice_rows.loc[i, 'positive_rate']:.3f} vs "
                f"{slice_rows.loc[i, 'rest_positive_rate']:.3f} in the rest, gap {slice_rows.loc[i, 'gap']:+.3f}")

    def under(r: dict[str, Any]) -> str:
        indices = r["partial_unexpected_index_list"]
        absent = ", ".join(slice_name(i) for i in indices if not slice_rows.loc[i, "rows"])
        few = ", ".join(named(i) for i in indices if slice_rows.loc[i, "rows"])
        return (f"{_count(r)} of {len(slice_rows)} slices under {settings.representation.min_share:.2%} of rows"
                + (f"; not mentioned at all: {absent}" if absent else "")
                + (f"; mentioned rarely: {few}" if few else ""))

    def gaps(r: dict[str, Any]) -> str:
        if largest is None:
            return f"no slice has {settings.min_slice_rows} rows to compare"
        over = "; ".join(with_rates(i) for i in r["partial_unexpected_index_list"] if i != largest)
        return f"largest: {with_rates(largest)}" + (f"; also over the limit: {over}" if over else "")
    return [
        Spec("representation", settings.representation, text,
             E.ExpectColumnValuesToBeBetween(column="share", min_value=settings.representation.min_share),
             f">= {settings.representation.min_share:g} of rows per slice", observe=_count, describe=under),
        Spec("positive_rate_gap", settings.positive_rate_gap, text,
             E.ExpectColumnValuesToBeBetween(column="gap", min_value=-settings.positive_rate_gap.max_gap,
                                             max_value=settings.positive_rate_gap.max_gap,
                                             row_condition=Column("rows") >= settings.min_slice_rows),
             f"|gap| <= {settings.positive_rate_gap.max_gap:.2f} in slices of >= {settings.min_slice_rows} rows",
             observe=lambda r: None if largest is None else round(abs(float(slice_rows.loc[largest, "gap"])), 6),
             describe=gaps),
    ]
