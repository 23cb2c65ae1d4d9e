"""How long the data audit takes on the full SST-2 train file (67,349 rows), with dev and test for leakage.

    python benchmarks/audit_speed.py      # from the project folder

Prints a table of seconds per phase and writes it, with the machine's load and the checks
that failed, to benchmarks/results/audit_speed.json. Target: the audit under 15 s.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

START = time.perf_counter()
PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import pipeline  # noqa: E402,F401  (offline, quiet environment first)
from pipeline.audit import checks, slices  # noqa: E402  (Great Expectations, transformers and torch load here)
from pipeline.config import load_config  # noqa: E402

IMPORTED = time.perf_counter()
RESULT = PROJECT / "benchmarks/results/audit_speed.json"
TARGET_S = 15.0

# Phases: the pipeline functions the audit calls, timed by wrapping them where audit.py looks them up.
PHASES = {"read files": (checks, "read_table"), "load tokenizer": (checks, "load_tokenizer"),
          "count tokens": (checks, "count_tokens"), "normalise texts": (checks, "normalise"),
          "GX validations": (checks, "validate"), "find identity mentions": (slices, "find_mentions"),
          "slice statistics": (slices, "slice_table"), "write JSON + HTML": (checks, "write_report")}
seconds: dict[str, float] = defaultdict(float)


def timed(phase: str, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[phase] += time.perf_counter() - started
    return wrapper


def main() -> int:
    for phase, (module, name) in PHASES.items():
        setattr(module, name, timed(phase, getattr(module, name)))
    config = load_config(PROJECT)
    data = config.data
    load_before = os.getloadavg()
    started = time.perf_counter()
    report = checks.audit_files(config, [data.train, data.validation, data.test], data.train, "audit-speed")
    audit_s = time.perf_counter() - started
    rows = {file.source: file.rows for file in report.files}

    table = [("import libraries (GX, transformers, torch)", IMPORTED - START), *seconds.items(),
             ("other (pandas glue, GX context)", audit_s - sum(seconds.values())),
             ("audit (all phases above but imports)", audit_s), ("process total", time.perf_counter() - START)]
    width = max(len(name) for name, _ in table)
    print(f"audit of {', '.join(f'{source} ({n:,} rows)' for source, n in rows.items())}")
    print(f"{'phase':<{width}}  seconds")
    for name, value in table:
        print(f"{name:<{width}}  {value:7.2f}")
    print(f"load average before/after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; "
          f"target {TARGET_S:.0f} s: audit {'met' if audit_s < TARGET_S else 'MISSED'}, "
          f"process {'met' if table[-1][1] < TARGET_S else 'MISSED'}")
    print(f"audit {report.summary}")
    for failure in report.failures:
        print(f"  {failure.headline}")

    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps({
        "rows": rows, "seconds": {name: round(value, 3) for name, value in table}, "target_s": TARGET_S,
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(), "python": platform.python_version(), "summary": report.summary,
        "failures": [failure.headline for failure in report.failures]}, indent=2) + "\n")
    print(f"wrote {RESULT.relative_to(PROJECT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
