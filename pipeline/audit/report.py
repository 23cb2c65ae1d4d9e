"""The data audit's results and how they are written: JSON for machines, HTML for a reviewer, text for a terminal."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from pipeline.config import Severity
from pipeline.terminal import table

TEMPLATE = "audit_report.html.j2"
PASSED = "passed"


@dataclass(frozen=True)
class CheckResult:
    source: str
    check: str           # its key under audit.checks or audit.bias in params.yaml
    column: str
    expectation: str     # the Great Expectations expectation that ran it
    severity: Severity
    passed: bool
    observed: Any
    threshold: str
    detail: str

    @property
    def status(self) -> str:
        return PASSED if self.passed else self.severity

    @property
    def headline(self) -> str:
        return (f"{self.status}: {self.source}: {self.check} ({self.column}) {_show(self.observed)}, "
                f"threshold {self.threshold}")

    def __str__(self) -> str:
        return f"{self.status}: {self.source}: {self.check} ({self.column}): {self.detail}"


@dataclass(frozen=True)
class FileAudit:
    source: str
    rows: int
    checks: list[CheckResult]
    classes: pd.DataFrame | None   # label, name, rows, share; None when the label column is missing
    slices: pd.DataFrame | None    # category, group, rows, share, positive_rate, rest_positive_rate, gap


@dataclass(frozen=True)
class AuditReport:
    files: list[FileAudit]
    json_path: Path
    html_path: Path

    @property
    def checks(self) -> list[CheckResult]:
        return [check for file in self.files for check in file.checks]

    @property
    def failures(self) -> list[CheckResult]:
        """Failed checks, errors first."""
        return sorted((c for c in self.checks if not c.passed), key=lambda c: c.severity != "error")

    @property
    def errors(self) -> list[CheckResult]:
        return [c for c in self.failures if c.severity == "error"]

    @property
    def passed(self) -> bool:
        return not self.errors

    @property
    def summary(self) -> str:
        warnings = len(self.failures) - len(self.errors)
        verdict = "passed" if self.passed else f"failed with {len(self.errors)} error(s)"
        return f"{verdict}, {warnings} warning(s), {len(self.checks)} checks on {len(self.files)} file(s)"


def _records(frame: pd.DataFrame | None) -> list[dict[str, Any]] | None:
    # Through pandas' JSON writer: NaN (a rate of an empty slice) becomes null, numpy numbers plain numbers.
    return None if frame is None else json.loads(frame.to_json(orient="records"))


def as_json(report: AuditReport) -> dict[str, Any]:
    return {"passed": report.passed, "summary": report.summary,
            "files": [{"source": f.source, "rows": f.rows,
                       "checks": [{**asdict(c), "status": c.status} for c in f.checks],
                       "classes": _records(f.classes), "slices": _records(f.slices)} for f in report.files]}


def as_text(report: AuditReport) -> str:
    """Every check as one line of a table, then the failed checks in words and where the reports are."""
    header = ("status", "file", "check", "column", "observed", "threshold")
    rows = [header] + [(c.status, Path(c.source).name, c.check, c.column, _show(c.observed), c.threshold)
                       for c in report.checks]
    lines = [table(rows), "", f"audit {report.summary}", *(f"  {failure}" for failure in report.failures),
              f"reports: {report.html_path}", f"         {report.json_path}"]
    return "\n".join(lines)


def _show(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _rate(value: float, sign: str = "") -> str:
    """A rate to three decimals ('+' for a signed gap); '-' for a slice without rows."""
    return "-" if math.isnan(value) else f"{value:{sign}.3f}"


def write_report(files: list[FileAudit], report_dir: Path, name: str) -> AuditReport:
    """Write `<name>.json` and `<name>.html` in report_dir; the HTML shows every check, class and slice."""
    report = AuditReport(files, report_dir / f"{name}.json", report_dir / f"{name}.html")
    report_dir.mkdir(parents=True, exist_ok=True)
    report.json_path.write_text(json.dumps(as_json(report), indent=2, default=str), encoding="utf-8")
    environment = jinja2.Environment(loader=jinja2.PackageLoader("pipeline.audit", "resources"), autoescape=True,
                                     undefined=jinja2.StrictUndefined)
    environment.filters["show"] = _show
    environment.filters["rate"] = _rate
    html = environment.get_template(TEMPLATE).render(report=report, name=name)
    report.html_path.write_text(html, encoding="utf-8")
    return report
