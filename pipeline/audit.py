"""Data audit with Great Expectations: the one module that talks to it. A failed error-level check stops the run."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import great_expectations as gx
import pandas as pd

from pipeline.config import Config
from pipeline.data import read_table
from pipeline.errors import AuditFailed


@dataclass(frozen=True)
class CheckResult:
    source: str
    check: str
    passed: bool
    observed: Any
    detail: str


@dataclass(frozen=True)
class AuditReport:
    passed: bool
    checks: list[CheckResult]
    path: Path

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    @property
    def summary(self) -> str:
        if self.passed:
            return f"{len(self.checks)} checks passed"
        return "; ".join(f"{c.source}: {c.detail}" for c in self.failures)


def build_suite(config: Config) -> gx.ExpectationSuite:
    data = config.data
    suite = gx.ExpectationSuite(name="raw_labelled_text")
    for column in (data.text_column, data.label_column):
        suite.add_expectation(gx.expectations.ExpectColumnToExist(column=column))
    suite.add_expectation(gx.expectations.ExpectColumnValuesToNotBeNull(column=data.text_column))
    suite.add_expectation(gx.expectations.ExpectColumnValuesToMatchRegex(column=data.text_column, regex=r"\S"))
    suite.add_expectation(gx.expectations.ExpectColumnValuesToBeInSet(
        column=data.label_column, value_set=[str(v) for v in data.label_values]))
    return suite


def _describe(expectation: str, kwargs: dict[str, Any], result: dict[str, Any], columns: list[str]) -> str:
    column = kwargs.get("column")
    if expectation == "expect_column_to_exist":
        return f"column {column!r} is missing (found: {', '.join(columns)})"
    count = result.get("unexpected_count", "?")
    rows = [i + 1 for i in result.get("unexpected_index_list", [])[:5]]
    values = result.get("partial_unexpected_list", [])[:5]
    if expectation == "expect_column_values_to_be_in_set":
        return (f"{count} value(s) of column {column!r} outside the label set {kwargs['value_set']}: "
                f"{values} at data rows {rows}")
    return f"{expectation} failed on column {column!r}: {count} row(s), first at data rows {rows}"


def validate_frame(config: Config, frame: pd.DataFrame, source: str) -> list[CheckResult]:
    """Run the suite on one table; labels are compared as text, so 1, '1' and ' 1' all match label 1."""
    frame = frame.copy()
    if config.data.label_column in frame.columns:
        frame[config.data.label_column] = frame[config.data.label_column].astype(str).str.strip()
    context = gx.get_context(mode="ephemeral")
    batch = (context.data_sources.add_pandas("tunegate").add_dataframe_asset(source)
             .add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": frame}))
    validation = batch.validate(build_suite(config), result_format="COMPLETE")
    checks = []
    for result in validation.results:
        config_ = result.expectation_config
        detail = "ok" if result.success else _describe(config_.type, config_.kwargs, result.result, list(frame.columns))
        observed = result.result.get("unexpected_count", result.result.get("observed_value"))
        checks.append(CheckResult(source, config_.type, bool(result.success), observed, detail))
    return checks


def audit_files(config: Config, sources: list[str], report_path: Path) -> AuditReport:
    checks: list[CheckResult] = []
    for source in sources:
        checks += validate_frame(config, read_table(config.path(source)), source)
    report = AuditReport(passed=all(c.passed for c in checks), checks=checks, path=report_path)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps({"passed": report.passed, "checks": [asdict(c) for c in checks]},
                                      indent=2, default=str), encoding="utf-8")
    return report


def audit_raw_data(config: Config) -> AuditReport:
    """Audit every raw file in params.yaml; raise AuditFailed naming each failed check."""
    data = config.data
    sources = [path for path in (data.train, data.validation, data.test) if path is not None]
    report = audit_files(config, sources, config.path(config.audit.report_dir) / "audit.json")
    if not report.passed:
        raise AuditFailed(f"Data audit failed, nothing was trained or registered: {report.summary}. "
                          f"Full report: {report.path}")
    return report
